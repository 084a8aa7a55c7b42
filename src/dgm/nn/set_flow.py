"""Invertible maps of point sets that commute with permutations: the networks of an exchangeable flow.

A set of ``n`` points in ``R^D`` is held padded to ``N >= n`` slots, ``x (B, N, D)``, with ``mask
(B, N)`` True at the real points (anywhere among the slots). A :class:`SetTransform` maps the real
points and leaves the padding exactly as it is::

    y, log_abs_det = transform(x, mask)          # log |det dy/dx| over the real points, (B,)
    x, log_abs_det = transform.inverse(y, mask)  # log |det dx/dy| = -(the forward one), (B,)

Every transform here is permutation-equivariant: permuting the real points (or all the slots
together with the mask) permutes the output the same way and leaves the log-determinant unchanged.
Stacked over an i.i.d. base, they give a density that is the same for every order of the points
(the process and the references are in :mod:`dgm.models.set_flow`).

* :class:`SetCoupling` (a coupling layer for sets; Dinh et al. 2017, arXiv:1605.08803, eqs. 4-7,
  across the points instead of within one vector): coordinate ``d`` of every real point is mapped
  by an elementwise bijection (:class:`~dgm.nn.flows.Elementwise`) whose parameters a transformer
  computes from the *other* coordinates of all the real points (:class:`SetConditioner`). Ordering
  the variables as (every other coordinate, then every coordinate ``d``), the Jacobian is block
  triangular with a diagonal lower block, so ``log |det| = sum_i log |f'(x_id)|`` and the inverse
  is one pass.
* :class:`PointwiseAffine`: one affine map per coordinate shared by all the points, with Glow's
  data-dependent initialisation (ActNorm; Kingma & Dhariwal 2018, arXiv:1807.03039, section 3.1)
  on the real points of the first training batch; ``log |det| = n sum_d s_d``.

Shapes in, shapes out: nothing here is a probability.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.nn.flows import Elementwise, Transform
from dgm.nn.transformer import MLP

ACTNORM_MIN_STD = 1e-6  # floor of a coordinate's standard deviation at initialisation (a constant coordinate)


# --- the equivariant conditioner ---------------------------------------------------------------------
def visible_keys(mask: Tensor) -> Tensor:
    """The keys each query of a set may attend to, ``(B, N)`` bool: its real points. A set without a
    real point sees all its slots instead, since a softmax over no key is 0/0 = NaN; its outputs
    belong to padding only and are never used."""
    return mask | ~mask.any(1, keepdim=True)


class SetAttention(nn.Module):
    """Multi-head self-attention among the real points of each set (Vaswani et al. 2017,
    arXiv:1706.03762, eq. 1), without positional encodings, so it is permutation-equivariant."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads}): set width = heads * head_dim")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # queries, keys and values of all heads in one matmul
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor, keys: Tensor) -> Tensor:
        """``h (B, N, width)``, ``keys (B, N)`` bool (:func:`visible_keys`) to ``(B, N, width)``."""
        B, N, width = h.shape
        qkv = self.qkv(h).view(B, N, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, N, head_dim) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])  # padding keys never seen
        return self.proj(y.transpose(1, 2).reshape(B, N, width))


class SetBlock(nn.Module):
    """A pre-LayerNorm transformer block over the points of a set: attention, then a point-wise MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SetAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, h: Tensor, keys: Tensor) -> Tensor:
        h = h + self.attn(self.ln_1(h), keys)
        return h + self.mlp(self.ln_2(h))  # (B, N, width)


class SetConditioner(nn.Module):
    """A permutation-equivariant network from per-point features to per-point outputs: a linear
    embedding, ``blocks`` transformer blocks in which each point attends to the real points of its
    set, and a zero-initialised output layer (so a fresh coupling is the identity map).

    Args:
        in_features: features per point.
        out_features: outputs per point.
        width: the embedding size (a multiple of ``heads``).
        heads: attention heads per block.
        blocks: transformer blocks.

    Example::

        net = SetConditioner(1, 23, width=64, heads=4, blocks=2)
        out = net(torch.randn(8, 64, 1), mask)   # (8, 64, 23); rows of padding points are junk
    """

    def __init__(self, in_features: int, out_features: int, *, width: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(SetBlock(width, heads) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h (B, N, in_features)``, ``mask (B, N)`` to ``(B, N, out_features)``. The outputs of the
        real points depend on the real points only; those of padding points are finite but arbitrary."""
        keys = visible_keys(mask)
        h = self.embed(h)  # (B, N, width)
        for block in self.blocks:
            h = block(h, keys)
        return self.out(self.ln_f(h))


# --- invertible maps of sets -------------------------------------------------------------------------
class SetTransform(Transform):
    """An invertible map of the real points of padded sets, with its log-determinant (module
    docstring); the padding passes unchanged and is left out of the log-determinant. The padding
    mask takes the place of a transform's context, so :class:`~dgm.nn.flows.Compose` chains set
    transforms too."""

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dx|)`` of ``x (B, N, D)`` with ``mask (B, N)``; the log-determinant ``(B,)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)``; the log-determinant ``(B,)``."""
        raise NotImplementedError


class SetCoupling(SetTransform):
    """Coordinate ``transformed`` of every real point mapped by ``elementwise``, its parameters
    computed by a :class:`SetConditioner` from the other ``dims - 1`` coordinates of all the real
    points of the set (module docstring).

    Args:
        dims: coordinates per point, ``D >= 2``.
        transformed: the coordinate this layer maps, in ``0 .. D - 1``.
        elementwise: the scalar bijection family (:class:`~dgm.nn.flows.Affine`,
            :class:`~dgm.nn.splines.RationalQuadraticSpline`, ...).
        width, heads, blocks: of the conditioner.
    """

    def __init__(self, dims: int, transformed: int, elementwise: Elementwise, *, width: int, heads: int,
                 blocks: int) -> None:
        super().__init__()
        if dims < 2:
            raise ValueError(f"a coupling needs at least 2 coordinates per point, got {dims}")
        if not 0 <= transformed < dims:
            raise ValueError(f"transformed must be in 0 .. {dims - 1}, got {transformed}")
        self.dims, self.transformed, self.elementwise = dims, transformed, elementwise
        self.conditioner = SetConditioner(dims - 1, elementwise.params_per_dim, width=width, heads=heads,
                                          blocks=blocks)

    def params(self, x: Tensor, mask: Tensor) -> Tensor:
        """The elementwise parameters of every point, ``(B, N, P)``, from the coordinates it keeps."""
        d = self.transformed
        kept = torch.cat([x[..., :d], x[..., d + 1:]], -1)  # (B, N, D - 1)
        return self.conditioner(kept, mask).to(x.dtype)  # the bijection in the data's dtype under autocast

    def couple(self, x: Tensor, mask: Tensor, *, inverse: bool) -> tuple[Tensor, Tensor]:
        d = self.transformed
        params = self.params(x, mask)  # the same in both directions: it reads only unchanged coordinates
        xd = x[..., d]  # (B, N)
        yd, log_derivative = (self.elementwise.inverse if inverse else self.elementwise.forward)(xd, params)
        yd = torch.where(mask, yd, xd)  # padding passes unchanged
        log_abs_det = torch.where(mask, log_derivative, 0.0).sum(1)  # (B,): the real points only
        return torch.cat([x[..., :d], yd.unsqueeze(-1), x[..., d + 1:]], -1), log_abs_det

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.couple(x, mask, inverse=False)

    def inverse(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.couple(y, mask, inverse=True)


class PointwiseAffine(SetTransform):
    """``y = x exp(s) + t`` for every real point, ``s, t (D,)`` shared by all the points: ActNorm for
    sets. The first forward pass in training mode sets ``s`` and ``t`` so that the real points of
    that batch have zero mean and unit variance in every coordinate (Glow's data-dependent
    initialisation); until then, and in evaluation mode before it, the map is the identity.

    Args:
        dims: coordinates per point.
    """

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dims))  # s
        self.shift = nn.Parameter(torch.zeros(dims))  # t
        # saved with the weights, so a loaded or resumed model is not initialised again
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._known_initialized = False  # the buffer read once, so training steps do not sync with the device

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded flag is read again on the next training step

    @torch.no_grad()
    def initialize(self, x: Tensor, mask: Tensor) -> None:
        """Set ``s, t`` from the real points of ``x (B, N, D)``: zero mean, unit variance after the map."""
        real = x[mask]  # (points, D)
        if len(real) < 2:
            return  # no spread to standardise by: wait for a batch with points
        mean, std = real.mean(0), real.std(0).clamp_min(ACTNORM_MIN_STD)
        self.log_scale.copy_(-std.log())
        self.shift.copy_(-mean / std)
        self.initialized.fill_(True)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._known_initialized:
            if not self.initialized:
                self.initialize(x, mask)
            self._known_initialized = bool(self.initialized)
        y = torch.where(mask.unsqueeze(-1), x * self.log_scale.exp() + self.shift, x)
        return y, mask.sum(1).to(x.dtype) * self.log_scale.sum()

    def inverse(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.where(mask.unsqueeze(-1), (y - self.shift) * (-self.log_scale).exp(), y)
        return x, -mask.sum(1).to(y.dtype) * self.log_scale.sum()
