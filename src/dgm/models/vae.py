"""The variational autoencoder and its training-objective variants.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114.
Rezende, Mohamed & Wierstra 2014, arXiv:1401.4082.

With a Gaussian encoder q(z|x) = N(mu(x), diag sigma(x)^2) and prior p(z) = N(0, I)::

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))                                  (AEVB eq. 3)
    KL      = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)                     (AEVB app. B)

Variants are options of the one objective:

* beta-VAE (Higgins et al. 2017): the KL term weighted by ``beta``;
* KL warm-up (Bowman et al. 2016, arXiv:1511.06349; Sønderby et al. 2016): beta ramps from 0;
* free bits (Kingma et al. 2016, arXiv:1606.04934, eq. 15): each latent dimension's batch-averaged
  KL is counted as at least ``free_bits`` nats, so the optimiser gains nothing by collapsing it;
* IWAE (Burda, Grosse & Salakhutdinov 2016, arXiv:1509.00519, eq. 8): with ``iwae_k > 1`` the
  training objective is L_k = E[log 1/k sum_i w_i], w_i = p(x, z_i) / q(z_i | x).

Evaluation: :meth:`VAE.iwae_bound` gives L_k for k up to thousands (chunked, logsumexp-stable),
with ELBO = L_1 <= L_k <= L_{k+1} <= log p(x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, randn, register
from dgm.models.refusals import refuse_variable_length
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt
from dgm.nn import LIKELIHOODS, MLP, ConvDecoder, ConvEncoder, Likelihood, make_likelihood
from dgm.nn.distributions import diagonal_gaussian, normal_log_prob


#: why a VAE refuses token sequences and point sets
PADDING_REASON = ("its likelihood covers every position of a fixed-size example, so it would train on the "
                  "padding as data")


@dataclass
class VAEConfig:
    """Settings of :class:`VAE` (``--set model.KEY=VALUE``)."""

    latent_dim: PositiveInt = 16  # dimension of z
    network: Literal["mlp", "conv"] = "mlp"  # encoder/decoder networks (conv: 8x8, 28x28, 32x32 images)
    hidden: tuple[PositiveInt, ...] = (512, 256)  # MLP hidden widths of the encoder; the decoder mirrors them
    activation: Literal["silu", "relu"] = "silu"  # of the MLP networks (relu: pythae's and most papers' MLP VAE)
    width: PositiveInt = 32  # conv channels at full resolution (doubled at each downsampling)
    num_res_blocks: NonNegativeInt = 1  # residual blocks per resolution of the conv networks
    likelihood: Literal["bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"] = "bernoulli"
    gaussian_scale: Literal["learned", "output"] = "learned"  # gaussian: a free per-dim scale, or decoded
    mixture_components: PositiveInt = 5  # logistic-mixture: components per dimension
    beta: NonNegativeFloat = 1.0  # weight of the KL term (beta-VAE); 1 is the ELBO
    kl_warmup_steps: NonNegativeInt = 0  # ramp beta linearly from 0 over this many steps (0: no warm-up)
    free_bits: NonNegativeFloat = 0.0  # minimum nats of KL counted per latent dimension (0: off)
    iwae_k: PositiveInt = 1  # importance samples of the training objective (1: ELBO, >1: IWAE)
    sample_mean: bool = True  # sample() returns the decoder mean E[x|z] (the usual picture); False draws x~p(x|z)


def mlp_activation(config: VAEConfig) -> type[nn.Module]:
    """The activation between the MLP layers that ``config.activation`` names."""
    return {"silu": nn.SiLU, "relu": nn.ReLU}[config.activation]


def likelihood_of(config: VAEConfig, spec: DataSpec) -> Likelihood:
    """The observation likelihood p(x|z) a VAE-like config names (``likelihood``, with its
    ``gaussian_scale`` or ``mixture_components``), over data described by ``spec``."""
    options = {"logistic-mixture": {"components": config.mixture_components},
               "gaussian": {"scale": config.gaussian_scale}}.get(config.likelihood, {})
    return make_likelihood(config.likelihood, spec, **options)


def emit(likelihood: Likelihood, params: Tensor, *, mean: bool, generator: torch.Generator | None) -> Tensor:
    """What a VAE-like model shows for decoder parameters ``params``: the likelihood's mean E[x|z]
    (``mean``, the config's ``sample_mean``: the usual picture) or a draw x ~ p(x|z) from ``generator``."""
    return likelihood.mean(params) if mean else likelihood.sample(params, generator=generator)


def weighted_kl(kl: Tensor, *, beta: float, free_bits: float, warmup_steps: int, step: int) -> tuple[Tensor, float]:
    """The KL term of a VAE-like training loss from the KL of each latent unit ``kl`` ``(B, units)``:
    each unit's batch-averaged KL counted as at least ``free_bits`` nats (0: off), summed, and
    weighted by ``beta`` ramped linearly from 0 over ``warmup_steps`` (0: no warm-up) at optimiser
    step ``step``. Returns the term and the weight it used."""
    counted = kl.mean(0)  # (units,) the batch-averaged KL of each unit
    if free_bits > 0:
        counted = counted.clamp(min=free_bits)
    weight = beta * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    return weight * counted.sum(), weight


@register
class VAE(GenerativeModel):
    """Variational autoencoder with a Gaussian posterior, a standard normal prior and any of the
    shared observation likelihoods.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> vae = dgm.create("vae", data.spec, latent_dim=8)
        >>> vae.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "vae"
    Config = VAEConfig
    description = "variational autoencoder (beta, KL warm-up, free bits, IWAE objective; MLP or conv)"

    def __init__(self, config: VAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        if config.iwae_k < 1:
            raise DgmError(f"model.iwae_k must be >= 1, got {config.iwae_k}")
        if config.iwae_k > 1 and (config.beta != 1 or config.free_bits or config.kl_warmup_steps):
            raise DgmError("the IWAE objective (iwae_k > 1) is a bound on log p(x) and takes no beta, "
                           "free_bits or kl_warmup_steps: set those back to their defaults")
        self.likelihood = likelihood_of(config, spec)
        out_shape = self.likelihood.params_shape
        d = config.latent_dim
        if config.network == "conv":
            if not spec.is_image:
                raise DgmError(f"network=conv needs image data, but {spec.name!r} has shape {spec.shape}: "
                               f"use --set model.network=mlp")
            self.encoder = ConvEncoder(spec.shape, self.encoder_features(config), width=config.width,
                                       num_res_blocks=config.num_res_blocks)
            self.decoder = ConvDecoder(d, out_shape, width=config.width, num_res_blocks=config.num_res_blocks)
        else:
            act = mlp_activation(config)
            self.encoder = nn.Sequential(nn.Flatten(), MLP(spec.dim, config.hidden, self.encoder_features(config),
                                                           activation=act))
            self.decoder = nn.Sequential(MLP(d, tuple(reversed(config.hidden)), math.prod(out_shape), activation=act),
                                         nn.Unflatten(1, out_shape))

    def memory_format(self) -> torch.memory_format:
        # the conv VAE's step: 1.17x faster in bf16 and 1.10x in fp32 in channels_last (benchmarks/mfu.py)
        # (2-D images only: the voxel VAE's conv networks are 3-D, with 5-D weights)
        conv2d = self.config.network == "conv" and self.spec.is_image
        return torch.channels_last if conv2d else torch.contiguous_format

    @classmethod
    def default_representation(cls, config: VAEConfig, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        if spec.levels is None:  # continuous data (2-D toys, float arrays)
            return "continuous"
        return LIKELIHOODS[config.likelihood].default_representation

    @property
    def likelihood_kind(self) -> str:
        return "discrete" if self.likelihood.discrete else "density"

    # --- the two halves ---------------------------------------------------------------------------
    @staticmethod
    def encoder_features(config: VAEConfig) -> int:
        """The encoder's outputs: the mean and log-variance of q(z|x) (a posterior that is refined
        further asks for more: :class:`~dgm.models.iaf_vae.IAFVAE`'s context)."""
        return 2 * config.latent_dim

    def encoded(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and log-variance of the Gaussian q(z|x), each ``(B, latent_dim)``, and the rest of
        the encoder's output ``(B, encoder_features - 2 latent_dim)`` (empty for this VAE)."""
        out = self.encoder(x if x.is_floating_point() else x.float())
        d = self.config.latent_dim
        mean, log_var = diagonal_gaussian(out[:, :2 * d])
        return mean, log_var, out[:, 2 * d:]

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each ``(B, latent_dim)``."""
        return self.encoded(x)[:2]

    def posterior_draws(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``k`` draws z ~ q(z|x) per example, ``(k, B, latent_dim)``, and log q(z|x) of each latent
        unit, the same shape (the units' sum is log q(z|x)). Noise is drawn as ``(k B, d)``,
        sample-major, so a data-parallel process gets its examples' rows."""
        mu, logvar, h = self.posterior_with_context(x)
        B, d = mu.shape
        eps = randn((k * B, d), like=mu, generator=generator).view(k, B, d)
        z0 = mu + eps * (0.5 * logvar).exp()  # (k, B, d)
        # sample-major rows, the context tiled alike
        z, log_det = self.refine(z0.reshape(k * B, d), None if h is None else h.repeat(k, 1))
        return z.view(k, B, d), normal_log_prob(z0, mu, logvar) - log_det.view(k, B, d)

    def posterior_with_context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The Gaussian q(z|x) (:meth:`posterior`, which subclasses override for their own inputs) and
        what :meth:`refine` takes besides the draw: nothing for this posterior."""
        mu, logvar = self.posterior(x)
        return mu, logvar, None

    def refine(self, z0: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """An invertible map of the Gaussian draw ``z0`` ``(N, d)`` given the context ``h``, and the
        log |dz/dz0| it adds to each unit, ``(N, d)``: none for this posterior (the identity);
        :class:`~dgm.models.iaf_vae.IAFVAE` applies its flow here."""
        return z0, torch.zeros_like(z0)

    def draw_with_kl(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One draw z ~ q(z|x), ``(B, latent_dim)``, and the KL of every latent unit, ``(B, latent_dim)``:
        analytic for this Gaussian posterior (AEVB app. B)."""
        mu, logvar = self.posterior(x)
        return self.reparameterize(mu, logvar, generator), self.analytic_kl(mu, logvar)

    def decoder_params(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for codes ``z``, in at least float32: under bf16 autocast
        the networks run in bf16, but log-likelihoods summed over hundreds of pixels need fp32."""
        params = self.decoder(z)
        return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats, ``(B,)``."""
        return self.likelihood.log_prob(self.decoder_params(z), x)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = randn(mu.shape, like=mu, generator=generator)
        return mu + eps * (0.5 * logvar).exp()

    @staticmethod
    def analytic_kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, e^logvar) || N(0, 1)) per dimension, ``(B, latent_dim)``."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)

    # --- training ---------------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        if c.iwae_k > 1:
            bound = self.iwae_bound(batch.x, c.iwae_k, chunk=c.iwae_k, generator=progress.generator)
            return Loss(-bound.mean(), {"iwae": bound.mean()})
        z, kl = self.draw_with_kl(batch.x, progress.generator)  # (B, latent_dim) each
        rec = self.log_likelihood(batch.x, z)  # (B,)
        penalty, beta = weighted_kl(kl, beta=c.beta, free_bits=c.free_bits, warmup_steps=c.kl_warmup_steps,
                                    step=progress.step)
        elbo = rec - kl.sum(-1)
        return Loss(-rec.mean() + penalty,
                    {"elbo": elbo.mean(), "reconstruction": rec.mean(), "kl": kl.sum(-1).mean(),
                     "beta": torch.tensor(beta)})

    # --- likelihood bounds ------------------------------------------------------------------------
    def elbo(self, x: Tensor) -> Tensor:
        """One-sample Monte Carlo ELBO with the analytic KL, nats, ``(B,)``."""
        z, kl = self.draw_with_kl(x)
        return self.log_likelihood(x, z) - kl.sum(-1)

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), ``(k, B)``."""
        z, log_q = self.posterior_draws(x, k, generator=generator)  # (k, B, d) each
        k, B, d = z.shape
        log_q = log_q.sum(-1)  # (k, B)
        log_prior = normal_log_prob(z).sum(-1)  # (k, B)
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * B, *x.shape[1:])
        log_px = self.log_likelihood(x_rep, z.reshape(k * B, d)).view(k, B)
        return log_px + log_prior - log_q

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """L_k = log 1/k sum_i w_i (Burda et al. 2016, eq. 8), in nats, ``(B,)``; the k samples are
        drawn ``chunk`` at a time (from ``generator``) and combined with logsumexp, so k = 5000 fits in memory."""
        parts = [self.log_weights(x, min(chunk, k - i), generator=generator) for i in range(0, k, chunk)]
        return torch.cat(parts).logsumexp(0) - math.log(k)

    def kl_per_dim(self, x: Tensor) -> Tensor:
        return self.analytic_kl(*self.posterior(x))

    # --- generation and codes ---------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.likelihood.mean(self.decoder_params(z))

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        if condition is not None:
            raise DgmError("the VAE is unconditional: drop the condition (the conditional VAE is its own model)")
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return emit(self.likelihood, self.decoder_params(z), mean=self.config.sample_mean, generator=generator)
