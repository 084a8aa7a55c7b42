"""The Gaussian formulas every family shares, written once: the log-density and the KL divergence of
diagonal Gaussians, elementwise in nats (callers sum over the dimensions they factorise over).

Both take the log-variance, the parametrisation the networks output (a VAE's encoder, a learned
diffusion variance); a log standard deviation ``log_s`` is the log-variance ``2 log_s``. The bivariate
Gaussian with a correlation (pen offsets, :func:`bivariate_normal_log_prob`) takes ``log_s`` and ``rho``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)  # log(2 pi), the normalising constant of a unit Gaussian in one dimension


def diagonal_gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance, each ``(..., d)``, of a diagonal Gaussian from a network's output
    ``(..., 2 d)`` (the mean first); the log-variance is clamped to [-30, 20] so exp(log_var) stays
    finite early in training, when an encoder's outputs can be far off."""
    mean, log_var = params.chunk(2, dim=-1)
    return mean, log_var.clamp(-30.0, 20.0)


def normal_log_prob(x: Tensor, mean: Tensor | float = 0.0, log_var: Tensor | float = 0.0) -> Tensor:
    """``log N(x; mean, e^log_var)`` elementwise, nats: ``-(log 2 pi + log_var + (x - mean)^2 / var) / 2``.

    ``mean`` and ``log_var`` broadcast against ``x``; the defaults are the standard normal.

    Example:
        >>> normal_log_prob(torch.zeros(2))  # -log(2 pi) / 2 per element
        tensor([-0.9189, -0.9189])
    """
    log_var = torch.as_tensor(log_var, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * (-log_var).exp())


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """``KL(N(mean1, e^log_var1) || N(mean2, e^log_var2))`` elementwise, nats."""
    return 0.5 * (log_var2 - log_var1 + (log_var1 - log_var2).exp() + (mean1 - mean2) ** 2 * (-log_var2).exp() - 1)


def lowrank_normal_log_prob(x: Tensor, mean: Tensor, W: Tensor, diag: Tensor) -> Tensor:
    """``log N(x; mean, W W^T + diag(diag))`` of each row of ``x``, nats, ``(B,)``: the marginal of
    factor analysis and of probabilistic PCA, whose covariance is low rank plus diagonal.

    ``x`` is ``(B, D)``, ``mean`` ``(D,)``, ``W`` ``(D, q)`` and ``diag`` ``(D,)`` positive variances
    Psi. The ``D x D`` covariance C is never formed: with ``M = I_q + W^T Psi^-1 W``, the Woodbury
    identity and the matrix determinant lemma give::

        C^-1   = Psi^-1 - Psi^-1 W M^-1 W^T Psi^-1
        log|C| = log|M| + sum_d log psi_d

    so each example costs O(D q) after an O(D q^2) set-up. Computed in float64 and returned in the
    dtype of ``x`` and ``W`` together: the Mahalanobis term is the difference of two sums that grow
    with 1/psi, and in float32 it cancels to a few bits when the noise is small next to the low-rank
    part (8-bit images, psi ~ 1e-5).

    Example:
        >>> lowrank_normal_log_prob(torch.zeros(1, 2), torch.zeros(2), torch.zeros(2, 1), torch.ones(2))
        tensor([-1.8379])
    """
    dtype = torch.promote_types(x.dtype, W.dtype)
    r = x.double() - mean.double()  # (B, D)
    W, diag = W.double(), diag.double()
    scaled = W / diag[:, None]  # Psi^-1 W, (D, q)
    M = torch.eye(W.shape[1], dtype=W.dtype, device=W.device) + W.mT @ scaled  # (q, q)
    L = torch.linalg.cholesky(M)
    v = torch.linalg.solve_triangular(L, (r @ scaled).mT, upper=False)  # L^-1 W^T Psi^-1 r, (q, B)
    mahalanobis = (r ** 2 / diag).sum(-1) - v.pow(2).sum(0)  # r^T C^-1 r, (B,)
    log_det = 2 * L.diagonal().log().sum() + diag.log().sum()
    return (-0.5 * (x.shape[-1] * LOG_2PI + log_det + mahalanobis)).to(dtype)


def bivariate_normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor, rho: Tensor) -> Tensor:
    """``log N(x; mean, sigma, rho)`` of 2-D points, nats, ``(...)``: the bivariate Gaussian of Graves
    2013, "Generating Sequences With Recurrent Neural Networks" (arXiv:1308.0850), eqs. 24-25::

        N(x | mu, sigma, rho) = exp(-Z / (2 (1 - rho^2))) / (2 pi sigma_1 sigma_2 sqrt(1 - rho^2))
        Z = (x_1 - mu_1)^2 / sigma_1^2 + (x_2 - mu_2)^2 / sigma_2^2 - 2 rho (x_1 - mu_1)(x_2 - mu_2) / (sigma_1 sigma_2)

    ``x``, ``mean`` and ``log_std`` (``log sigma``) are ``(..., 2)`` and ``rho`` ``(...)`` in (-1, 1), all
    broadcasting; ``1 - rho^2`` is kept above 1e-6 so a saturated correlation stays finite.

    Example:
        >>> bivariate_normal_log_prob(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.tensor(0.0))
        tensor(-1.8379)
    """
    u = (x - mean) * (-log_std).exp()  # (..., 2): standardised coordinates
    one_minus_rho2 = (1 - rho ** 2).clamp_min(1e-6)
    z = u[..., 0] ** 2 + u[..., 1] ** 2 - 2 * rho * u[..., 0] * u[..., 1]  # eq. 25
    return -LOG_2PI - log_std.sum(-1) - 0.5 * one_minus_rho2.log() - z / (2 * one_minus_rho2)  # eq. 24
