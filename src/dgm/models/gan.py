"""Generative adversarial networks: the game, its losses and stabilisers, and the variants.

Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661. A generator G maps noise
z ~ N(0, I) to data; a critic (discriminator) D scores data. They play

    min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]                   (GAN eq. 1)

with k critic steps per generator step (GAN Algorithm 1). The critic's output here is a raw score
s, with D = sigmoid(s) for the minimax and non-saturating losses. The losses (:func:`critic_loss`,
:func:`generator_loss`):

* ``minimax``: the critic minimises -V, the generator minimises E log(1 - D(G(z))) (eq. 1);
* ``non-saturating``: the generator minimises -E log D(G(z)) instead (GAN sec. 3), whose gradient
  does not vanish while the critic rejects every sample;
* ``wasserstein``: V = E D(x) - E D(G(z)) with a 1-Lipschitz critic (Arjovsky et al. 2017,
  arXiv:1701.07875, eq. 3), kept Lipschitz by weight clipping (WGAN) or the gradient penalty
  lambda E (||grad D(x_hat)||_2 - 1)^2 on random interpolates (Gulrajani et al. 2017,
  arXiv:1704.00028, eq. 3, "WGAN-GP");
* ``least-squares``: the critic minimises 1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2, the generator
  1/2 E (D(G(z)) - 1)^2 (Mao et al. 2017, arXiv:1611.04076, eq. 2 with a=0, b=c=1, "LSGAN");
* ``hinge``: the critic minimises E relu(1 - D(x)) + E relu(1 + D(G(z))), the generator
  -E D(G(z)) (Lim & Ye 2017; Miyato et al. 2018, arXiv:1802.05957), usually with spectral norm.

Any loss can add the zero-centred penalty R1 = gamma/2 E ||grad D(x)||^2 on real data (Mescheder
et al. 2018, arXiv:1801.04406), which makes the game converge locally where the plain one circles.

Options of every variant: PacGAN packing of the critic's input (Lin et al. 2018,
arXiv:1712.04086), spectral normalisation of the critic, two learning rates (TTUR, Heusel et al.
2017, arXiv:1706.08500), and the EMA generator (``--set train.ema=0.999``: the trainer keeps the
average and samples with it). Class-conditional models use a projection critic (Miyato & Koyama
2018, arXiv:1802.05637) or an auxiliary classifier (AC-GAN, Odena et al. 2017, arXiv:1610.09585).

Variants as deltas: :class:`InfoGAN` adds latent codes and a mutual-information term, and
:class:`BiGAN` an encoder and a joint critic; the presets ``wgan``, ``wgan-gp``, ``lsgan``,
``sngan``, ``cgan``, ``acgan``, ``pacgan`` are :class:`GAN` with other default settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, rand, randint, randn, register
from dgm.models.refusals import refuse_partial_labels, refuse_variable_length
from dgm.nn import MLP
from dgm.nn.distributions import normal_log_prob
from dgm.settings import Decay, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, type_hints
from dgm.nn.adversarial import DCGANDiscriminator, DCGANGenerator, MLPFeatures, pack, spectral_normalize

LossKind = Literal["minimax", "non-saturating", "wasserstein", "least-squares", "hinge"]

#: phase names of the two players (the duality-gap monitor trains copies of each)
CRITIC, GENERATOR = "critic", "generator"


# --- the game's losses, on raw critic scores ------------------------------------------------------
def critic_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """What the critic minimises, from its scores of real ``(B,)`` and generated ``(B,)`` data."""
    if kind in ("minimax", "non-saturating"):
        # -E log D(x) - E log(1 - D(G(z))) with D = sigmoid(s): -V of eq. 1; log sigmoid(s) = -softplus(-s)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wasserstein":  # -(E D(x) - E D(G(z)))
        return fake.mean() - real.mean()
    if kind == "least-squares":
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def generator_loss(kind: str, fake: Tensor) -> Tensor:
    """What the generator minimises, from the critic's scores of generated data ``(B,)``."""
    if kind == "minimax":  # E log(1 - D(G(z))) = -E softplus(s)
        return -F.softplus(fake).mean()
    if kind == "non-saturating":  # -E log D(G(z)) = E softplus(-s)
        return F.softplus(-fake).mean()
    if kind in ("wasserstein", "hinge"):
        return -fake.mean()
    if kind == "least-squares":
        return 0.5 * (fake - 1).pow(2).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def score_gradient_norms(scores: Tensor, inputs: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    """||grad_x D(x)||_2, one norm per score, differentiable (for a penalty): ``scores`` are the
    critic's scores of ``inputs``, which require grad. Inputs that come in several parts (BiGAN's
    (x, z)) have their gradients joined into one vector per score."""
    grads = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    # one row per score: with packing, the m examples of a pack share one gradient vector
    return torch.cat([g.reshape(len(scores), -1) for g in grads], dim=1).float().norm(dim=1)


def gradient_penalty(critic: Any, real: tuple[Tensor, ...], fake: tuple[Tensor, ...],
                     generator: torch.Generator | None = None) -> Tensor:
    """E (||grad_{x_hat} D(x_hat)||_2 - 1)^2 with x_hat = e x + (1 - e) x_tilde, e ~ U[0, 1] per
    example (WGAN-GP eq. 3). ``critic(*inputs)`` returns one score per (packed) example;
    multi-part inputs are interpolated part by part."""
    n = len(real[0])
    e = rand((n,), like=torch.empty(0, device=real[0].device), generator=generator)
    mixed = [(e.view(n, *[1] * (r.dim() - 1)) * r + (1 - e.view(n, *[1] * (r.dim() - 1))) * f).detach()
             .requires_grad_(True) for r, f in zip(real, fake)]
    return (score_gradient_norms(critic(*mixed), mixed) - 1).pow(2).mean()


def r1_penalty(real_scores: Tensor, real: tuple[Tensor, ...]) -> Tensor:
    """E ||grad_x D(x)||_2^2 on real data, from the critic's scores of ``real`` (inputs that
    require grad, so the critic's own forward pass serves its loss and the penalty): the
    zero-centred penalty R1 (Mescheder et al. 2018, arXiv:1801.04406, eq. 9, weighted there by
    gamma / 2). It flattens the critic on the data, where a converged critic is flat, and damps the
    oscillation of the game around equilibrium."""
    return score_gradient_norms(real_scores, real).pow(2).mean()


@dataclass
class Draw:
    """The generator's input for a batch: noise (with InfoGAN's codes) and, when conditional, labels."""

    z: Tensor  # (B, latent + code dims)
    y: Tensor | None = None  # (B,) int64 class labels


#: why a GAN refuses token sequences and point sets
PADDING_REASON = ("its generator and critic see fixed-size examples, so they would learn the padding as data "
                  "and the critic could tell fakes by it")


@dataclass
class GANConfig:
    """Settings of :class:`GAN` and its presets (``--set model.KEY=VALUE``)."""

    loss: LossKind = "non-saturating"  # the game (module docstring)
    network: Literal["auto", "mlp", "dcgan"] = "auto"  # auto: DCGAN for images, MLP for vectors
    latent_dim: PositiveInt = 64  # dimension of the noise z ~ N(0, I)
    hidden: tuple[PositiveInt, ...] = (128, 128, 128)  # MLP widths of the generator and the critic
    width: PositiveInt = 64  # DCGAN channels at full resolution (doubled at each downsampling)
    critic_steps: PositiveInt = 1  # k: critic steps per generator step
    gradient_penalty: NonNegativeFloat = 0.0  # lambda of the WGAN-GP penalty (0: off; 10 in the paper)
    r1: NonNegativeFloat = 0.0  # gamma of the zero-centred penalty gamma/2 E||grad D(x)||^2 on real data (0: off)
    weight_clip: PositiveFloat | None = None  # WGAN: clip critic weights to [-c, c] after each step (0.01)
    spectral_norm: bool = False  # spectral normalisation of every critic layer
    pack: PositiveInt = 1  # PacGAN: the critic judges packs of this many samples
    conditional: Literal["none", "projection", "acgan"] = "none"  # class-conditional critic
    class_weight: NonNegativeFloat = 1.0  # AC-GAN: weight of the auxiliary classification loss
    lr_critic: PositiveFloat | None = None  # Adam rate of the critic (TTUR: set apart); None: 2e-4 DCGAN, 1e-3 MLP
    lr_generator: PositiveFloat | None = None  # Adam learning rate of the generator; None: the same default
    betas: tuple[Decay, Decay] = (0.5, 0.999)  # Adam betas of both players (DCGAN sec. 4)
    duality_gap_every: NonNegativeInt = 0  # epochs between duality-gap estimates logged in training (0: never)
    duality_gap_steps: PositiveInt = 200  # optimiser steps of each worst-case copy
    duality_gap_lambda: NonNegativeFloat = 0.1  # proximal duality gap: weight of the critic's proximity term


@register
class GAN(GenerativeModel):
    """A generator and a critic playing one of the adversarial games, with the stabilisers as options.

    Example:
        >>> data = dgm.data.load("ring8")
        >>> gan = dgm.create("gan", data.spec, latent_dim=2)
        >>> gan.loss(data.tensors(64), "critic", Progress()).loss.backward()
    """

    name = "gan"
    Config = GANConfig
    description = "GAN, non-saturating loss (minimax, WGAN, LSGAN, hinge, GP, SN, PacGAN, TTUR as options)"

    def __init__(self, config: GANConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        c = config
        self._check(c, spec)
        network = c.network if c.network != "auto" else ("dcgan" if spec.is_image else "mlp")
        if network == "dcgan" and not spec.is_image:
            raise DgmError(f"network=dcgan needs image data, but {spec.name!r} has shape {spec.shape}: "
                           "use --set model.network=mlp")
        self.network = network
        k = self.num_classes
        if network == "dcgan":  # the class enters through conditional batch norm
            self.label_embedding = None
            self.generator = DCGANGenerator(self.generator_input_dim, spec.shape, width=c.width, num_classes=k)
        else:  # the class embedding is concatenated to z
            self.label_embedding = nn.Embedding(k, c.latent_dim) if k else None
            in_features = self.generator_input_dim + (c.latent_dim if k else 0)
            self.generator = nn.Sequential(MLP(in_features, c.hidden, spec.dim, activation=nn.ReLU),
                                           nn.Unflatten(1, spec.shape))
        self.critic_body = self.make_critic_body()
        self.make_heads(self.critic_body.out_features)
        if c.spectral_norm:
            for part in self.critic_modules():
                spectral_normalize(part)

    @staticmethod
    def _check(c: GANConfig, spec: DataSpec) -> None:
        if c.critic_steps < 1 or c.pack < 1 or c.latent_dim < 1:
            raise DgmError("model.critic_steps, model.pack and model.latent_dim must be >= 1")
        if c.conditional != "none" and not spec.num_classes:
            raise DgmError(f"a conditional GAN needs labelled data, but {spec.name!r} has no labels: "
                           "set model.conditional=none or use a labelled dataset")
        if c.conditional != "none" and c.pack > 1:
            raise DgmError("packing (model.pack > 1) judges several samples at once and cannot be combined "
                           "with a class-conditional critic: set model.pack=1")
        if spec.representation == "levels":
            raise DgmError("a GAN generates continuous values and cannot train on integer levels: use "
                           "--set data.representation=signed (the default) or unit")

    @classmethod
    def default_representation(cls, config: GANConfig, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        # images in [-1, 1] to match the generator's tanh output (DCGAN sec. 4)
        return "continuous" if spec.levels is None else "signed"

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional != "none" else None

    def memory_format(self) -> torch.memory_format:
        # the DCGAN step: 1.11x faster in bf16 and 1.07x in fp32 in channels_last (benchmarks/mfu.py)
        return torch.channels_last if self.network == "dcgan" else torch.contiguous_format

    # --- networks ---------------------------------------------------------------------------------
    @property
    def generator_input_dim(self) -> int:
        """Dimension of ``Draw.z`` (InfoGAN adds its codes)."""
        return self.config.latent_dim

    def data_features(self, pack: int = 1) -> nn.Module:
        """A feature network for packs of ``pack`` examples (DCGAN critic body or MLP), with an
        ``out_features`` attribute: the critic's body, and BiGAN's encoder body."""
        c, spec = self.config, self.spec
        if self.network == "dcgan":
            return DCGANDiscriminator((spec.shape[0] * pack, *spec.shape[1:]), width=c.width)
        return MLPFeatures(spec.dim * pack, c.hidden)

    def make_critic_body(self) -> nn.Module:
        """The critic's feature network for (packed) data; it has an ``out_features`` attribute."""
        return self.data_features(self.config.pack)

    def make_heads(self, features: int) -> None:
        """The heads on the critic's features: the score, and the projection or class head."""
        k, conditional = self.num_classes, self.config.conditional
        # E D(x) - E D(G(z)) does not change when D shifts by a constant: a Wasserstein critic has no bias
        self.critic_head = nn.Linear(features, 1, bias=self.config.loss != "wasserstein")
        self.projection = nn.Embedding(k, features) if conditional == "projection" else None
        self.class_head = nn.Linear(features, k) if conditional == "acgan" else None

    def critic_modules(self) -> list[nn.Module]:
        heads = (self.critic_head, self.projection, self.class_head)
        return [self.critic_body, *(m for m in heads if m is not None)]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.critic_modules() for p in m.parameters()]

    def generator_parameters(self) -> list[nn.Parameter]:
        critic = {id(p) for p in self.critic_parameters()}
        return [p for p in self.parameters() if id(p) not in critic]

    # --- the two players --------------------------------------------------------------------------
    def draw(self, n: int, labels: Tensor | None = None, *, generator: torch.Generator | None = None) -> Draw:
        """Noise for ``n`` samples (and labels: the given ones, or uniform ones if conditional)."""
        like = torch.empty(0, device=self.device)
        z = randn((n, self.config.latent_dim), like=like, generator=generator)
        y = None
        if self.num_classes:
            y = labels if labels is not None else randint(self.num_classes, (n,), like=like, generator=generator)
        return Draw(z, y)

    def generate(self, draw: Draw) -> Tensor:
        """G(z) ``(B, *spec.shape)`` in the range of the data representation: tanh into [-1, 1] for
        ``signed`` images, a sigmoid into [0, 1] for the [0, 1] ones, unbounded for continuous data."""
        if draw.y is None:
            x = self.generator(draw.z)
        elif self.label_embedding is None:
            x = self.generator(draw.z, draw.y)
        else:
            x = self.generator(torch.cat([draw.z, self.label_embedding(draw.y)], dim=1))
        representation = self.spec.representation
        if representation == "continuous":
            return x
        return torch.tanh(x) if representation == "signed" else torch.sigmoid(x)

    def real_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """What the critic sees of a real example (BiGAN: the pair (x, E(x)), ALI's noise from ``generator``)."""
        return (batch.x.float(),)

    def fake_inputs(self, draw: Draw) -> tuple[Tensor, ...]:
        """What the critic sees of a generated example (BiGAN: the pair (G(z), z))."""
        return (self.generate(draw),)

    def critic_features(self, *inputs: Tensor) -> Tensor:
        """Features of packs of examples, ``(B / pack, F)``."""
        (x,) = inputs
        return self.critic_body(pack(x, self.config.pack))

    def critic(self, inputs: tuple[Tensor, ...], y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores ``(B / pack,)`` in float32 and features ``(B / pack, F)``.

        Projection critic (Miyato & Koyama 2018, eq. 3): ``s(x, y) = psi(phi(x)) + embed(y) . phi(x)``.
        """
        h = self.critic_features(*inputs)
        score = self.critic_head(h).squeeze(-1)
        if self.projection is not None and y is not None:
            score = score + (self.projection(y) * h).sum(-1)
        return score.float(), h

    # --- training ---------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        clip = self.clip_critic_weights if c.weight_clip is not None else None
        default = 2e-4 if self.network == "dcgan" else 1e-3  # DCGAN sec. 4; small MLPs on toys train faster
        return [Phase(CRITIC, self.critic_parameters(), steps=c.critic_steps, lr=c.lr_critic or default,
                      betas=c.betas, after_step=clip),
                Phase(GENERATOR, self.generator_parameters(), lr=c.lr_generator or default, betas=c.betas)]

    @torch.no_grad()
    def clip_critic_weights(self) -> None:
        """WGAN (Arjovsky et al. 2017, Algorithm 1 line 7): clip every critic parameter to [-c, c]."""
        for p in self.critic_parameters():
            p.clamp_(-self.config.weight_clip, self.config.weight_clip)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        if self.config.pack > 1 and len(batch.x) % self.config.pack:
            raise DgmError(f"model.pack={self.config.pack} needs a batch size divisible by it, got {len(batch.x)}")
        if self.num_classes:  # the critic (and the class head) read every real example's label
            refuse_partial_labels(self.name, batch, f"with conditional={self.config.conditional}")
        g = progress.generator  # every draw below: z, codes, fake labels, encoder noise, interpolation
        draw = self.draw(len(batch.x), generator=g)
        if phase == CRITIC:
            return self.critic_objective(batch, draw, generator=g)
        if phase == GENERATOR:
            return self.generator_objective(batch, draw, generator=g)
        raise ValueError(f"unknown phase {phase!r}")

    def critic_objective(self, batch: Batch, draw: Draw, *, generator: torch.Generator | None = None) -> Loss:
        c = self.config
        with torch.no_grad():  # the critic's step moves the critic alone
            fake = self.fake_inputs(draw)
            real = self.real_inputs(batch, generator=generator)
        if c.r1 > 0:  # R1 differentiates the real scores with respect to their inputs
            real = tuple(r.detach().requires_grad_(True) for r in real)
        real_score, real_h = self.critic(real, batch.y)
        fake_score, fake_h = self.critic(fake, draw.y)
        loss = critic_loss(c.loss, real_score, fake_score)
        metrics = {"real_score": real_score.mean(), "fake_score": fake_score.mean(), "value": -loss.detach()}
        if c.gradient_penalty > 0:
            penalty = gradient_penalty(lambda *inputs: self.critic(inputs, batch.y)[0], real, fake, generator)
            loss = loss + c.gradient_penalty * penalty
            metrics["gradient_penalty"] = penalty
        if c.r1 > 0:
            penalty = r1_penalty(real_score, real)
            loss = loss + c.r1 / 2 * penalty
            metrics["r1_penalty"] = penalty
        aux, aux_metrics = self.auxiliary_loss(CRITIC, batch, draw, real_h, fake_h, fake)
        return Loss(loss + aux, {**metrics, **aux_metrics})

    def generator_objective(self, batch: Batch, draw: Draw, *, generator: torch.Generator | None = None) -> Loss:
        fake = self.fake_inputs(draw)
        fake_score, fake_h = self.critic(fake, draw.y)
        loss = generator_loss(self.config.loss, fake_score)
        aux, aux_metrics = self.auxiliary_loss(GENERATOR, batch, draw, None, fake_h, fake)
        return Loss(loss + aux, {"fake_score": fake_score.mean(), **aux_metrics})

    def auxiliary_loss(self, phase: str, batch: Batch, draw: Draw, real_h: Tensor | None,
                       fake_h: Tensor, fake: tuple[Tensor, ...]) -> tuple[Tensor | float, dict[str, Tensor]]:
        """Terms added to either player's loss, from the critic's features of real (``real_h``, critic
        phase only) and generated data (``fake_h``) and the generated inputs themselves (``fake``, as
        :meth:`fake_inputs` gave them: with their graph in the generator's phase). AC-GAN (Odena et al. 2017, eqs. 2-3): both players
        maximise the log-likelihood of the right class of generated data, the critic also of real data."""
        if self.class_head is None:
            return 0.0, {}
        fake_ce = F.cross_entropy(self.class_head(fake_h).float(), draw.y)
        if phase == GENERATOR:
            return self.config.class_weight * fake_ce, {"class_loss": fake_ce}
        real_logits = self.class_head(real_h).float()
        real_ce = F.cross_entropy(real_logits, batch.y)
        accuracy = (real_logits.argmax(-1) == batch.y).float().mean()
        return self.config.class_weight * (real_ce + fake_ce), {"class_loss": real_ce, "class_accuracy": accuracy}

    def game_value(self, batch: Batch, draw: Draw) -> Tensor:
        """The value M(G, D) = -(the critic's adversarial loss), which the critic maximises and the
        generator minimises (no penalties): the quantity of the duality gap."""
        real_score, _ = self.critic(self.real_inputs(batch), batch.y)
        fake_score, _ = self.critic(self.fake_inputs(draw), draw.y)
        return -critic_loss(self.config.loss, real_score, fake_score)

    def monitors(self) -> dict[str, dict[str, Any]]:
        c = self.config
        if not c.duality_gap_every:
            return {}
        return {"duality_gap": {"every": c.duality_gap_every, "steps": c.duality_gap_steps, "lam": c.duality_gap_lambda}}

    # --- generation -------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        return self.generate(self.draw(n, self.check_condition(condition, n), generator=generator))

    def check_condition(self, condition: Tensor | None, n: int) -> Tensor | None:
        if condition is None:
            return None
        if not self.num_classes:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (train a conditional "
                           "model with --set model.conditional=projection, or 'dgm train cgan')")
        condition = torch.as_tensor(condition, device=self.device).long().reshape(-1)
        if len(condition) == 1:
            condition = condition.expand(n)
        if len(condition) != n or condition.min() < 0 or condition.max() >= self.num_classes:
            raise DgmError(f"the condition must be {n} class labels in 0..{self.num_classes - 1}")
        return condition


# --- presets: the named variants are a model with other defaults --------------------------------
def preset(name: str, description: str, base: type[GAN] | None = None, **defaults: Any) -> type[GAN]:
    """Register ``name`` as ``base`` (default :class:`GAN`) with other default settings; every
    setting stays settable with ``--set model.KEY=VALUE``."""
    base = base or GAN
    hints = type_hints(base.Config)
    class_name = name.title().replace("-", "")
    config = make_dataclass(f"{class_name}Config", [(k, hints[k], field(default=v)) for k, v in defaults.items()],
                            bases=(base.Config,))
    config.__module__ = __name__
    config.__doc__ = f"Settings of {name!r}: :class:`{base.Config.__name__}` with " + \
        ", ".join(f"{k}={v!r}" for k, v in defaults.items()) + "."
    model = type(class_name, (base,), {"name": name, "Config": config, "description": description,
                                       "__doc__": f"{description}: {config.__doc__}", "__module__": __name__})
    return register(model)


preset("wgan", "Wasserstein GAN with weight clipping (Arjovsky et al. 2017)",
       loss="wasserstein", weight_clip=0.01, critic_steps=5, lr_critic=5e-5, lr_generator=5e-5)
preset("wgan-gp", "Wasserstein GAN with gradient penalty (Gulrajani et al. 2017)",
       loss="wasserstein", gradient_penalty=10.0, critic_steps=5, lr_critic=1e-4, lr_generator=1e-4, betas=(0.0, 0.9))
preset("lsgan", "least-squares GAN (Mao et al. 2017)", loss="least-squares")
preset("sngan", "hinge loss with a spectrally normalised critic (Miyato et al. 2018)",
       loss="hinge", spectral_norm=True)
preset("pacgan", "GAN whose critic judges packs of 2 samples (PacGAN2, Lin et al. 2018)", pack=2)
preset("cgan", "class-conditional GAN, projection critic (Miyato & Koyama 2018)", conditional="projection")
preset("acgan", "class-conditional GAN, auxiliary classifier (Odena et al. 2017)", conditional="acgan")


# --- InfoGAN --------------------------------------------------------------------------------------
@dataclass
class InfoGANConfig(GANConfig):
    """:class:`GANConfig` plus InfoGAN's latent codes."""

    categorical_codes: NonNegativeInt = 10  # categories of the one categorical code c_1 (0: none)
    continuous_codes: NonNegativeInt = 2  # continuous codes c_j ~ U[-1, 1]
    info_weight: NonNegativeFloat = 1.0  # lambda of the mutual-information term (1 in the paper for discrete codes)


@register
class InfoGAN(GAN):
    """InfoGAN (Chen et al. 2016, arXiv:1606.03657): the generator also takes codes c, and both
    players maximise the variational lower bound of the mutual information I(c; G(z, c)),

        L_I = E_{c, x ~ G(z, c)}[log Q(c | x)] + H(c) <= I(c; G(z, c))                (InfoGAN eq. 4)

    with Q a head on the critic's features: a softmax over the categories of c_1, and a Gaussian
    of learned mean and log-standard-deviation for each continuous code. The report shows latent
    traversals: each row varies one code with the rest fixed.
    """

    name = "infogan"
    Config = InfoGANConfig
    description = "InfoGAN: categorical and continuous latent codes, mutual-information term (Chen et al. 2016)"

    def __init__(self, config: InfoGANConfig, spec: DataSpec) -> None:
        if config.categorical_codes < 0 or config.continuous_codes < 0 or \
                config.categorical_codes + config.continuous_codes == 0:
            raise DgmError("InfoGAN needs at least one code: set model.categorical_codes or model.continuous_codes > 0")
        if config.pack > 1:
            raise DgmError("InfoGAN's Q network reads one sample at a time: set model.pack=1")
        super().__init__(config, spec)

    def make_heads(self, features: int) -> None:  # Q shares the critic's body and trains with it
        super().make_heads(features)
        c = self.config
        self.q_head = nn.Linear(features, c.categorical_codes + 2 * c.continuous_codes)

    @property
    def generator_input_dim(self) -> int:
        return self.config.latent_dim + self.config.categorical_codes + self.config.continuous_codes

    def critic_modules(self) -> list[nn.Module]:
        return [*super().critic_modules(), self.q_head]

    def draw(self, n: int, labels: Tensor | None = None, *, generator: torch.Generator | None = None,
             category: Tensor | None = None, continuous: Tensor | None = None) -> Draw:
        c = self.config
        base = super().draw(n, labels, generator=generator)
        if category is None:
            category = torch.randint(max(c.categorical_codes, 1), (n,), generator=generator, device=self.device)
        if continuous is None:
            continuous = 2 * torch.rand(n, c.continuous_codes, generator=generator, device=self.device) - 1
        one_hot = F.one_hot(category, c.categorical_codes).float() if c.categorical_codes else base.z[:, :0]
        return Draw(torch.cat([base.z, one_hot, continuous], dim=1), base.y)

    def codes(self, draw: Draw) -> tuple[Tensor, Tensor]:
        """The categorical code (as indices ``(B,)``) and the continuous codes ``(B, J)`` of a draw."""
        c = self.config
        cat = draw.z[:, c.latent_dim:c.latent_dim + c.categorical_codes]
        category = cat.argmax(-1) if c.categorical_codes else torch.zeros(len(cat), dtype=torch.long, device=cat.device)
        return category, draw.z[:, c.latent_dim + c.categorical_codes:]

    def information_loss(self, fake_h: Tensor, draw: Draw) -> tuple[Tensor, Tensor]:
        """-E log Q(c | G(z, c)) in nats, and the lower bound L_I = H(c) - that."""
        c = self.config
        out = self.q_head(fake_h).float()
        category, continuous = self.codes(draw)
        nll = torch.zeros((), device=out.device)
        entropy = 0.0
        if c.categorical_codes:
            nll = nll + F.cross_entropy(out[:, :c.categorical_codes], category)
            entropy += math.log(c.categorical_codes)
        if c.continuous_codes:
            mean, log_std = out[:, c.categorical_codes:].chunk(2, dim=-1)
            log_std = log_std.clamp(-5, 2)
            log_q = normal_log_prob(continuous, mean, 2 * log_std)
            nll = nll - log_q.sum(-1).mean()
            entropy += c.continuous_codes * math.log(2.0)  # U[-1, 1] has differential entropy log 2
        return nll, entropy - nll.detach()

    def auxiliary_loss(self, phase: str, batch: Batch, draw: Draw, real_h: Tensor | None,
                       fake_h: Tensor, fake: tuple[Tensor, ...]) -> tuple[Tensor | float, dict[str, Tensor]]:
        aux, metrics = super().auxiliary_loss(phase, batch, draw, real_h, fake_h, fake)
        nll, bound = self.information_loss(fake_h, draw)
        return aux + self.config.info_weight * nll, {**metrics, "mi_lower_bound": bound}

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        return [(f"Latent traversal: {title}", images, columns,
                 f"{len(images) // columns} rows of {columns}: each row keeps the noise z and the other codes "
                 f"fixed and varies {title.split(' (')[0]} along the columns")
                for title, images, columns in self.traversals(generator=generator)]

    def traversals(self, n_rows: int = 8, steps: int = 10, *, generator: torch.Generator | None = None
                   ) -> list[tuple[str, Tensor, int]]:
        """Latent traversals for the report: per code a grid whose rows share the noise z and whose
        columns vary that code alone (all categories; continuous codes from -2 to 2, beyond the
        training range [-1, 1] as in InfoGAN Fig. 2). Returns ``(title, images, columns)`` each."""
        c = self.config
        base = self.draw(n_rows, generator=generator)
        noise = base.z[:, :c.latent_dim]  # (n_rows, latent_dim), shared along each row
        category, continuous = self.codes(base)
        grids = []

        def row_images(columns: int, category: Tensor, continuous: Tensor) -> Tensor:
            draw = self.draw(n_rows * columns, category=category, continuous=continuous)
            draw.z[:, :c.latent_dim] = noise.repeat_interleave(columns, 0)
            return self.generate(draw)

        if c.categorical_codes:
            k = c.categorical_codes
            varied = torch.arange(k, device=self.device).repeat(n_rows)
            grids.append(("categorical code c1 (columns: its categories)",
                          row_images(k, varied, continuous.repeat_interleave(k, 0)), k))
        for j in range(c.continuous_codes):
            varied = continuous.repeat_interleave(steps, 0).clone()
            varied[:, j] = torch.linspace(-2, 2, steps, device=self.device).repeat(n_rows)
            grids.append((f"continuous code c{j + 2} from -2 to 2 (columns)",
                          row_images(steps, category.repeat_interleave(steps, 0), varied), steps))
        return grids


# --- BiGAN / ALI ----------------------------------------------------------------------------------
@dataclass
class BiGANConfig(GANConfig):
    """:class:`GANConfig` plus the encoder of BiGAN / ALI."""

    encoder: Literal["deterministic", "gaussian"] = "deterministic"  # BiGAN's E(x), or ALI's q(z|x)


@register
class BiGAN(GAN):
    """BiGAN (Donahue, Krähenbühl & Darrell 2017, arXiv:1605.09782) and ALI (Dumoulin et al. 2017,
    arXiv:1606.00704): an encoder E learns the inverse of the generator. The critic judges joint
    pairs, real ``(x, E(x))`` against generated ``(G(z), z)``,

        min_{G,E} max_D E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))]              (BiGAN eq. 3)

    and at the optimum E = G^-1. The generator and encoder form one player; for the non-saturating
    game they minimise the critic's loss with the labels swapped (BiGAN sec. 3.4). ``encoder=
    gaussian`` gives ALI's stochastic encoder z = mu(x) + sigma(x) eps. ``encode`` gives E(x) (the
    mean for ALI) for representation probes, ``reconstruct`` gives G(E(x)).
    """

    name = "bigan"
    Config = BiGANConfig
    description = "BiGAN / ALI: generator, encoder and a joint critic of (x, z) pairs (Donahue et al. 2017)"

    def __init__(self, config: BiGANConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        c = config
        out = c.latent_dim * (2 if c.encoder == "gaussian" else 1)
        body = self.data_features()
        self.encoder = nn.Sequential(body, nn.Linear(body.out_features, out))

    def make_critic_body(self) -> nn.Module:
        c = self.config
        return JointCritic(super().make_critic_body(), c.latent_dim * c.pack, c.hidden[-1])

    def critic_features(self, *inputs: Tensor) -> Tensor:
        x, z = inputs
        m = self.config.pack
        return self.critic_body(pack(x, m), pack(z, m))

    def encoder_output(self, x: Tensor, *, sample: bool, generator: torch.Generator | None = None) -> Tensor:
        h = self.encoder(x.float())
        if self.config.encoder == "deterministic":
            return h
        mu, log_std = h.chunk(2, dim=-1)
        return mu + log_std.clamp(-10, 5).exp() * randn(mu.shape, like=mu, generator=generator) if sample else mu

    def real_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        return (batch.x.float(), self.encoder_output(batch.x, sample=True, generator=generator))

    def fake_inputs(self, draw: Draw) -> tuple[Tensor, ...]:
        return (self.generate(draw), draw.z)

    def generator_objective(self, batch: Batch, draw: Draw, *, generator: torch.Generator | None = None) -> Loss:
        real_score, _ = self.critic(self.real_inputs(batch, generator=generator), batch.y)
        fake_score, _ = self.critic(self.fake_inputs(draw), draw.y)
        kind = self.config.loss
        # minimax: the players' objectives are exactly opposed; otherwise swap the labels
        loss = -critic_loss(kind, real_score, fake_score) if kind == "minimax" else \
            critic_loss(kind, fake_score, real_score)
        return Loss(loss, {"real_score": real_score.mean(), "fake_score": fake_score.mean()})

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder_output(x, sample=False)

    def decode(self, z: Tensor) -> Tensor:
        if self.num_classes:
            raise DgmError("decode() of a conditional BiGAN needs labels: use sample(n, condition)")
        return self.generate(Draw(z))


class JointCritic(nn.Module):
    """The BiGAN / ALI critic's features of a pair: features of x, an MLP of z, and an MLP of both.
    ``(x (B, ...), z (B, d))`` to ``(B, width)``."""

    def __init__(self, x_features: nn.Module, z_dim: int, width: int) -> None:
        super().__init__()
        self.x_features = x_features
        self.z_features = MLPFeatures(z_dim, (width, width))
        self.joint = MLPFeatures(x_features.out_features + width, (width,))
        self.out_features = width

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.joint(torch.cat([self.x_features(x), self.z_features(z)], dim=1))


preset("ali", "ALI: BiGAN with a stochastic (Gaussian) encoder (Dumoulin et al. 2017)", BiGAN, encoder="gaussian")
