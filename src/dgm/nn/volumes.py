"""Convolutional networks over grids of any dimension: 2-D images (views) and 3-D volumes.

The volumetric decoder of Rezende et al. 2016 (arXiv:1607.00662, section 2.2) maps a code to a
voxel grid through 3-D transposed convolutions; its encoder reads an image or a volume. Both are
written once for ``dims`` 2 or 3: stride-2 convolutions halve every side down to 4 (doubling the
channels), and transposed ones double them back. No probability here: the process
(:mod:`dgm.models.volumetric`) turns the outputs into a likelihood.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from dgm.errors import DgmError

BASE = 4  # side of the coarsest grid


def halvings(side: int) -> int:
    """How many stride-2 steps take ``side`` down to :data:`BASE`; refuses sides that are not
    ``4 * 2^k`` (k >= 1)."""
    k = round(math.log2(max(side, 1) / BASE))
    if side < 2 * BASE or BASE * 2 ** k != side:
        raise DgmError(f"a grid of side {side} cannot be halved down to {BASE}: use sides 8, 16, 32 or 64")
    return k


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _transposed(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d


class GridEncoder(nn.Sequential):
    """A grid ``(B, C, *sides)`` (``len(sides)`` = 2 or 3, equal sides ``4 * 2^k``) to a vector
    ``(B, out_features)``: k stride-2 convolutions doubling ``width``, then a linear layer."""

    def __init__(self, in_shape: tuple[int, ...], out_features: int, *, width: int = 16) -> None:
        channels, *sides = in_shape
        dims, k = len(sides), halvings(sides[0])
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for _ in range(k):
            layers += [_conv(dims)(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in, c = c, 2 * c
        layers += [nn.Flatten(), nn.Linear(c_in * BASE ** dims, out_features)]
        super().__init__(*layers)


class GridDecoder(nn.Module):
    """A vector ``(B, in_features)`` to a grid ``(B, *out_shape)`` (``out_shape`` = ``(C, *sides)``,
    equal sides ``4 * 2^k``): a linear layer to ``(width * 2^(k-1), 4, ..)``, then k stride-2
    transposed convolutions halving the channels, the last one to ``C`` outputs."""

    def __init__(self, in_features: int, out_shape: tuple[int, ...], *, width: int = 16) -> None:
        super().__init__()
        channels, *sides = out_shape
        dims, k = len(sides), halvings(sides[0])
        self.start = (width * 2 ** (k - 1), *(BASE,) * dims)
        self.linear = nn.Linear(in_features, math.prod(self.start))
        layers: list[nn.Module] = []
        c = self.start[0]
        for i in range(k):
            last = i == k - 1
            layers.append(_transposed(dims)(c, channels if last else c // 2, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.SiLU())
                c //= 2
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = nn.functional.silu(self.linear(z)).view(z.shape[0], *self.start)  # (B, C0, 4, 4[, 4])
        return self.net(h)
