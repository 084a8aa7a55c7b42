"""Class-conditional VAEs: the conditional VAE and the conditional subspace VAE (CSVAE).

**CVAE**. Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep Conditional
Generative Models" (NeurIPS); the same bound is the labelled term of Kingma, Rezende, Mohamed &
Welling 2014's M2 (arXiv:1406.4298, eq. 6, less its constant log p(y)). With the class y observed::

    p(x, z | y) = p(x | y, z) p(z),   p(z) = N(0, I),   q(z | x, y) = N(mu(x, y), diag sigma(x, y)^2)
    log p(x | y) >= ELBO(x | y) = E_q[log p(x | y, z)] - KL(q(z | x, y) || p(z))

The networks read the one-hot of y beside the flattened x (encoder) and beside z (decoder). It is the
VAE of the pair v = (x, y) whose likelihood scores the x of v given (z, y), so the VAE's objective and
its options (beta, KL warm-up, free bits) are the conditional ones unchanged. Its bounds are on
log p(x|y), not on log p(x): they are ``conditional_elbo`` / ``conditional_iwae_bound``, not the
protocol's ``elbo``, and without y there is no code of x (no ``encode`` / ``decode``).

**CSVAE**. Klys, Snell & Zemel 2018, "Learning Latent Subspaces in Variational Autoencoders"
(NeurIPS, arXiv:1812.06190), with the paper's names for the objective's parts (M1, M2, N). Binary
attributes y in {0, 1}^A; latents w = (w_1, ..., w_A), a subspace w_i in R^{d_w} per attribute, and z,
meant to hold nothing about y::

    p(x, y, w, z) = p(x | w, z) p(w | y) p(y) p(z),   p(z) = N(0, I)
    p(w | y)      = prod_i N(w_i; mu_{y_i}, sigma_{y_i}^2 I)    (fixed, not learned)
    q(w, z | x, y) = q(z | x) q(w | x, y)

with mu_0 = 0, sigma_0 = 0.1 (an absent attribute's w_i gathers at a point) and mu_1 = 3, sigma_1 = 1
(a present attribute's variations have room), the settings ``w_mean_absent`` ... ``w_std_present``.

Two players (:class:`~dgm.models.base.Phase`):

* ``vae`` (encoders q(z|x), q(w|x,y), decoder) maximises M1 - M2, where
  M1 = beta1 E_q[log p(x|w,z)] - beta2 KL(q(w|x,y) || p(w|y)) - beta3 KL(q(z|x) || p(z)) + log p(y)
  (log p(y) is a constant; with every beta = 1, M1 is the ELBO of log p(x, y)), and
  M2 = beta4 E_{q(z|x)}[sum_y q_delta(y|z) log q_delta(y|z)], the negative entropy of the adversary's
  prediction from z: the encoder makes z uninformative of y (minimising the mutual information I(y; z)).
* ``adversary`` q_delta(y|z) maximises N = E_{q(z|x)}[log q_delta(y|z)] on the true labels, with z held fixed.

dgm's data gives one class label in 0..K-1 per example (Fashion-MNIST 10 classes, sprites 3 shapes):
the attributes are the one-hot of the class (A = K binary attributes, exactly one on), so q_delta(y|z)
is a categorical over the K classes; data of exactly 2 classes has one attribute (y_1 = the class).
p(y) is uniform over the classes.

Both models change an example's class and keep the rest (:meth:`ClassConditional.manipulate`): the
CVAE re-decodes the mean of q(z|x, source) with the target class, the CSVAE keeps the mean of q(z|x)
and sets w to the mean of p(w | target).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, capability, randint, randn, register
from dgm.models.refusals import class_labels, refuse_partial_labels, refuse_unlabelled, refuse_variable_length
from dgm.models.vae import PADDING_REASON, VAE, VAEConfig, emit, likelihood_of, mlp_activation
from dgm.nn import MLP, diagonal_gaussian, normal_kl
from dgm.settings import NonNegativeFloat, PositiveFloat, PositiveInt, Range

#: phase names of the CSVAE's two players
VAE_PHASE, ADVERSARY = "vae", "adversary"
#: rows (codes z) of the class grids in the reports
GRID_ROWS = 8


def refuse_conv(model: str, network: str) -> None:
    if network != "mlp":
        raise DgmError(f"model {model!r} has MLP networks only (the class joins the flattened example): "
                       f"use --set model.network=mlp")


class ClassConditional(GenerativeModel):
    """What the class-conditional VAEs share: the class as the condition of :meth:`sample` (uniform
    when none is given), and :meth:`manipulate`, which keeps an example's code and sets its class.
    A subclass says what is kept (:meth:`kept_code`) and how a code and a class are decoded
    (:meth:`decode_class`)."""

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def one_hot(self, y: Tensor) -> Tensor:
        """``(B, K)`` float one-hot of the class labels ``y`` ``(B,)``."""
        return F.one_hot(y, self.num_classes).float()

    def classes(self, condition: Tensor | int | None, n: int, generator: torch.Generator | None) -> Tensor:
        """The ``(n,)`` classes of ``n`` samples: ``condition`` (checked), or uniform draws (p(y))."""
        y = class_labels(self.name, condition, n, self.num_classes, self.device)
        if y is None:
            y = randint(self.num_classes, (n,), like=torch.empty(0, device=self.device), generator=generator)
        return y

    def kept_code(self, x: Tensor, source: Tensor | None) -> Tensor:
        """What :meth:`manipulate` keeps of ``x`` (whose classes are ``source``, when known)."""
        raise NotImplementedError

    def decode_class(self, z: Tensor, y: Tensor) -> Tensor:
        """The decoder mean for codes ``z`` and classes ``y``, ``(B, *spec.shape)``."""
        raise NotImplementedError

    @capability
    @torch.inference_mode()
    def manipulate(self, x: Tensor, target: Tensor, *, source: Tensor | None = None) -> Tensor:
        """The examples ``x`` ``(B, *spec.shape)`` with their class set to ``target`` ``(B,)`` and
        everything else kept (the decoder mean), in the data representation; ``source`` ``(B,)``: the
        examples' own classes, for a model that encodes with them."""
        n = len(x)
        target = class_labels(self.name, target, n, self.num_classes, x.device)
        if source is not None:
            source = class_labels(self.name, source, n, self.num_classes, x.device)
        return self.decode_class(self.kept_code(x, source), target)

    def class_grid(self, latent_dim: int, generator: torch.Generator | None) -> Tensor:
        """``GRID_ROWS`` codes z ~ N(0, I), each decoded with every class in turn: ``(rows * K, *shape)``,
        row-major (one row per code)."""
        k = self.num_classes
        z = randn((GRID_ROWS, latent_dim), like=torch.empty(0, device=self.device), generator=generator)
        return self.decode_class(z.repeat_interleave(k, 0), torch.arange(k, device=self.device).repeat(GRID_ROWS))

    def class_list(self) -> str:
        """The class names (or numbers), for captions."""
        names = self.spec.class_names or [str(i) for i in range(self.num_classes)]
        return ", ".join(names)


# --- the conditional VAE --------------------------------------------------------------------------
@dataclass
class CVAEConfig(VAEConfig):
    """Settings of :class:`CVAE` (``--set model.KEY=VALUE``): the VAE's, where beta, KL warm-up and
    free bits weigh KL(q(z|x,y) || p(z)); MLP networks and the one-sample objective (iwae_k = 1) only."""


@register
class CVAE(ClassConditional, VAE):
    """The conditional VAE: the VAE of (x, y) whose encoder reads the class and whose decoder is told it.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> cvae = dgm.create("cvae", data.spec, latent_dim=8)
        >>> cvae.loss(data.tensors(32), "model", Progress()).loss.backward()
        >>> sevens = cvae.sample(16, 7)
    """

    name = "cvae"
    Config = CVAEConfig
    description = "conditional VAE: p(x|y,z) p(z), q(z|x,y) with the class y observed (MLP)"

    # bounds on log p(x|y), not log p(x), and codes that need y: not the protocol's capabilities here
    # (conditional_elbo and conditional_iwae_bound are the bounds, manipulate uses the codes)
    elbo = GenerativeModel.elbo
    iwae_bound = GenerativeModel.iwae_bound
    kl_per_dim = GenerativeModel.kl_per_dim
    encode = GenerativeModel.encode
    decode = GenerativeModel.decode

    def __init__(self, config: CVAEConfig, spec: DataSpec) -> None:
        refuse_unlabelled(self.name, spec)
        refuse_conv(self.name, config.network)
        if config.iwae_k != 1:
            raise DgmError(f"model {self.name!r} trains on the ELBO of log p(x|y): set model.iwae_k=1 "
                           f"(conditional_iwae_bound(x, y, k) gives the tighter bound in evaluation)")
        super().__init__(config, spec)  # the VAE's likelihood and checks; its networks are replaced here
        k, d = spec.num_classes, config.latent_dim
        out_shape = self.likelihood.params_shape
        act = mlp_activation(config)
        self.encoder = MLP(spec.dim + k, config.hidden, 2 * d, activation=act)  # q(z|x,y) on v = [flatten(x), one_hot(y)]
        self.decoder = nn.Sequential(MLP(d + k, tuple(reversed(config.hidden)), math.prod(out_shape), activation=act),
                                     nn.Unflatten(1, out_shape))  # p(x|y,z) on [z, one_hot(y)]

    # --- the pair v = (x, y) that the VAE's objective passes around as its "x" --------------------
    def pair(self, x: Tensor, y: Tensor) -> Tensor:
        """v = [flatten(x), one_hot(y)], ``(B, D + K)``: what the encoder q(z|x,y) reads."""
        return torch.cat([x.flatten(1).float(), self.one_hot(y)], 1)

    def unpair(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """The examples ``(B, *spec.shape)`` (in their representation's dtype) and the one-hots of ``v``."""
        x = v[:, :self.spec.dim].unflatten(1, self.spec.shape)
        if self.spec.representation == "levels":  # integer levels, exact in float32
            x = x.round().long()
        return x, v[:, self.spec.dim:]

    def log_likelihood(self, v: Tensor, z: Tensor) -> Tensor:
        """log p(x | y, z) in nats, ``(B,)``, for the pairs ``v = (x, y)``."""
        x, y = self.unpair(v)
        return super().log_likelihood(x, torch.cat([z, y], -1))

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        refuse_partial_labels(self.name, batch, "conditions its encoder and decoder on the class, so it")
        out = super().loss(Batch(self.pair(batch.x, batch.y)), phase, progress)
        out.metrics["conditional_elbo"] = out.metrics.pop("elbo")  # a bound on log p(x|y), not on log p(x)
        return out

    # --- bounds on log p(x|y) ---------------------------------------------------------------------
    @capability
    def conditional_elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """One-sample ELBO(x | y) <= log p(x | y) in nats, ``(B,)`` (analytic KL)."""
        return super().elbo(self.pair(x, y))

    @capability
    def conditional_iwae_bound(self, x: Tensor, y: Tensor, k: int, *, chunk: int = 500,
                               generator: torch.Generator | None = None) -> Tensor:
        """The importance-weighted bound on log p(x | y) with ``k`` samples of q(z|x,y), nats, ``(B,)``."""
        return super().iwae_bound(self.pair(x, y), k, chunk=chunk, generator=generator)

    # --- generation -------------------------------------------------------------------------------
    def kept_code(self, x: Tensor, source: Tensor | None) -> Tensor:
        if source is None:
            raise DgmError(f"model {self.name!r} encodes an example with its class, q(z|x,y), and has no "
                           f"classifier to infer it: give the example's class with --source CLASS")
        return self.posterior(self.pair(x, source))[0]

    def decode_class(self, z: Tensor, y: Tensor) -> Tensor:
        return self.likelihood.mean(self.decoder_params(torch.cat([z, self.one_hot(y)], -1)))

    def sample(self, n: int, condition: Tensor | int | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the classes ``condition`` (one for all, or ``n``; default uniform draws)."""
        y = self.classes(condition, n, generator)
        z = randn((n, self.config.latent_dim), like=torch.empty(0, device=self.device), generator=generator)
        params = self.decoder_params(torch.cat([z, self.one_hot(y)], -1))
        return emit(self.likelihood, params, mean=self.config.sample_mean, generator=generator)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        k = self.num_classes
        return [("Classes", self.class_grid(self.config.latent_dim, generator), k,
                 f"each row decodes one code z drawn from p(z) with each class in turn (columns: "
                 f"{self.class_list()}): the row keeps what z holds, the column sets the class")]


# --- the conditional subspace VAE -----------------------------------------------------------------
@dataclass
class CSVAEConfig:
    """Settings of :class:`CSVAE` (``--set model.KEY=VALUE``); the defaults of the betas and of the
    prior of w follow the paper's experiments (Klys et al. 2018)."""

    latent_dim: PositiveInt = 16  # dimension of z, the part kept free of the label
    w_dim: PositiveInt = 2  # d_w, dimension of each attribute's subspace w_i
    hidden: tuple[PositiveInt, ...] = (512, 256)  # MLP widths of q(z|x) and q(w|x,y); the decoder mirrors them
    adversary_hidden: tuple[PositiveInt, ...] = (64, 64)  # MLP widths of the adversary q_delta(y|z)
    likelihood: Literal["bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"] = "bernoulli"
    gaussian_scale: Literal["learned", "output"] = "learned"  # gaussian: a free per-dim scale, or decoded
    mixture_components: PositiveInt = 5  # logistic-mixture: components per dimension
    beta1: NonNegativeFloat = 20.0  # weight of E log p(x|w,z) in M1
    beta2: NonNegativeFloat = 1.0  # weight of KL(q(w|x,y) || p(w|y)) in M1
    beta3: NonNegativeFloat = 0.2  # weight of KL(q(z|x) || p(z)) in M1
    beta4: NonNegativeFloat = 10.0  # weight of the adversary's negative entropy M2 (0: no adversarial term)
    w_mean_absent: Annotated[float, Range()] = 0.0  # mu_0: mean of p(w_i | y_i = 0)
    w_std_absent: PositiveFloat = 0.1  # sigma_0: its standard deviation (absent attributes gather at a point)
    w_mean_present: Annotated[float, Range()] = 3.0  # mu_1: mean of p(w_i | y_i = 1)
    w_std_present: PositiveFloat = 1.0  # sigma_1: its standard deviation (room for the attribute's variations)
    sample_mean: bool = True  # sample() returns the decoder mean E[x|w,z]; False draws x ~ p(x|w,z)


@register
class CSVAE(ClassConditional):
    """The conditional subspace VAE: a subspace w_i per attribute for what the label explains, and a
    code z kept free of the label by an adversary that tries to read the label from z.

    :meth:`encode` gives the mean of q(z|x), the label-free part (q(w|x,y) needs the label): a linear
    probe of the class on it measures how much label information leaks into z, which the CSVAE makes small.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> csvae = dgm.create("csvae", data.spec, latent_dim=8)
        >>> for phase in csvae.phases():
        ...     csvae.loss(data.tensors(32), phase.name, Progress()).loss.backward()
    """

    name = "csvae"
    Config = CSVAEConfig
    description = "conditional subspace VAE: a latent subspace per attribute, z kept free of the label adversarially"

    # the VAE's plumbing, as it is: the representation its likelihood wants, q(z|x) = N(mu, sigma^2)
    # from self.encoder (and its mean as the code), fp32 decoder outputs, log p(x|h) for a decoder input h
    default_representation = VAE.__dict__["default_representation"]
    likelihood_kind = VAE.likelihood_kind
    encoded = VAE.encoded
    posterior = VAE.posterior
    decoder_params = VAE.decoder_params
    log_likelihood = VAE.log_likelihood
    encode = VAE.encode

    def __init__(self, config: CSVAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        refuse_unlabelled(self.name, spec)
        c = config
        self.likelihood = likelihood_of(c, spec)
        out_shape = self.likelihood.params_shape
        a, d = self.num_attributes, c.latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), MLP(spec.dim, c.hidden, 2 * d))  # q(z|x)
        self.w_encoder = MLP(spec.dim + a, c.hidden, 2 * a * c.w_dim)  # q(w|x,y) on [flatten(x), y]
        self.decoder = nn.Sequential(MLP(a * c.w_dim + d, tuple(reversed(c.hidden)), math.prod(out_shape)),
                                     nn.Unflatten(1, out_shape))  # p(x|w,z) on [w, z]
        self.adversary = MLP(d, c.adversary_hidden, spec.num_classes)  # logits of q_delta(y|z)

    @property
    def num_attributes(self) -> int:
        """A: one binary attribute per class (the one-hot), or one for two classes."""
        return 1 if self.num_classes == 2 else self.num_classes

    def attributes(self, y: Tensor) -> Tensor:
        """The binary attributes ``(B, A)`` of the classes ``y`` ``(B,)``."""
        return y[:, None].float() if self.num_classes == 2 else self.one_hot(y)

    def phases(self) -> list[Phase]:
        adversary = list(self.adversary.parameters())
        theirs = {id(p) for p in adversary}
        return [Phase(VAE_PHASE, [p for p in self.parameters() if id(p) not in theirs]),
                Phase(ADVERSARY, adversary)]

    # --- the distributions over w -----------------------------------------------------------------
    def w_prior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(w|y) = prod_i N(mu_{y_i}, sigma_{y_i}^2 I), each ``(B, A * d_w)``
        (w = (w_1, ..., w_A), d_w coordinates each)."""
        c, a = self.config, self.attributes(y)  # (B, A)
        mean = a * c.w_mean_present + (1 - a) * c.w_mean_absent
        log_var = 2 * (a * math.log(c.w_std_present) + (1 - a) * math.log(c.w_std_absent))
        return mean.repeat_interleave(c.w_dim, 1), log_var.repeat_interleave(c.w_dim, 1)

    def w_posterior(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(w|x,y), each ``(B, A * d_w)``."""
        return diagonal_gaussian(self.w_encoder(torch.cat([x.flatten(1).float(), self.attributes(y)], 1)))

    # --- training ---------------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """The phase's objective; noise is drawn in this order: z ~ q(z|x), then (``vae``) w ~ q(w|x,y)."""
        refuse_partial_labels(self.name, batch, "encodes w from the class and trains its adversary on labels, so it")
        c, x, y = self.config, batch.x, batch.y
        mu_z, log_var_z = self.posterior(x)  # q(z|x)
        z = VAE.reparameterize(mu_z, log_var_z, progress.generator)  # (B, latent_dim)
        if phase == ADVERSARY:  # max_delta N = E log q_delta(y|z), the encoder held fixed
            log_q = self.adversary(z.detach()).float().log_softmax(-1)  # (B, K)
            n = log_q.gather(1, y[:, None]).squeeze(1)  # (B,)
            accuracy = (log_q.argmax(-1) == y).float().mean()
            return Loss(-n.mean(), {"n": n.mean(), "accuracy": accuracy})
        if phase != VAE_PHASE:
            raise ValueError(f"unknown phase {phase!r} of {self.name}")
        mu_w, log_var_w = self.w_posterior(x, y)  # q(w|x,y)
        w = VAE.reparameterize(mu_w, log_var_w, progress.generator)  # (B, A * d_w)
        rec = self.log_likelihood(x, torch.cat([w, z], -1))  # log p(x|w,z), (B,)
        kl_w = normal_kl(mu_w, log_var_w, *self.w_prior(y)).sum(-1)  # KL(q(w|x,y) || p(w|y)), (B,)
        kl_z = VAE.analytic_kl(mu_z, log_var_z).sum(-1)  # KL(q(z|x) || N(0, I)), (B,)
        log_p_y = -math.log(self.num_classes)  # p(y) uniform over the classes: a constant
        m1 = c.beta1 * rec - c.beta2 * kl_w - c.beta3 * kl_z + log_p_y
        log_q = self.adversary(z).float().log_softmax(-1)  # the adversary's q_delta(y|z), its weights held fixed
        m2 = c.beta4 * (log_q.exp() * log_q).sum(-1)  # beta4 sum_y q log q: the negative entropy
        return Loss((m2 - m1).mean(),
                    {"m1": m1.mean(), "m2": m2.mean(), "reconstruction": rec.mean(), "kl_w": kl_w.mean(),
                     "kl_z": kl_z.mean(), "joint_elbo": (rec - kl_w - kl_z + log_p_y).mean()})

    # --- generation -------------------------------------------------------------------------------
    def kept_code(self, x: Tensor, source: Tensor | None) -> Tensor:
        return self.posterior(x)[0]  # the mean of q(z|x): the class is in w, which is set anew

    def decode_class(self, z: Tensor, y: Tensor) -> Tensor:
        w = self.w_prior(y)[0]  # the mean of p(w|y)
        return self.likelihood.mean(self.decoder_params(torch.cat([w, z], -1)))

    def sample(self, n: int, condition: Tensor | int | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples: y from ``condition`` (default uniform), w ~ p(w|y), z ~ N(0, I), x from p(x|w,z)."""
        y = self.classes(condition, n, generator)
        w = VAE.reparameterize(*self.w_prior(y), generator)
        z = randn((n, self.config.latent_dim), like=w, generator=generator)
        params = self.decoder_params(torch.cat([w, z], -1))
        return emit(self.likelihood, params, mean=self.config.sample_mean, generator=generator)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        k = self.num_classes
        return [("Classes: one z, the mean w of each class", self.class_grid(self.config.latent_dim, generator), k,
                 f"each row decodes one code z drawn from p(z) with the mean of p(w|y) of each class in turn "
                 f"(columns: {self.class_list()}): z holds what the rows share, w sets the class")]
