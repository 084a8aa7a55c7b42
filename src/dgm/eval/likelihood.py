"""Log-likelihoods in nats and bits per dimension, with one convention for every family.

Bits per dimension are always for the *discrete* data (docs/evaluation.md; Theis et al. 2016,
arXiv:1511.01844; the RealNVP, Glow and PixelCNN papers):

* a pmf over the discrete data (Bernoulli on binarized pixels, a categorical or discretized
  logistic over the L levels): ``bpd = -log P(x) / (D log 2)``;
* a density p(y) over uniformly dequantized data ``y = (x + u) / L`` in [0, 1)^D: the bin of x has
  volume ``L^-D``, and by Jensen ``log P(x) >= E_u[log p(y)] - D log L``, so
  ``bpd = (-log p(y) + D log L) / (D log 2)`` is an upper bound on the discrete model's bits/dim;
* a density over continuous data (2-D toys) has no bits/dim: it is reported in nats only.

For binarized data the usual headline is nats per example (Burda et al. 2016); bits/dim is then per
binary pixel.
"""
from __future__ import annotations

import math

from dgm.data.core import DataSpec


def bits_per_dim(nll_nats: float, spec: DataSpec, likelihood_kind: str) -> float | None:
    """Bits per dimension of a mean negative log-likelihood ``nll_nats`` (per example), or ``None``
    when the number is a density over data that is not discrete."""
    D = spec.dim
    if likelihood_kind == "discrete":
        return nll_nats / (D * math.log(2))
    if spec.representation == "dequantized":
        return (nll_nats + D * math.log(spec.levels)) / (D * math.log(2))
    return None
