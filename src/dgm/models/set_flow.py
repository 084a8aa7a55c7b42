"""An exchangeable normalizing flow over point sets: a density of a set that no order of its points changes.

A set ``X = {x_1, .., x_n}`` of ``n`` points in ``R^D`` (the ``points`` kind: ``shapes2d``) is
modelled as its size and, given the size, the points as a tuple in any order::

    log p(X) = log p(n) + sum_i log N(z_i; 0, I) + log |det dz/dx|,      z = f(x_1, .., x_n)

``p(n)`` is a learned categorical over the sizes ``1 .. max_points`` (``size_logits``), and ``f`` a
stack of permutation-equivariant invertible maps of the ``n`` points (:mod:`dgm.nn.set_flow`): per
step, an ActNorm shared by the points, then a coupling that maps one coordinate of every point by
an affine map or a rational-quadratic spline (Durkan et al. 2019, arXiv:1906.04032) whose
parameters a transformer computes from the other coordinates of all the points of the set,
without positional encodings; the transformed coordinate alternates ``0, 1, .., D - 1, 0, ..``.
Permuting the points permutes ``z`` the same way and leaves the log-determinant (a sum over the
points) unchanged, and the base ``N(0, I)`` is i.i.d. over the points, so the density of the
ordered tuple is the same for all ``n!`` orders: it is *exchangeable*.

This is the discrete, coupling construction of an exchangeable flow. Biloš & Günnemann 2021,
"Scalable Normalizing Flows for Permutation Invariant Densities", ICML 2021 (arXiv:2010.03242,
first posted as "Equivariant Normalizing Flows for Point Processes and Sets"), build the same
kind of density from an i.i.d. base and permutation-equivariant maps, but as a *continuous* flow
whose equivariant dynamics have a closed-form trace; here the maps are couplings with a
triangular Jacobian, so the log-determinant is exact and sampling is one inverse pass.

**Units.** :meth:`SetFlow.log_prob` is the density of the points as the ordered tuple they are
stored in (a density on ``R^{nD}``, times ``p(n)``), the same for any order. The density of the
*unordered* set (with respect to the measure that counts each set once rather than its ``n!``
orderings) is ``n!`` times larger, ``log p({x_1, .., x_n}) = log p(X) + log n!``. Bits per point
are ``-log p(X) / (n ln 2)``, and bits per dimension ``-log p(X) / (n D ln 2)``; the training
loss and :mod:`dgm.eval.likelihood` report nats per real point, ``-sum log p(X) / sum n``.

Sampling draws ``n ~ p(n)`` (or takes ``size``), ``z_1 .. z_n ~ N(0, T^2 I)`` i.i.d. (``T`` the
temperature) and inverts the flow; the real points come first, the padding after them at the
origin (:func:`dgm.data.pictures.real_mask`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import real_mask
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, randn, register
from dgm.models.flows import FlowOptions
from dgm.models.refusals import refuse_all_but_points
from dgm.nn.distributions import normal_log_prob
from dgm.nn.flows import Affine, Compose, Elementwise
from dgm.nn.likelihoods import sample_categorical
from dgm.nn.set_flow import PointwiseAffine, SetCoupling, SetTransform
from dgm.nn.splines import RationalQuadraticSpline
from dgm.settings import PositiveFloat, PositiveInt


@dataclass
class SetFlowConfig:
    """Settings of :class:`SetFlow` (``--set model.KEY=VALUE``)."""

    couplings: PositiveInt = 8  # coupling steps (each after an ActNorm); the transformed coordinate alternates
    width: PositiveInt = 64  # embedding size of each coupling's set transformer (a multiple of heads)
    heads: PositiveInt = 4  # attention heads per transformer block
    blocks: PositiveInt = 2  # transformer blocks per coupling
    elementwise: Literal["affine", "spline"] = "spline"  # the map of the transformed coordinate: RealNVP's affine or a rational-quadratic spline
    bins: PositiveInt = 8  # spline: K, bins per spline
    bound: PositiveFloat = 4.0  # spline: B, the splines act on [-B, B] and are the identity outside


@dataclass
class SetSampleOptions(FlowOptions):
    """Options of the set flow's sampler: the flows' temperature, and the size of the sets."""

    size: PositiveInt | None = field(default=None, metadata={
        "help": "points in every sampled set (at most the data's max points); default: drawn from the "
                "learned distribution of sizes"})


@register
class SetFlow(GenerativeModel):
    """An exchangeable flow over point sets: a learned distribution of sizes, and permutation-equivariant
    couplings (set transformers) over an i.i.d. standard normal base (module docstring).

    Example:
        >>> data = dgm.data.load("shapes2d")
        >>> flow = dgm.create("set-flow", data.spec, couplings=4, width=32)
        >>> batch = data.tensors(8)
        >>> flow.log_prob(batch.x, mask=batch.mask)  # exact, nats, (8,)
        >>> flow.sample(4, size=20)  # (4, 64, 2): 20 real points each, then padding at the origin
    """

    name = "set-flow"
    Config = SetFlowConfig
    description = "Exchangeable set flow: permutation-equivariant transformer couplings over point sets (exact NLL)"
    samplers = (Sampler("flow", "a size n ~ p(n), z_1..z_n ~ N(0, T^2 I) i.i.d. through the inverse flow (exact)",
                        SetSampleOptions),)

    @classmethod
    def default_representation(cls, config: SetFlowConfig, spec: DataSpec) -> str:
        refuse_all_but_points(cls.name, spec)
        return "continuous"

    def __init__(self, config: SetFlowConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_all_but_points(self.name, spec)
        c = config
        if c.width % c.heads:
            raise DgmError(f"model.width ({c.width}) must be a multiple of model.heads ({c.heads})")
        self.max_points, self.dims = spec.shape  # N, D
        self.size_logits = nn.Parameter(torch.zeros(self.max_points))  # p(n) over n = 1 .. N, uniform at first
        elementwise: Elementwise = Affine() if c.elementwise == "affine" else \
            RationalQuadraticSpline(bins=c.bins, bound=c.bound)
        layers: list[SetTransform] = []
        for k in range(c.couplings):
            layers += [PointwiseAffine(self.dims),
                       SetCoupling(self.dims, k % self.dims, elementwise, width=c.width, heads=c.heads,
                                   blocks=c.blocks)]
        self.flow = Compose(*layers)

    # --- the density ---------------------------------------------------------------------------------
    def size_log_prob(self, n: Tensor) -> Tensor:
        """log p(n) of set sizes ``n (B,)``; ``-inf`` for an empty set (sizes are 1 .. max_points)."""
        log_p = self.size_logits.log_softmax(0)  # (N,): log p(n = 1 .. N)
        return torch.where(n > 0, log_p[(n - 1).clamp_min(0)], -torch.inf)

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Exact log p(X) in nats, ``(B,)``, of sets ``x (B, N, D)`` whose real points are ``mask
        (B, N)`` (``None``: the points not at the origin), as the ordered tuple of its points, the
        same for every order (module docstring: add ``log n!`` for the unordered set)."""
        if mask is None:
            mask = real_mask(x, self.spec)
        x = x.to(self.size_logits.dtype)
        z, log_abs_det = self.flow(x, mask)  # (B, N, D), (B,)
        base = torch.where(mask, normal_log_prob(z).sum(-1), 0.0).sum(1)  # sum_i log N(z_i; 0, I) over real points
        return self.size_log_prob(mask.sum(1)) + base + log_abs_det

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        mask = real_mask(batch.x, self.spec) if batch.mask is None else batch.mask
        nll_per_point = -self.log_prob(batch.x, mask).sum() / mask.sum()  # nats per real point
        return Loss(nll_per_point, {"nll_per_point": nll_per_point.detach()})

    # --- generation ----------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, size: int | None = None, temperature: float | None = None) -> Tensor:
        """``n`` sets ``(n, max_points, D)``: ``size`` real points each (default: drawn from p(n)),
        ``z ~ N(0, T^2 I)`` through the inverse flow, then zeros as padding."""
        if condition is not None:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (--class)")
        if sampler not in (None, "flow"):
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use --sampler flow")
        N = self.max_points
        ref = self.size_logits
        if size is None:
            sizes = 1 + sample_categorical(ref.expand(n, N), 1, generator)  # (n, 1), by p(n)
        elif not 1 <= size <= N:
            raise DgmError(f"--size {size} does not fit: this model's sets hold 1 to {N} points")
        else:
            sizes = torch.full((n, 1), size, device=ref.device)
        mask = torch.arange(N, device=ref.device) < sizes  # (n, N): the real points first
        z = randn((n, N, self.dims), like=ref, generator=generator) * (1.0 if temperature is None else temperature)
        x, _ = self.flow.inverse(z, mask)
        return torch.where(mask.unsqueeze(-1), x, 0.0)  # padding at the origin
