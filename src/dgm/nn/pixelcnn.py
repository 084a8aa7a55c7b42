"""Masked convolutions and the convolutional autoregressive networks built from them: PixelCNN and
Gated PixelCNN. Networks only: shapes in, shapes out, no probability (the likelihood of the outputs
is :mod:`dgm.nn.likelihoods`).

van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759
(PixelCNN, sections 3.4-3.5). An image is ordered pixel by pixel in raster order and, within a
pixel, channel by channel (R, then G, then B)::

    p(x) = prod_i p(x_i | x_1 .. x_{i-1})                                          (eq. 1)
    p(x_i | x_<i) = p(x_{i,R} | x_<i) p(x_{i,G} | x_<i, x_{i,R}) p(x_{i,B} | x_<i, x_{i,R}, x_{i,G})   (eq. 2)

A masked convolution zeroes the kernel weights that would let output position (i, j) see pixels
after it (the rest of row i, and the rows below), and, at the centre tap, splits the feature maps
into ``groups`` contiguous blocks (one per data channel) so that

* mask ``A`` (the first layer): block g of the output sees blocks ``< g`` of the input at (i, j);
* mask ``B`` (every later layer): block g sees blocks ``<= g`` at (i, j).

With one data channel (``groups=1``) mask A hides the centre pixel and mask B shows it. Feature
maps, inputs and outputs all use the same contiguous-block layout, so the output of a network laid
out channel-major, ``(B, C * P, H, W)`` viewed as ``(B, C, P, H, W)``, has data channel c in block c
(the layout of :mod:`dgm.nn.likelihoods`): output block c at (i, j) depends on every channel of the
pixels before (i, j) and on channels ``< c`` of (i, j) itself.

* :class:`PixelCNNNetwork`: a 7x7 mask-A convolution, residual blocks of masked 3x3 convolutions
  (figure 5), and a 1x1 output head. Stacked masked 3x3 kernels never reach the pixels up and to
  the right beyond a diagonal: the *blind spot* (van den Oord et al. 2016b, figure 1).
* :class:`GatedPixelCNNNetwork`: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves &
  Kavukcuoglu 2016, "Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328,
  section 2.2 and figure 2. A vertical stack sees all of the rows above, a horizontal stack the
  pixels to the left in the row, and the vertical stack feeds the horizontal one: no blind spot.
  Every layer is gated, with an optional conditioning vector ``h``::

      y = tanh(W_{k,f} * x + V_{k,f}^T h) ⊙ sigmoid(W_{k,g} * x + V_{k,g}^T h)      (eq. 2; eq. 4 with h)

Both take the image scaled to [-1, 1] ``(B, C, H, W)`` of any size and return ``(B, out_channels,
H, W)``, ``out_channels`` a multiple of ``C``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def channel_block_mask(out_channels: int, in_channels: int, groups: int, *, include_centre: bool) -> Tensor:
    """``(out, in)`` booleans: true where output channel o may see input channel i at the centre tap,
    with both split into ``groups`` contiguous blocks: block(o) > block(i), or >= with
    ``include_centre`` (mask B)."""
    if out_channels % groups or in_channels % groups:
        raise ValueError(f"channels ({in_channels} in, {out_channels} out) must be multiples of the {groups} groups")
    block_out = torch.arange(out_channels) // (out_channels // groups)
    block_in = torch.arange(in_channels) // (in_channels // groups)
    return block_out[:, None] >= block_in[None, :] if include_centre else block_out[:, None] > block_in[None, :]


class MaskedConv2d(nn.Conv2d):
    """A ``kernel_size x kernel_size`` convolution (``kernel_size`` odd, same padding) masked so that
    output (i, j) sees only the pixels before (i, j) in raster order, and at (i, j) itself only the
    channel blocks that come before (mask ``A``) or up to (mask ``B``) its own.

    Args:
        mask_type: ``"A"`` for the first layer (sees no part of the pixel's own value beyond the
            earlier channels), ``"B"`` for the rest.
        groups: the number of data channels whose order is kept (``C``); not ``nn.Conv2d``'s groups.
        kernel: ``(kh, kw)`` instead of a square ``kernel_size`` (e.g. the Row LSTM's ``(1, 3)``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: Literal["A", "B"], *,
                 groups: int = 1, kernel: tuple[int, int] | None = None, bias: bool = True) -> None:
        kh, kw = kernel or (kernel_size, kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"masked convolutions need odd kernel sizes, got {kh}x{kw}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        mask = torch.ones(out_channels, in_channels, kh, kw, dtype=torch.bool)
        mask[:, :, kh // 2, kw // 2 + 1:] = False  # the rest of the centre row
        mask[:, :, kh // 2 + 1:] = False  # the rows below
        mask[:, :, kh // 2, kw // 2] = channel_block_mask(out_channels, in_channels, groups,
                                                          include_centre=mask_type == "B")
        self.mask_type = mask_type
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask.to(self.weight.dtype), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}"


# --- shared by both networks ------------------------------------------------------------------------
def _check_sizes(channels: int, out_channels: int, width: int, layers: int, condition_dim: int) -> None:
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if out_channels < channels or out_channels % channels:
        raise ValueError(f"out_channels ({out_channels}) must be a multiple of channels ({channels}): "
                         "the output holds the same number of parameters for every data channel")
    if width % channels:
        raise ValueError(f"width ({width}) must be a multiple of channels ({channels}): the features are "
                         f"split into one block per colour (e.g. {-(-width // channels) * channels})")
    if layers < 0:
        raise ValueError(f"layers must be non-negative, got {layers}")
    if condition_dim < 0:
        raise ValueError(f"condition_dim must be non-negative (0: unconditional), got {condition_dim}")


def _check_condition(h: Tensor | None, condition_dim: int, batch: int) -> None:
    if condition_dim and h is None:
        raise ValueError(f"this network is conditional (condition_dim={condition_dim}): pass h of shape "
                         f"(B, {condition_dim})")
    if not condition_dim and h is not None:
        raise ValueError("this network is unconditional (condition_dim=0): call it without h, or build "
                         "it with condition_dim set")
    if h is not None and h.shape != (batch, condition_dim):
        raise ValueError(f"h must have shape (B, condition_dim) = ({batch}, {condition_dim}), got {tuple(h.shape)}")


def _as_bias(projection: nn.Linear | None, h: Tensor | None) -> Tensor | float:
    """The learned projection ``V^T h`` as a per-channel bias ``(B, n, 1, 1)`` (0 when unconditional)."""
    return 0.0 if projection is None else projection(h)[:, :, None, None]


def _output_head(in_features: int, hidden: int, out_channels: int, channels: int) -> nn.Sequential:
    """ReLU, 1x1, ReLU, 1x1 to ``out_channels``: mask-B 1x1 convolutions, so the colour blocks stay
    in order up to the channel-major output."""
    return nn.Sequential(
        nn.ReLU(), MaskedConv2d(in_features, hidden, 1, "B", groups=channels),
        nn.ReLU(), MaskedConv2d(hidden, out_channels, 1, "B", groups=channels),
    )


# --- PixelCNN (van den Oord et al. 2016a, section 3.5, figure 5) ------------------------------------
class PixelCNNResidualBlock(nn.Module):
    """Figure 5 of arXiv:1601.06759 (right): ``x + 1x1(ReLU(3x3(ReLU(1x1(ReLU(x))))))`` with ``2h``
    features outside and ``h`` inside, every convolution mask B, and the conditioning ``V^T h``
    added to the 3x3 convolution's output. Input and output ``(B, 2 width, H, W)``."""

    def __init__(self, width: int, *, channels: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.reduce = MaskedConv2d(2 * width, width, 1, "B", groups=channels)
        self.conv = MaskedConv2d(width, width, 3, "B", groups=channels)
        self.expand = MaskedConv2d(width, 2 * width, 1, "B", groups=channels)
        self.condition = nn.Linear(condition_dim, width) if condition_dim else None

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        y = self.conv(F.relu(self.reduce(F.relu(x)))) + _as_bias(self.condition, h)  # (B, width, H, W)
        return x + self.expand(F.relu(y))  # (B, 2 width, H, W)


class PixelCNNNetwork(nn.Module):
    """PixelCNN: van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks",
    arXiv:1601.06759, section 3.5 and figure 5.

    A 7x7 mask-A convolution to ``2 width`` features, ``layers`` residual blocks
    (:class:`PixelCNNResidualBlock`), then ReLU, 1x1, ReLU, 1x1 to ``out_channels``; every
    convolution is masked with one block per data channel (eq. 2's R -> G -> B order). With
    ``condition_dim > 0`` a learned projection of ``h (B, condition_dim)`` is added as a per-channel
    bias after the first convolution and in every residual block (the conditional PixelCNN of van
    den Oord et al. 2016b, arXiv:1606.05328, eq. 4, without the gates). The receptive field has a
    blind spot up and to the right; :class:`GatedPixelCNNNetwork` has none.

    Args:
        channels: data channels ``C`` of the image.
        out_channels: outputs per pixel, a multiple of ``C`` laid out channel-major (block c holds
            data channel c's parameters).
        width: ``h`` of figure 5, a multiple of ``C`` (one block of features per colour); the
            residual stream has ``2 width`` features.
        layers: residual blocks.
        condition_dim: features of the conditioning vector ``h`` (0: unconditional).

    Example:
        >>> net = PixelCNNNetwork(3, 3 * 256, width=33, layers=2)
        >>> net(torch.rand(4, 3, 8, 8) * 2 - 1).shape
        torch.Size([4, 768, 8, 8])
    """

    def __init__(self, channels: int, out_channels: int, *, width: int = 64, layers: int = 7,
                 condition_dim: int = 0) -> None:
        super().__init__()
        _check_sizes(channels, out_channels, width, layers, condition_dim)
        self.condition_dim = condition_dim
        self.input = MaskedConv2d(channels, 2 * width, 7, "A", groups=channels)
        self.condition = nn.Linear(condition_dim, 2 * width) if condition_dim else None
        self.blocks = nn.ModuleList(PixelCNNResidualBlock(width, channels=channels, condition_dim=condition_dim)
                                    for _ in range(layers))
        self.head = _output_head(2 * width, 2 * width, out_channels, channels)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        _check_condition(h, self.condition_dim, x.shape[0])
        y = self.input(x) + _as_bias(self.condition, h)  # (B, 2 width, H, W)
        for block in self.blocks:
            y = block(y, h)
        return self.head(y)  # (B, out_channels, H, W)


# --- Gated PixelCNN (van den Oord et al. 2016b, section 2.2, figure 2) ------------------------------
def _gate(x: Tensor) -> Tensor:
    """The gated activation ``tanh(f) ⊙ sigmoid(g)`` (eq. 2) of ``x = [f, g]`` ``(B, 2 n, H, W)``:
    ``(B, n, H, W)``."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def _shift_down(x: Tensor) -> Tensor:
    """Row i takes row i - 1's values (zeros in row 0): ``(B, C, H, W)`` in and out."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedPixelCNNLayer(nn.Module):
    """One layer of figure 2 of arXiv:1606.05328: a gated vertical and a gated horizontal stack.

    * The vertical stack convolves a ``(k//2 + 1) x k`` window over rows ``i - k//2 .. i``, all of
      the current row included (it pads ``k//2`` rows on top and none below). Its feature at row i
      has therefore seen row i, and reaches the horizontal stack only shifted down one row: the
      horizontal stack at row i receives the vertical features of row ``i - 1``, which have seen
      exactly the rows above i, at every column within reach, so no part of the current row leaks
      and no pixel up and to the right is left out.
    * The horizontal stack convolves a ``1 x k`` masked kernel (only the left half and the centre
      are live) with one block per data channel: mask A in the first layer, so that colour c does
      not see its own value, mask B after; the filter and the gate are two convolutions, so that
      both keep the colour blocks of the gated output. It adds the 1x1 link from the shifted
      vertical stack before the gate, a 1x1 after it, and its input (the residual connection,
      from the second layer on), and gives the gated features to a 1x1 skip connection.

    Inputs ``vertical`` ``(B, in_channels, H, W)``, ``horizontal`` the same, ``h`` ``(B,
    condition_dim)`` or None; outputs the two stacks ``(B, width, H, W)`` and the skip ``(B, width,
    H, W)``. The ``last`` layer outputs its skip only (None for the stacks, which nothing would
    read), so that every parameter gets a gradient.
    """

    def __init__(self, in_channels: int, width: int, *, channels: int, kernel_size: int, first: bool,
                 last: bool = False, condition_dim: int = 0) -> None:
        super().__init__()
        k = kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the horizontal kernel is centred), got {k}")
        mask = "A" if first else "B"
        self.kernel_size, self.first, self.last = k, first, last
        self.vertical = nn.Conv2d(in_channels, 2 * width, (k // 2 + 1, k))  # filter and gate, (B, 2 width, H, W)
        self.vertical_to_horizontal = nn.Conv2d(2 * width, 2 * width, 1)
        self.horizontal_filter = MaskedConv2d(in_channels, width, k, mask, groups=channels, kernel=(1, k))
        self.horizontal_gate = MaskedConv2d(in_channels, width, k, mask, groups=channels, kernel=(1, k))
        self.horizontal_out = None if last else MaskedConv2d(width, width, 1, "B", groups=channels)
        self.skip = MaskedConv2d(width, width, 1, "B", groups=channels)
        # V^T h of eq. 4 for each stack's filter and gate
        self.condition_vertical = nn.Linear(condition_dim, 2 * width) if condition_dim and not last else None
        self.condition_horizontal = nn.Linear(condition_dim, 2 * width) if condition_dim else None

    def forward(self, vertical: Tensor, horizontal: Tensor,
                h: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor]:
        k = self.kernel_size
        # F.pad's order is (left, right, top, bottom): rows i - k//2 .. i, columns j - k//2 .. j + k//2
        v = self.vertical(F.pad(vertical, (k // 2, k // 2, k // 2, 0)))  # (B, 2 width, H, W): [f, g]
        # the shift: row i of the link carries the vertical features of row i - 1, which have seen
        # the rows above i and nothing of row i
        link = self.vertical_to_horizontal(_shift_down(v))  # (B, 2 width, H, W)
        pre = torch.cat([self.horizontal_filter(horizontal), self.horizontal_gate(horizontal)], dim=1)
        gated = _gate(pre + link + _as_bias(self.condition_horizontal, h))  # (B, width, H, W)
        skip = self.skip(gated)
        if self.last:
            return None, None, skip

        vertical_out = _gate(v + _as_bias(self.condition_vertical, h))  # (B, width, H, W)
        out = self.horizontal_out(gated)
        # the first layer's input is the image, of another width: no residual connection there
        horizontal_out = out if self.first else horizontal + out
        return vertical_out, horizontal_out, skip


class GatedPixelCNNNetwork(nn.Module):
    """Gated PixelCNN: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016,
    "Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328, section 2.2, figure 2.

    ``layers`` :class:`GatedPixelCNNLayer` (the first masked A, the rest B) whose skip connections
    are summed and go through ReLU, 1x1, ReLU, 1x1 to ``out_channels``. Gated activations (eq. 2),
    conditioned on ``h`` when ``condition_dim > 0`` (eq. 4). The vertical stack removes PixelCNN's
    blind spot: once ``layers * (kernel_size // 2) >= max(W - 1, H - 2)`` every earlier pixel of an
    ``H x W`` image reaches every output.

    Args:
        channels: data channels ``C`` of the image.
        out_channels: outputs per pixel, a multiple of ``C`` laid out channel-major (block c holds
            data channel c's parameters).
        width: features of each stack (``p`` in the paper's figure 2), a multiple of ``C`` (one
            block of features per colour).
        layers: gated layers (at least 1).
        kernel_size: ``n`` of figure 2, odd: the vertical stack's ``(n//2 + 1) x n`` and the
            horizontal stack's ``1 x (n//2 + 1)`` live windows.
        condition_dim: features of the conditioning vector ``h`` (0: unconditional).

    Example:
        >>> net = GatedPixelCNNNetwork(1, 2, width=16, layers=3, condition_dim=10)
        >>> net(torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 10)).shape
        torch.Size([4, 2, 28, 28])
    """

    def __init__(self, channels: int, out_channels: int, *, width: int = 64, layers: int = 10,
                 kernel_size: int = 5, condition_dim: int = 0) -> None:
        super().__init__()
        _check_sizes(channels, out_channels, width, layers, condition_dim)
        if layers < 1:
            raise ValueError("a gated PixelCNN needs at least one layer (the first, mask A, reads the image)")
        self.condition_dim = condition_dim
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(channels if i == 0 else width, width, channels=channels, kernel_size=kernel_size,
                               first=i == 0, last=i == layers - 1, condition_dim=condition_dim)
            for i in range(layers)
        )
        self.head = _output_head(width, width, out_channels, channels)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        _check_condition(h, self.condition_dim, x.shape[0])
        vertical, horizontal, skips = x, x, 0.0
        for layer in self.layers:
            vertical, horizontal, skip = layer(vertical, horizontal, h)  # (B, width, H, W) each
            skips = skips + skip
        return self.head(skips)  # (B, out_channels, H, W)
