"""The Row LSTM network of PixelRNN: an image model whose state runs down the rows.

van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759,
sections 3.1 (Row LSTM), 3.3 (residual connections) and 3.4 (masks).

A Row LSTM layer processes the image one row at a time, top to bottom. Row i's four gates come from
two convolutions, an input-to-state ``K^is`` over the layer's input row ``x_i`` and a state-to-state
``K^ss`` over the previous row's hidden state ``h_{i-1}`` (eq. 3)::

    [o_i, f_i, i_i, g_i] = sigma(K^ss ⊛ h_{i-1} + K^is ⊛ x_i)
    c_i = f_i ⊙ c_{i-1} + i_i ⊙ g_i
    h_i = o_i ⊙ tanh(c_i)

with sigma the sigmoid for the output, forget and input gates ``o, f, i`` and tanh for the content
``g``; ``h_{-1} = c_{-1} = 0``. ``K^is`` is a ``1 x 3`` convolution with mask B (pixel (i, j) sees
(i, j - 1), and at (i, j) only the colour blocks up to its own); it does not depend on the state, so
it is computed for all rows at once before the loop. ``K^ss`` is a width-3 1-D convolution along the
previous row: that whole row is in the past, so it needs no mask and may mix all colour blocks.

The state of one layer at (i, j) thus sees a triangle above the pixel (row i - 1 from j - 1 to
j + 1, row i - 2 from j - 2 to j + 2, ...), and of the current row only (i, j - 1): the Row LSTM
misses some pixels to the left of the current one (section 3.1), which the first ``7 x 7`` mask-A
convolution and each further layer's ``1 x 3`` partly recover. Layers are stacked with residual
connections (section 3.3), and two ``1 x 1`` mask-B convolutions read out per-pixel parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dgm.nn.pixelcnn import MaskedConv2d

FIRST_KERNEL = 7  # the first layer's mask-A convolution, as in PixelRNN's table 4
ROW_KERNEL = 3  # k of K^is (1 x k) and K^ss (width k): 3 in the paper
GATES = 4  # o, f, i, g of eq. 3


class RowLSTM(nn.Module):
    """One Row LSTM layer (eq. 3) with its residual connection (section 3.3): returns
    ``x + conv_1x1(h)``, where ``h`` are the layer's hidden states, ``(B, width, H, W)``.

    The ``width`` hidden units are split into ``groups`` contiguous colour blocks (one per data
    channel, the layout of :class:`~dgm.nn.pixelcnn.MaskedConv2d`); block g at (i, j) sees the
    input's blocks ``<= g`` at (i, j) and anything before (i, j).

    Args:
        width: feature maps of the input, the hidden state and the output.
        groups: data channels ``C`` whose order the masks keep; ``width`` must be a multiple.
        condition_dim: size of a conditioning vector ``h`` whose linear projection is added to the
            gates at every pixel (0 for none).
    """

    def __init__(self, width: int, *, groups: int = 1, condition_dim: int = 0) -> None:
        super().__init__()
        self.width, self.groups = width, groups
        self.input_to_state = MaskedConv2d(width, GATES * width, 1, "B", groups=groups,
                                           kernel=(1, ROW_KERNEL))  # K^is
        # K^ss: its bias would duplicate K^is's
        self.state_to_state = nn.Conv1d(width, GATES * width, ROW_KERNEL, padding=ROW_KERNEL // 2, bias=False)
        self.condition = nn.Linear(condition_dim, GATES * width) if condition_dim else None
        self.residual = MaskedConv2d(width, width, 1, "B", groups=groups)

    def split_gates(self, gates: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(B, 4 * width, W)`` -> o, f, i, g, each ``(B, width, W)``.

        The gate maps are laid out colour block by colour block (block, gate, unit), not gate by
        gate: MaskedConv2d cuts its ``4 * width`` outputs into ``groups`` contiguous blocks, and the
        four gates of hidden unit k must all lie in the block of unit k.
        """
        B, _, W = gates.shape
        per_gate = gates.view(B, self.groups, GATES, self.width // self.groups, W).unbind(2)
        o, f, i, g = (gate.reshape(B, self.width, W) for gate in per_gate)
        return o, f, i, g

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        B, _, H, W = x.shape  # (B, width, H, W)
        input_gates = self.input_to_state(x)  # K^is ⊛ x_i for every row at once, (B, 4 * width, H, W)
        if (self.condition is None) != (h is None):
            raise ValueError("pass h exactly when the layer was built with condition_dim > 0")
        if self.condition is not None:
            input_gates = input_gates + self.condition(h)[:, :, None, None]
        hidden = cell = input_gates.new_zeros(B, self.width, W)  # h_{-1}, c_{-1}: nothing above row 0
        rows = []
        for row in range(H):  # top to bottom: row i needs h_{i-1}
            o, f, i, g = self.split_gates(input_gates[:, :, row] + self.state_to_state(hidden))
            cell = f.sigmoid() * cell + i.sigmoid() * g.tanh()  # c_i, (B, width, W)
            hidden = o.sigmoid() * cell.tanh()  # h_i, (B, width, W)
            rows.append(hidden)
        return x + self.residual(torch.stack(rows, dim=2))  # (B, width, H, W)


class RowLSTMNetwork(nn.Module):
    """PixelRNN with Row LSTM layers (van den Oord et al. 2016, arXiv:1601.06759, sections 3.1-3.4).

    A ``7 x 7`` mask-A convolution to ``width`` features, ``layers`` Row LSTM layers (eq. 3) with
    residual connections, then ReLU, ``1 x 1`` mask-B convolution, ReLU, ``1 x 1`` mask-B
    convolution to ``out_channels``. Output block c (channels ``c * P`` to ``(c + 1) * P - 1``,
    ``P = out_channels // channels``) at (i, j) depends only on the pixels before (i, j) in raster
    order and on channels ``< c`` at (i, j): the parameters of ``p(x_{i,j,c} | x_<)``.

    Args:
        channels: data channels ``C`` of the image (1 grey, 3 RGB).
        out_channels: parameters per pixel, a multiple of ``channels``, laid out channel-major
            (``(B, C * P, H, W)`` viewed as ``(B, C, P, H, W)``).
        width: hidden units per layer (``h`` of the paper), a multiple of ``channels``.
        layers: Row LSTM layers.
        condition_dim: size of a conditioning vector (e.g. a one-hot class) added through a linear
            projection to every layer's input-to-state gates; 0 for an unconditional network.

    Example:
        >>> net = RowLSTMNetwork(3, 3 * 256, width=24, layers=2)
        >>> net(torch.rand(2, 3, 8, 8) * 2 - 1).shape
        torch.Size([2, 768, 8, 8])
    """

    def __init__(self, channels: int, out_channels: int, *, width: int = 64, layers: int = 3,
                 condition_dim: int = 0) -> None:
        super().__init__()
        if channels < 1 or out_channels < 1 or out_channels % channels:
            raise ValueError(f"out_channels ({out_channels}) must be a positive multiple of channels ({channels}): "
                             "each data channel gets its own contiguous block of parameters")
        if width < 1 or width % channels:
            raise ValueError(f"width ({width}) must be a positive multiple of channels ({channels}), so that every "
                             f"colour gets the same share of the hidden units; e.g. width={channels * max(1, width // channels)}")
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        if condition_dim < 0:
            raise ValueError(f"condition_dim must be 0 (unconditional) or positive, got {condition_dim}")
        self.channels, self.condition_dim = channels, condition_dim
        self.input = MaskedConv2d(channels, width, FIRST_KERNEL, "A", groups=channels)
        self.layers = nn.ModuleList(RowLSTM(width, groups=channels, condition_dim=condition_dim)
                                    for _ in range(layers))
        self.output = nn.Sequential(
            nn.ReLU(), MaskedConv2d(width, width, 1, "B", groups=channels),
            nn.ReLU(), MaskedConv2d(width, out_channels, 1, "B", groups=channels),
        )

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """``x (B, channels, H, W)``, the image in [-1, 1]; ``h (B, condition_dim)`` when the network is
        conditional. Returns ``(B, out_channels, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.condition_dim and h is None:
            raise ValueError(f"this network is conditional (condition_dim={self.condition_dim}): pass h (B, {self.condition_dim})")
        if not self.condition_dim and h is not None:
            raise ValueError("this network is unconditional (condition_dim=0): build it with condition_dim > 0 to pass h")
        if h is not None and (h.dim() != 2 or h.shape != (x.shape[0], self.condition_dim)):
            raise ValueError(f"h must be (B, condition_dim) = ({x.shape[0]}, {self.condition_dim}), got {tuple(h.shape)}")
        features = self.input(x)  # (B, width, H, W)
        for layer in self.layers:
            features = layer(features, h)  # (B, width, H, W)
        return self.output(features)  # (B, out_channels, H, W)
