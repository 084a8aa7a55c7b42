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

Padded token sequences and point sets are counted per *real* token or point (the batch's ``mask``,
the split's ``lengths``), never per padded position (``spec.dim``): over a split,

* tokens: ``bits per token = -sum_i log P(x_i) / (sum_i n_i ln 2)``, ``n_i`` the real tokens of
  sequence ``i`` (a pmf over the vocabulary: a uniform model over 256 bytes gives exactly 8);
* points: ``nats per point = -sum_i log p(x_i) / sum_i n_i``, bits per point (divided by ln 2) and bits per dimension of the
  continuous density, ``nats per point / (D ln 2)`` with ``D`` the point's coordinates (no
  dequantization term: the coordinates are not discrete).
"""
from __future__ import annotations

import math

from torch import Tensor

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


def nats_per_unit(log_px: Tensor, units: Tensor) -> tuple[float, float]:
    """``-sum log p(x_i) / sum n_i`` over a split, and its standard error.

    Args:
        log_px: ``(N,)`` log-likelihood (or bound) of each example, nats.
        units: ``(N,)`` real tokens or points of each example (the lengths, not the padded size).

    The standard error is the delta method's for a ratio of means, ``std(-log p_i - r n_i) /
    (sqrt(N) mean(n))`` with ``r`` the ratio.
    """
    nll, units = -log_px.double(), units.double().to(log_px.device)
    ratio = nll.sum() / units.sum()
    n = len(nll)
    stderr = (nll - ratio * units).std() / (math.sqrt(n) * units.mean()) if n > 1 else nll.new_zeros(())
    return ratio.item(), stderr.item()
