"""The Gaussian formulas every family shares, written once: the log-density and the KL divergence of
diagonal Gaussians, elementwise in nats (callers sum over the dimensions they factorise over).

Both take the log-variance, the parametrisation the networks output (a VAE's encoder, a learned
diffusion variance); a log standard deviation ``log_s`` is the log-variance ``2 log_s``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)  # log(2 pi), the normalising constant of a unit Gaussian in one dimension


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
