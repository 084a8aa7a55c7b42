"""The convolutional LSTM cell: an LSTM whose gates are convolutions over feature maps, so its state
keeps the image's layout (Shi et al. 2015, "Convolutional LSTM Network", arXiv:1506.04214, eq. 3,
without the peephole terms). Shapes in, shapes out, no probability.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvLSTMCell(nn.Module):
    """One step ``(x, (h, c)) -> (h', c')`` on maps ``(B, channels, H, W)``::

        i, f, o, g = split(W * [x, h] + b)                  (one conv, 4 * hidden channels)
        c' = sigmoid(f) c + sigmoid(i) tanh(g),   h' = sigmoid(o) tanh(c')

    ``state=None`` starts from zeros.
    """

    def __init__(self, in_channels: int, hidden: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], 1)).chunk(4, 1)  # each (B, hidden, H, W)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
