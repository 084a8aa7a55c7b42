"""``voxels``: 16x16x16 occupancy grids of one primitive or the union of two, from ten known factors.

A small procedural stand-in for the volumes of Rezende et al. 2016 ("Unsupervised Learning of 3D
Structure from Images", arXiv:1607.00662, section 3.2: primitives and ShapeNet volumes seen through
a projection): a volume is rendered from factor indices, so the data needs no download and an
evaluator can render any combination again (:func:`render`).

============  ======  ===========================================================================
factor        values  value of index ``k``
============  ======  ===========================================================================
shape         4       box (a cube), sphere, cylinder (vertical axis), cone (apex up)
size          3       ``r = 0.25, 0.325, 0.4``: half the side / the radius / half the height
x, y, z       5       the centre, ``-0.2 + 0.1 k`` in the grid's normalised coordinates [-1, 1]
second_shape  5       0: none; ``k``: shape ``k - 1`` (the union with a second primitive)
second_size,  3, 5    as for the first shape (drawn, and ignored, when there is no second shape)
second_x/y/z
============  ======  ===========================================================================

A voxel is occupied (1) when its centre ``(2 i + 1) / n - 1`` lies inside either primitive, so a
sphere's silhouette is the disk of its radius (up to the voxel grid). The coordinates are those of
:mod:`dgm.data.projection` (``(z, y, x)`` axes, ``y`` downwards, so the cone's apex is at ``-y``); every
primitive lies within 0.6 of the centre along every axis, so turning the volume about one axis
(within 0.85 of it) keeps it in the grid. The stored examples are ``(N, 1, n, n, n)`` uint8 in {0, 1} (two levels): the ``unit`` and
``binary-*`` representations give the same 0/1 floats. Each split draws every factor uniformly from
its own seed: 10,000 training and 2,000 test volumes (``voxels32``: 32^3, 4,000 / 1,000). The label
is the first shape.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from dgm.data.projection import shaded
from dgm.data.sources import Part, Request

SIZE = 16  # grid side of ``voxels``
SHAPES = ["box", "sphere", "cylinder", "cone"]
RADII = [0.25, 0.325, 0.4]
CENTRES = [-0.2, -0.1, 0.0, 0.1, 0.2]
FACTORS = ["shape", "size", "x", "y", "z", "second_shape", "second_size", "second_x", "second_y", "second_z"]
FACTOR_SIZES = [4, 3, 5, 5, 5, 5, 3, 5, 5, 5]
FACTOR_VALUES = [list(range(4)), RADII, CENTRES, CENTRES, CENTRES,
                 list(range(5)), RADII, CENTRES, CENTRES, CENTRES]
SPLIT_SIZES = {16: {"train": 10_000, "test": 2_000}, 32: {"train": 4_000, "test": 1_000}}
SPLIT_SEEDS = {"train": 3016, "test": 3017}
_CHUNK = 256  # volumes rendered at once


def load(req: Request, side: int = SIZE) -> Part:
    """The ``req.split`` split: volumes ``(N, 1, side, side, side)``, first-shape labels, factors ``(N, 10)``."""
    x, factors = _split(req.split, side)
    return Part(x, factors[:, 0].copy(), levels=2, class_names=SHAPES, factors=factors, kind="volume",
                extras={"factors": FACTORS, "factor_sizes": FACTOR_SIZES, "factor_values": FACTOR_VALUES})


@functools.lru_cache(maxsize=4)
def _split(split: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEEDS[split] + side)
    n = SPLIT_SIZES[side][split]
    factors = np.stack([rng.integers(k, size=n) for k in FACTOR_SIZES], axis=1).astype(np.int64)
    x = render(factors, side)
    x.flags.writeable = factors.flags.writeable = False  # cached: callers copy
    return x, factors


def render(factors: np.ndarray, side: int = SIZE) -> np.ndarray:
    """Volumes ``(N, 1, side, side, side)`` uint8 in {0, 1} of the factor indices ``(N, 10)``."""
    factors = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTORS))
    parts = [_render(factors[i:i + _CHUNK], side) for i in range(0, len(factors), _CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, 1, side, side, side), np.uint8)


def _render(factors: np.ndarray, side: int) -> np.ndarray:
    first = _primitive(factors[:, 0], *(factors[:, i] for i in range(1, 5)), side=side)
    present = factors[:, 5] > 0
    second = _primitive(np.maximum(factors[:, 5] - 1, 0), *(factors[:, i] for i in range(6, 10)), side=side)
    return (first | (second & present[:, None, None, None]))[:, None].astype(np.uint8)


def _primitive(shape: np.ndarray, size: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, *,
               side: int) -> np.ndarray:
    """Occupancy ``(B, side, side, side)`` bool of one primitive per row (the table above)."""
    c = ((2 * np.arange(side) + 1) / side - 1).astype(np.float32)  # voxel centres in [-1, 1]
    r = np.asarray(RADII, np.float32)[size][:, None, None, None]
    centres = np.asarray(CENTRES, np.float32)
    # the shape's own frame, unit size: (B, D, 1, 1), (B, 1, H, 1), (B, 1, 1, W)
    w = (c[None, :, None, None] - centres[z][:, None, None, None]) / r
    v = (c[None, None, :, None] - centres[y][:, None, None, None]) / r
    u = (c[None, None, None, :] - centres[x][:, None, None, None]) / r
    k = shape[:, None, None, None]
    box = (np.abs(u) <= 1) & (np.abs(v) <= 1) & (np.abs(w) <= 1)
    sphere = u ** 2 + v ** 2 + w ** 2 <= 1
    radial = u ** 2 + w ** 2  # squared distance from the vertical axis
    cylinder = (radial <= 1) & (np.abs(v) <= 1)
    cone = (np.abs(v) <= 1) & (radial <= ((v + 1) / 2) ** 2)  # radius 0 at the apex (v = -1), 1 at the base
    return np.where(k == 0, box, np.where(k == 1, sphere, np.where(k == 2, cylinder, cone)))


def picture_views(volumes: Tensor, azimuth: float = 0.5236, elevation: float = 0.4363) -> Tensor:
    """Shaded pictures ``(B, 1, side, side)`` of occupancies ``(B, 1, side, side, side)`` in [0, 1],
    seen from ``azimuth`` / ``elevation`` (radians; 30 and 25 degrees), for sample grids."""
    return shaded(volumes.float(), azimuth, elevation)


#: azimuths (degrees) of a turning strip: one volume seen all the way round
TURN = tuple(45.0 * k for k in range(8))


def turning(volumes: Tensor, elevation: float = 25.0) -> Tensor:
    """Shaded views of occupancies ``volumes`` ``(N, 1, D, H, W)`` from the azimuths :data:`TURN`,
    enlarged to at least 64 pixels: ``(N * len(TURN), 1, s, s)``, one volume per row of a grid of
    ``len(TURN)`` (the report's stand-in for a rotating picture)."""
    e = math.radians(elevation)
    views = torch.stack([shaded(volumes.float(), math.radians(a), e) for a in TURN], 1).flatten(0, 1)
    scale = max(1, 64 // views.shape[-1])
    return torch.nn.functional.interpolate(views, scale_factor=scale, mode="nearest") if scale > 1 else views
