"""Invertible transforms with the log-determinant of their Jacobian: the networks of normalizing flows.

A :class:`Transform` maps data ``x`` to ``y`` (the *normalizing* direction, towards the base
distribution) and back::

    y, log_abs_det = transform(x)            # log |det dy/dx|, (B,)
    x, log_abs_det = transform.inverse(y)    # log |det dx/dy| = -(the forward one), (B,)

The log-determinant sums over every dimension of one example, so a flow's density is
``log p(x) = log p_base(y) + sum of the forward log-determinants`` (the change of variables;
Dinh et al. 2017, arXiv:1605.08803, eq. 3). ``context`` is an optional conditioning tensor
``(B, ...)`` that conditioners may read (variational dequantization conditions on the image).

*Elementwise* families (:class:`Elementwise`) are the scalar bijections that couplings and
autoregressive transforms apply to each transformed dimension, with parameters computed by a
network from the dimensions it may see: additive (NICE), affine (RealNVP, Glow, MAF, IAF) and
rational-quadratic splines (:mod:`dgm.nn.splines`). Parameters come last: ``params`` has shape
``(*x.shape, P)`` with ``P = params_per_dim``.

The layers of NICE, RealNVP and Glow (Dinh et al. 2015, arXiv:1410.8516; Dinh et al. 2017,
arXiv:1605.08803; Kingma & Dhariwal 2018, arXiv:1807.03039) follow: :class:`ActNorm`,
:class:`InvertibleLinear` (the 1x1 convolution), :class:`Squeeze`, :class:`Logit` preprocessing,
:class:`Permutation` / :class:`Reverse`, and :class:`Coupling` with its masks
(:func:`checkerboard_mask`, :func:`channel_mask`, :func:`alternating_mask`, :func:`half_mask`) and
conditioner networks (:class:`MLPConditioner`, :class:`ConvConditioner`). Every transform acts on
axis 1 of ``(B, D)`` vectors or ``(B, C, H, W)`` images and works in the input's dtype and device.

Nothing here is a probability: the base distribution and the objective live in
:mod:`dgm.models.flows`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.errors import DgmError
from dgm.nn.blocks import MLP, ResidualBlock


class Transform(nn.Module):
    """An invertible map with the log-absolute-determinant of its Jacobian (module docstring)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, log|det dy/dx|)`` with the log-determinant ``(B,)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)`` with the log-determinant ``(B,)``."""
        raise NotImplementedError


class Compose(Transform):
    """Transforms applied one after another; the log-determinants add (the chain rule)."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, log_abs_det = t(x, context)
            total = total + log_abs_det
        return x, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for t in reversed(self.transforms):
            y, log_abs_det = t.inverse(y, context)
            total = total + log_abs_det
        return y, total


class Inverse(Transform):
    """``transform`` run backwards: what was its inverse is now its forward pass. An IAF is the
    inverse of a MAF: one network pass to sample, D passes to evaluate a density (Kingma et al.
    2016, arXiv:1606.04934; Papamakarios et al. 2017, arXiv:1705.07057, section 3.3)."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(y, context)


# --- elementwise bijections with parameters ---------------------------------------------------------
class Elementwise:
    """A family of scalar bijections ``y = f(x; theta)`` applied to every transformed dimension, with
    ``params_per_dim`` parameters each (last axis of ``params``). Returns the log |f'| of every
    element (same shape as ``x``); the caller sums the transformed ones."""

    params_per_dim: int = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Additive(Elementwise):
    """``y = x + t`` (NICE, Dinh et al. 2015, arXiv:1410.8516, eq. 6): volume preserving."""

    params_per_dim = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)


class Affine(Elementwise):
    """``y = x * exp(s) + t`` (RealNVP, Dinh et al. 2017, eq. 7; MAF's ``x = u exp(alpha) + mu`` run
    the other way). The raw log-scale is soft-clamped, ``s = c * tanh(raw / c)``, so a conditioner
    cannot blow a scale up early in training (``c = max_log_scale``; Glow uses a sigmoid for the
    same reason). Parameters: ``(shift, raw log-scale)``."""

    params_per_dim = 2

    def __init__(self, max_log_scale: float = 3.0) -> None:
        self.max_log_scale = max_log_scale

    def log_scale(self, raw: Tensor) -> Tensor:
        c = self.max_log_scale
        return c * torch.tanh(raw / c)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale(params[..., 1])
        return x * torch.exp(s) + params[..., 0], s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale(params[..., 1])
        return (y - params[..., 0]) * torch.exp(-s), -s


class GatedAffine(Elementwise):
    """``y = sigma * x + (1 - sigma) * m`` with ``sigma = sigmoid(s + gate_bias)``: the numerically
    stable IAF step of Kingma et al. 2016 (arXiv:1606.04934, section 4 and algorithm 1, "LSTM-type"
    update), ``log |dy/dx| = log sigma``. ``gate_bias`` starts sigma near 1 (the paper: "+1 or +2"),
    so a conditioner that starts at zero starts each step close to the identity. Parameters:
    ``(m, s)``."""

    params_per_dim = 2

    def __init__(self, gate_bias: float = 2.0) -> None:
        self.gate_bias = gate_bias

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        gate = params[..., 1] + self.gate_bias
        sigma = torch.sigmoid(gate)
        return sigma * x + (1 - sigma) * params[..., 0], F.logsigmoid(gate)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        gate = params[..., 1] + self.gate_bias
        sigma = torch.sigmoid(gate)
        return (y - (1 - sigma) * params[..., 0]) / sigma, -F.logsigmoid(gate)


def sum_per_example(t: Tensor) -> Tensor:
    """``t`` summed over every dimension but the first, ``(B,)``."""
    return t.reshape(t.shape[0], -1).sum(1)



# --- elementwise-free transforms: normalisation, channel mixing, reshaping, preprocessing -----------
def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """Per-channel ``t`` ``(C,)`` shaped ``(1, C, 1, ..., 1)`` to broadcast against ``x`` ``(B, C, *rest)``."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(Transform):
    """Activation normalisation: a per-channel affine map ``y = (x + bias) * exp(log_scale)`` on axis 1
    of ``(B, C)`` vectors or ``(B, C, *rest)`` images (Kingma & Dhariwal 2018, Glow, arXiv:1807.03039,
    section 3.1 and table 1).

    Data-dependent initialisation: the first forward call in training mode sets ``bias = -mean`` and
    ``log_scale = -log(std + 1e-6)`` per channel, over every axis but the channel axis of that batch
    (population std, so a batch of one example gives the floor instead of NaN), which gives that batch
    zero mean and unit variance per channel. The buffer ``initialized`` (saved in the state dict)
    records that it happened, so a loaded model is never initialised again.

    ``log|det dy/dx| = (product of the rest dims) * sum(log_scale)`` for every example (table 1).

    Example:
        >>> norm = ActNorm(3)
        >>> y, log_abs_det = norm(torch.randn(16, 3, 8, 8))  # initialises on this batch
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(channels))  # (C,)
        self.log_scale = nn.Parameter(torch.zeros(channels))  # (C,)
        # a bool, not a float, so .double() leaves it alone; persistent: a loaded model keeps its init
        self.register_buffer("initialized", torch.tensor(False))
        # Python-side cache of "the buffer is known to be set", so training steps read the (device)
        # buffer once instead of syncing with the GPU on every call; forgotten on load_state_dict.
        self._known_initialized = False
        self.register_load_state_dict_post_hook(ActNorm._forget_initialized)

    @staticmethod
    def _forget_initialized(module: nn.Module, incompatible_keys: object) -> None:
        module._known_initialized = False

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Sets ``bias`` and ``log_scale`` so that ``x`` ``(B, C, *rest)`` comes out with zero mean and
        unit variance per channel (Glow section 3.1), and marks the layer initialised."""
        per_channel = x.detach().transpose(0, 1).reshape(self.channels, -1)  # (C, B * prod(rest))
        mean = per_channel.mean(1)
        std = per_channel.std(1, correction=0)  # correction=0: finite for a single value
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"ActNorm({self.channels}) takes (B, {self.channels}, ...) inputs, got {tuple(x.shape)}")

    def _log_abs_det(self, x: Tensor) -> Tensor:
        # every position of the rest dims shares the channel's scale: (prod rest) * sum(log_scale)
        return (math.prod(x.shape[2:]) * self.log_scale.sum()).expand(x.shape[0])  # (B,)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.training and not self._known_initialized:
            if bool(self.initialized):  # loaded or initialised before: read the buffer once
                self._known_initialized = True
            else:
                self.initialize(x)
        y = (x + _channel_view(self.bias, x)) * torch.exp(_channel_view(self.log_scale, x))
        return y, self._log_abs_det(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        x = y * torch.exp(-_channel_view(self.log_scale, y)) - _channel_view(self.bias, y)
        return x, -self._log_abs_det(y)


class InvertibleLinear(Transform):
    """An invertible linear map of the channels, ``y = W x`` on axis 1: a linear layer on ``(B, C)``
    vectors, the invertible 1x1 convolution on ``(B, C, H, W)`` images (a matmul over channels at
    every position). Glow (Kingma & Dhariwal 2018, arXiv:1807.03039, section 3.2, eq. 10) in its LU
    parameterisation::

        W = P L (U + diag(sign(s) * exp(log|s|)))

    with ``P`` a fixed permutation, ``L`` unit lower triangular and ``U`` strictly upper triangular,
    so ``log|det W| = sum(log|s|)`` costs O(C) and ``log|det dy/dx| = (H * W) * sum(log|s|)`` (or
    ``1 * ...`` for vectors). ``W`` starts as a random orthogonal matrix (QR of a Gaussian one, from
    the global RNG), so the layer starts volume preserving. The inverse solves the two triangular
    systems; ``W`` is never inverted.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # (C, C), orthogonal
        p, lower, upper = torch.linalg.lu(w)  # w = p @ lower @ upper
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)  # (C, C), fixed
        self.register_buffer("sign_s", torch.sign(s))  # (C,), fixed: log|s| cannot change a sign
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))  # strictly lower
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(torch.tril(lower, -1))  # (C, C), used strictly lower (unit diagonal)
        self.upper = nn.Parameter(torch.triu(upper, 1))  # (C, C), used strictly upper
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))  # (C,)

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(P, L, U + diag(sign(s) exp(log|s|)))`` of eq. 10, each ``(C, C)``: ``W = P @ L @ U'``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation, lower, upper

    def weight(self) -> Tensor:
        """``W`` ``(C, C)``, so that ``y = W x`` channel-wise."""
        p, lower, upper = self.factors()
        return p @ lower @ upper

    def _log_abs_det(self, x: Tensor) -> Tensor:
        return (math.prod(x.shape[2:]) * self.log_s.sum()).expand(x.shape[0])  # (B,)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # channels last, (B, *rest, C); a row vector times W^T is W times the column vector. Never
        # under autocast: a C x C map is cheap, and in bf16 everything after it would be bf16 too
        with torch.autocast(x.device.type, enabled=False):
            y = (x.movedim(1, -1) @ self.weight().to(x.dtype).T).movedim(-1, 1)
        return y, self._log_abs_det(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p, lower, upper = self.factors()
        rows = y.movedim(1, -1)  # (B, *rest, C)
        shape = rows.shape
        rows = rows.reshape(-1, self.channels)  # (N, C); y_row = x_row U'^T L^T P^T
        rows = rows @ p  # P^T y as rows (P is orthogonal)
        rows = torch.linalg.solve_triangular(lower.T, rows, upper=True, left=False, unitriangular=True)
        rows = torch.linalg.solve_triangular(upper.T, rows, upper=False, left=False)
        x = rows.reshape(shape).movedim(-1, 1)
        return x, -self._log_abs_det(y)


class Squeeze(Transform):
    """Space to depth: ``(B, C, H, W) -> (B, C f^2, H / f, W / f)``, every ``f x f`` patch folded into
    the channels (RealNVP, Dinh et al. 2017, arXiv:1605.08803, section 3.6, figure 3; Glow section 3),
    so that channel couplings can mix neighbouring pixels. A reordering: ``log|det| = 0``."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise DgmError(f"a squeeze factor must be a positive integer, not {factor}: use 2 (RealNVP, Glow)")
        self.factor = factor

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f = self.factor
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise DgmError(
                f"cannot squeeze a {h}x{w} image by {f}: use an image size divisible by {f} "
                "(every level of a multi-scale flow squeezes it once), or fewer levels"
            )
        return F.pixel_unshuffle(x, f), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f = self.factor
        if y.shape[1] % (f * f):
            raise DgmError(f"cannot unsqueeze {y.shape[1]} channels by {f}: the channels must be a multiple of {f * f}")
        return F.pixel_shuffle(y, f), y.new_zeros(y.shape[0])


class Logit(Transform):
    """Logit preprocessing of data in ``[0, 1]`` (RealNVP, Dinh et al. 2017, arXiv:1605.08803,
    section 4.1): the data are squeezed away from the edges, then mapped to the whole real line::

        p = alpha + (1 - 2 alpha) x,    y = log p - log(1 - p)

    ``log|det dy/dx| = sum(log(1 - 2 alpha) - log p - log(1 - p))``. ``alpha = 0`` is the pure
    logit (infinite at 0 and 1); RealNVP uses 0.05.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise DgmError(f"the logit's alpha must be in [0, 0.5), not {alpha}: use 0.05 (RealNVP) or 0 (pure logit)")
        self.alpha = alpha

    def _log_derivative(self, log_p: Tensor, log_1mp: Tensor) -> Tensor:
        return math.log(1 - 2 * self.alpha) - log_p - log_1mp  # (B, ...) elementwise dy/dx

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        return log_p - log_1mp, sum_per_example(self._log_derivative(log_p, log_1mp))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # log p and log(1 - p) as log-sigmoids of y: no cancellation when |y| is large
        log_p, log_1mp = F.logsigmoid(y), F.logsigmoid(-y)
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        return x, -sum_per_example(self._log_derivative(log_p, log_1mp))


class Permutation(Transform):
    """A fixed reordering of axis 1 (vector features or image channels), ``y = x[:, perm]``; NICE and
    RealNVP alternate which half a coupling changes this way (Dinh et al. 2015, arXiv:1410.8516,
    section 3.2). ``log|det| = 0``."""

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"not a permutation of 0..n-1: {perm.tolist()}")
        self.register_buffer("perm", perm)  # (D,)
        self.register_buffer("inverse_perm", torch.argsort(perm))  # (D,)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y.index_select(1, self.inverse_perm), y.new_zeros(y.shape[0])


class Reverse(Permutation):
    """The features (or channels) of axis 1 in reverse order (NICE's and RealNVP's alternation)."""

    def __init__(self, features: int) -> None:
        super().__init__(torch.arange(features - 1, -1, -1))


# --- coupling layers ------------------------------------------------------------------------------
# Masks: True marks the conditioning part that a coupling keeps unchanged.
def _check_parity(parity: int) -> None:
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, not {parity}")


def checkerboard_mask(height: int, width: int, parity: int) -> Tensor:
    """``(1, H, W)`` bool, True where ``(i + j) % 2 == parity``: RealNVP's spatial checkerboard
    (Dinh et al. 2017, arXiv:1605.08803, section 3.4, figure 3)."""
    _check_parity(parity)
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j) % 2 == parity)[None]


def channel_mask(channels: int, parity: int) -> Tensor:
    """``(C, 1, 1)`` bool, True on the first half of the channels for ``parity == 0`` and on the second
    half for ``parity == 1``: RealNVP's channel-wise mask (section 3.4) and Glow's split."""
    _check_parity(parity)
    if channels % 2:
        raise DgmError(
            f"a channel mask splits the channels in halves, but there are {channels}: squeeze the image "
            "first (RealNVP and Glow do) or use a checkerboard mask"
        )
    first = torch.arange(channels) < channels // 2
    return (first if parity == 0 else ~first).view(channels, 1, 1)


def alternating_mask(features: int, parity: int) -> Tensor:
    """``(D,)`` bool, True at the indices ``i`` with ``i % 2 == parity``: NICE's odd/even split of a
    flattened image (Dinh et al. 2015, arXiv:1410.8516, section 5.1)."""
    _check_parity(parity)
    return torch.arange(features) % 2 == parity


def half_mask(features: int, parity: int) -> Tensor:
    """``(D,)`` bool, True on the first ``ceil(D / 2)`` features for ``parity == 0`` and on the other
    ``floor(D / 2)`` for ``parity == 1`` (RealNVP on vectors, eq. 4-5). ``D = 1`` is allowed: one of
    the two couplings then has nothing to condition on, which is still invertible."""
    _check_parity(parity)
    first = torch.arange(features) < (features + 1) // 2
    return first if parity == 0 else ~first


class Coupling(Transform):
    """A coupling layer: the dimensions where ``mask`` is True pass unchanged, the others are mapped by
    ``elementwise`` with parameters that ``conditioner`` computes from the unchanged ones (NICE, Dinh
    et al. 2015, arXiv:1410.8516, eqs. 4-6; RealNVP, Dinh et al. 2017, arXiv:1605.08803, eqs. 4-9)::

        y_kept = x_kept,    y_rest = f(x_rest; conditioner(x_kept, context))

    The Jacobian is triangular, so ``log|det dy/dx|`` is the sum of ``log|f'|`` over the changed
    dimensions, and the inverse is one pass (the conditioner only sees the unchanged part).

    The layout is chosen from the mask's shape:

    * a *split* of axis 1: a ``(D,)`` mask on ``(B, D)`` vectors or a ``(C, 1, 1)`` channel mask on
      ``(B, C, H, W)`` images. The conditioner gets the kept part, ``(B, D_kept)`` or
      ``(B, C_kept, H, W)``, and returns ``(B, D_changed * P)`` or ``(B, C_changed * P, H, W)``,
      channel-major (the ``P`` parameters of one changed channel are adjacent).
    * a *spatial* ``(1, H, W)`` mask (checkerboard) on ``(B, C, H, W)`` images. The conditioner gets
      ``x * mask``, ``(B, C, H, W)``, and returns ``(B, C * P, H, W)``: parameters for every
      position, of which only the masked-out ones are used. A ``(1, 1, 1)`` mask is read as spatial.

    ``P = elementwise.params_per_dim``. The conditioner is always called as ``conditioner(h, context)``.
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, elementwise: Elementwise) -> None:
        super().__init__()
        if mask.dtype != torch.bool:
            raise ValueError(f"a coupling mask must be a bool tensor (True = kept), not {mask.dtype}")
        self.conditioner = conditioner
        self.elementwise = elementwise
        self.layout: Literal["split", "spatial"]
        if mask.dim() == 3 and mask.shape[0] == 1:
            self.layout = "spatial"
            self.register_buffer("mask", mask.clone())  # (1, H, W)
        elif mask.dim() == 1 or (mask.dim() == 3 and mask.shape[1:] == (1, 1)):
            self.layout = "split"
            flat = mask.reshape(-1)
            self.register_buffer("mask", mask.clone())  # (D,) or (C, 1, 1)
            self.register_buffer("kept", torch.nonzero(flat).view(-1))  # indices on axis 1
            self.register_buffer("changed", torch.nonzero(~flat).view(-1))
        else:
            raise ValueError(
                f"a coupling mask has shape (D,) for vectors, (C, 1, 1) for channels or (1, H, W) for a "
                f"checkerboard, not {tuple(mask.shape)}"
            )

    def _params(self, h: Tensor, context: Tensor | None, channels: int) -> Tensor:
        """The conditioner's output ``(B, channels * P, *rest)`` as ``(B, channels, *rest, P)``."""
        p = self.elementwise.params_per_dim
        out = self.conditioner(h, context)
        if out.shape[1] != channels * p:
            raise ValueError(
                f"the conditioner returned {out.shape[1]} channels, but this coupling needs {channels} x "
                f"{p} (changed channels x params per dimension)"
            )
        # in the data's dtype: under bf16 autocast the network runs in bf16, but the bijection and its
        # log-determinant (a sum over every dimension) stay in float32
        return out.unflatten(1, (channels, p)).movedim(2, -1).to(h.dtype)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        f = self.elementwise.inverse if inverse else self.elementwise.forward
        if self.layout == "split":
            h = x.index_select(1, self.kept)  # (B, D_kept) or (B, C_kept, H, W)
            params = self._params(h, context, len(self.changed))  # (B, D_changed, P) or (B, C_ch, H, W, P)
            y_changed, log_d = f(x.index_select(1, self.changed), params)
            return x.index_copy(1, self.changed, y_changed), sum_per_example(log_d)
        params = self._params(x * self.mask, context, x.shape[1])  # (B, C, H, W, P)
        y_all, log_d = f(x, params)  # every position; the kept ones are thrown away
        y = torch.where(self.mask, x, y_all)
        return y, sum_per_example(torch.where(self.mask, torch.zeros_like(log_d), log_d))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, context, inverse=True)


# --- conditioners: the networks that compute a coupling's parameters ------------------------------
def _zero_(layer: nn.Linear | nn.Conv2d) -> None:
    # a zero last layer makes a fresh Additive/Affine coupling the identity (Glow section 3.3)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _require_context(context: Tensor | None, size: int, kind: str) -> Tensor:
    if context is None:
        raise ValueError(f"this conditioner was built for {size} context {kind}: pass a context")
    return context


class MLPConditioner(nn.Module):
    """A Linear-ReLU stack for couplings of vectors (NICE, Dinh et al. 2015, arXiv:1410.8516,
    section 5.1), its last layer zero-initialised so a fresh coupling is the identity (Glow,
    arXiv:1807.03039, section 3.3).

    Input ``(B, in_features)`` and, when ``context_features > 0``, a context ``(B, context_features)``
    (any ``(B, ...)`` is flattened) concatenated to it; output ``(B, out_features)``. A conditioner
    built with ``context_features = 0`` ignores any context, so conditional and unconditional
    couplings can share one :class:`Compose`.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int,
                 context_features: int = 0) -> None:
        super().__init__()
        self.context_features = context_features
        self.net = MLP(in_features + context_features, hidden, out_features, activation=nn.ReLU)
        _zero_(self.net[-1])

    def forward(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            h = torch.cat([h, _require_context(context, self.context_features, "features").flatten(1)], 1)
        return self.net(h)  # (B, out_features)


class ConvConditioner(nn.Module):
    """Glow's coupling network NN() (Kingma & Dhariwal 2018, arXiv:1807.03039, section 3.3): conv3x3
    ReLU conv1x1 ReLU, then ``blocks`` residual blocks (RealNVP's, Dinh et al. 2017, section 4.1),
    then a zero-initialised conv3x3, so a fresh coupling is the identity. Padding keeps ``H, W``.

    Input ``(B, in_channels, H, W)`` and, when ``context_channels > 0``, a context
    ``(B, context_channels, H, W)`` concatenated to its channels; output ``(B, out_channels, H, W)``.
    A conditioner built with ``context_channels = 0`` ignores any context.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, *, blocks: int = 0,
                 context_channels: int = 0) -> None:
        super().__init__()
        self.context_channels = context_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + context_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            *[ResidualBlock(width, activation=nn.ReLU, zero_init=False) for _ in range(blocks)],
            nn.Conv2d(width, out_channels, 3, padding=1),
        )
        _zero_(self.net[-1])

    def forward(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_channels:
            h = torch.cat([h, _require_context(context, self.context_channels, "channels")], 1)
        return self.net(h)  # (B, out_channels, H, W)
