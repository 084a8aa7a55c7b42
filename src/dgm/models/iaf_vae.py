"""The VAE with an inverse autoregressive flow posterior.

Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improved Variational Inference with
Inverse Autoregressive Flow", arXiv:1606.04934, section 4 and algorithm 1.

The encoder gives a diagonal Gaussian and a context ``h``; T invertible steps then refine the draw,
each an autoregressive function of the previous one (a MADE over z, given h), with the orderings
reversed from step to step::

    z_0 = mu(x) + sigma(x) * eps,                      eps ~ N(0, I)
    (m_t, s_t) = MADE_t(z_{t-1}, h),  sigma_t = sigmoid(s_t + gate_bias)
    z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t                                (eq. 14)
    log q(z_T | x) = sum_i [log N(z_0,i; mu_i, sigma_i^2) - sum_t log sigma_t,i]   (eq. 15)

Each step's Jacobian is triangular (m_t,i and s_t,i see z_{t-1,<i} only), so its log-determinant is
sum_i log sigma_t,i, computed in the same pass as the sample. The KL term is no longer analytic:
the ELBO uses the one-sample estimate log q(z_T|x) - log p(z_T), split over the latent units as
above (the free-bits option of the VAE counts it per unit, as the paper did), and the IWAE bound
weights w = p(x, z_T) / q(z_T | x). The steps are :class:`~dgm.nn.made.MaskedAutoregressive`
transforms (the flows' MADE) with the gated elementwise map :class:`~dgm.nn.flows.GatedAffine`;
each starts near the identity (a zero output layer and sigma near 1), so training starts from the
plain VAE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.data.core import DataSpec
from dgm.models.base import register
from dgm.models.vae import VAE, VAEConfig
from dgm.nn.distributions import normal_log_prob
from dgm.nn.flows import GatedAffine
from dgm.nn.made import MaskedAutoregressive
from dgm.settings import NonNegativeFloat, PositiveInt


@dataclass
class IAFVAEConfig(VAEConfig):
    """Settings of :class:`IAFVAE`: the VAE's, and the flow of its posterior."""

    iaf_steps: PositiveInt = 2  # IAF steps after the Gaussian draw (orderings alternate)
    iaf_hidden: tuple[PositiveInt, ...] = (256, 256)  # hidden widths of each step's MADE
    context_dim: PositiveInt = 32  # h: what the encoder hands every step besides mu and sigma
    gate_bias: NonNegativeFloat = 2.0  # sigma_t = sigmoid(s + gate_bias) starts near 1 (the paper: +1 or +2)


@register
class IAFVAE(VAE):
    """A VAE whose posterior is a diagonal Gaussian refined by inverse autoregressive flow steps.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> vae = dgm.create("iaf-vae", data.spec, latent_dim=8, iaf_steps=2)
        >>> vae.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "iaf-vae"
    Config = IAFVAEConfig
    description = "VAE with an inverse autoregressive flow posterior (Kingma et al. 2016)"

    def __init__(self, config: IAFVAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        d = config.latent_dim
        natural = torch.arange(d)
        self.steps = nn.ModuleList(
            MaskedAutoregressive(d, config.iaf_hidden, GatedAffine(config.gate_bias), context_features=config.context_dim,
                                 order=natural if t % 2 == 0 else natural.flip(0))
            for t in range(config.iaf_steps))

    @staticmethod
    def encoder_features(config: IAFVAEConfig) -> int:  # type: ignore[override]
        return 2 * config.latent_dim + config.context_dim  # mu, log sigma^2, h

    @property
    def kl_description(self) -> str:
        return "one-sample estimate of KL(q(z_T|x) || p(z_T)), IAF posterior"

    def posterior_with_context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encoded(x)  # mu, log sigma^2 and h, from one encoder pass

    def refine(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """z_T from z_0 ``(N, d)`` given the context ``h`` ``(N, context_dim)``, and the sum over the
        steps of each unit's log sigma_t, ``(N, d)`` (eq. 14-15; the VAE's posterior_draws subtracts
        it from log N(z_0; mu, sigma^2))."""
        z, log_sigma = z0, torch.zeros_like(z0)
        for step in self.steps:
            z, log_derivative = step.forward_per_dim(z, h)
            log_sigma = log_sigma + log_derivative
        return z, log_sigma

    def draw_with_kl(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        z, log_q = self.posterior_draws(x, 1, generator=generator)
        return z[0], log_q[0] - normal_log_prob(z[0])  # the one-sample KL of each unit

    def kl_per_dim(self, x: Tensor) -> Tensor:
        return self.draw_with_kl(x)[1]

    def encode(self, x: Tensor) -> Tensor:
        """The code of x: the flow applied to the Gaussian's mean (eps = 0)."""
        mu, _, h = self.encoded(x)
        return self.refine(mu, h)[0]
