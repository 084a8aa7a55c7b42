"""The multi-scale architecture of RealNVP and Glow: factor out half of the channels after each level.

Dinh et al. 2017 (RealNVP, arXiv:1605.08803, section 3.6, eq. 13)::

    h^(0) = x,   (z^(i+1), h^(i+1)) = f^(i+1)(h^(i)),   z^(L) = f^(L)(h^(L-1)),   z = (z^(1), ..., z^(L))

Each level ``f^(i)`` is an invertible transform (couplings, squeezes, ...); after every level but
the last, the first half of its output channels leaves the flow as ``z^(i)`` and only the rest goes
on, so the deeper levels cost less and the latents live at several resolutions. Glow (Kingma &
Dhariwal 2018, arXiv:1807.03039, section 3) splits the same way; its learned prior of the factored
half given the kept half is an affine coupling at the end of the level that maps the factored half
conditioned on the kept one.

The Jacobian is block triangular, so the log-determinant is the sum of the levels'. Latents come
out flattened and concatenated, ``(B, D)``, in the order they leave the flow.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgm.nn.flows import Transform


class MultiScale(Transform):
    """Levels of a multi-scale flow (module docstring).

    Args:
        levels: the transform of each level, applied in order.
        shapes: the shape ``(C, H, W)`` of each level's output, before its split.
    """

    def __init__(self, levels: list[Transform], shapes: list[tuple[int, int, int]]) -> None:
        super().__init__()
        if len(levels) != len(shapes):
            raise ValueError(f"{len(levels)} levels but {len(shapes)} shapes")
        self.levels = nn.ModuleList(levels)
        self.shapes = [tuple(s) for s in shapes]
        # what leaves the flow at each level: half the channels, and everything at the last
        self.factored = [(c // 2, h, w) for c, h, w in self.shapes[:-1]] + [self.shapes[-1]]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zs, total = [], x.new_zeros(x.shape[0])
        h = x
        for i, level in enumerate(self.levels):
            h, log_abs_det = level(h, context)
            total = total + log_abs_det
            if i < len(self.levels) - 1:
                c = self.factored[i][0]
                zs.append(h[:, :c].flatten(1))  # z^(i): leaves the flow
                h = h[:, c:]
        zs.append(h.flatten(1))
        return torch.cat(zs, 1), total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        sizes = [math.prod(s) for s in self.factored]
        parts = list(torch.split(z, sizes, 1))
        total = z.new_zeros(z.shape[0])
        h = parts[-1].reshape(-1, *self.factored[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:  # the factored half comes back in front of the kept one
                h = torch.cat([parts[i].reshape(-1, *self.factored[i]), h], 1)
            h, log_abs_det = self.levels[i].inverse(h, context)
            total = total + log_abs_det
        return h, total
