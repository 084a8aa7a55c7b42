"""``sprites``: grey 32x32 images of one shape drawn from five known factors, like dSprites.

dSprites (Matthey et al. 2017) renders a heart, a square and an ellipse over a full grid of
shape x scale x orientation x position; here the images are rendered procedurally from factor
indices drawn at random, so the data needs no download and an evaluator can render any factor
combination again (:func:`render`): the disentanglement metrics that fix one factor and vary the
others (Higgins et al. 2017; Kim & Mnih 2018) need exactly that.

=========  ======  ===============================================================
factor     values  value of index ``k``
=========  ======  ===============================================================
shape      3       square, ellipse (axes 1 : 1/2), equilateral triangle
scale      6       ``0.5 + 0.1 k``: the shape's radius is ``0.25 * scale`` of the side
rotation   40      ``2 pi k / 40`` radians, counter-clockwise
x, y       16      ``0.3 + 0.4 k / 15`` of the side, from the left / from the top
=========  ======  ===============================================================

Each pixel is the fraction of its 4x4 sub-pixel centres inside the shape, as levels 0..255 (a
white shape on black, anti-aliased edges). Each split draws every factor uniformly from a fixed
seed (a different one per split): 10,000 training and 2,000 test images. The labels are the shape.
"""
from __future__ import annotations

import functools

import numpy as np

from dgm.data.sources import Part, Request

SIZE = 32  # image side in pixels
SUPERSAMPLE = 4  # sub-pixels per pixel side
SHAPES = ["square", "ellipse", "triangle"]
FACTORS = ["shape", "scale", "rotation", "x", "y"]
FACTOR_SIZES = [3, 6, 40, 16, 16]
#: the value of each index of each factor (table above)
FACTOR_VALUES = [list(range(3)), [0.5 + 0.1 * k for k in range(6)], [2 * np.pi * k / 40 for k in range(40)],
                 [0.3 + 0.4 * k / 15 for k in range(16)], [0.3 + 0.4 * k / 15 for k in range(16)]]
RADIUS = 0.25  # of the image side, at scale 1: the rotated square's corner stays inside at every position
SPLIT_SIZES = {"train": 10_000, "test": 2_000}
SPLIT_SEEDS = {"train": 2024, "test": 2025}
_CHUNK = 256  # images rendered at once (bounds the sub-pixel arrays to a few MB)


def load(req: Request) -> Part:
    """The ``req.split`` split: images ``(N, 1, 32, 32)``, shape labels, factor indices ``(N, 5)``."""
    x, factors = _split(req.split)
    return Part(x, factors[:, 0].copy(), levels=256, class_names=SHAPES, factors=factors,
                extras={"factors": FACTORS, "factor_sizes": FACTOR_SIZES, "factor_values": FACTOR_VALUES})


@functools.lru_cache(maxsize=2)
def _split(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    factors = np.stack([rng.integers(k, size=SPLIT_SIZES[split]) for k in FACTOR_SIZES], axis=1)
    x, factors = render(factors), factors.astype(np.int64)
    x.flags.writeable = factors.flags.writeable = False  # cached: callers copy
    return x, factors


def render(factors: np.ndarray) -> np.ndarray:
    """Images ``(N, 1, 32, 32)`` uint8 of the factor indices ``(N, 5)`` (module docstring)."""
    factors = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTORS))
    return np.concatenate([_render(factors[i:i + _CHUNK]) for i in range(0, len(factors), _CHUNK)]
                          or [np.zeros((0, 1, SIZE, SIZE), np.uint8)])


def _render(factors: np.ndarray) -> np.ndarray:
    out = np.empty((len(factors), 1, SIZE, SIZE), np.uint8)
    for k in range(len(SHAPES)):  # each image tests only its own shape
        chosen = factors[:, 0] == k
        if chosen.any():
            out[chosen] = _render_shape(k, factors[chosen])
    return out


def _render_shape(shape: int, factors: np.ndarray) -> np.ndarray:
    """Images ``(B, 1, 32, 32)`` of the shape of index ``shape`` at ``factors`` ``(B, 5)``."""
    scale, rotation, x, y = (np.asarray(values, dtype=np.float32)[factors[:, i]]
                             for i, values in enumerate(FACTOR_VALUES) if i > 0)
    n = SIZE * SUPERSAMPLE
    centres = ((np.arange(n) + 0.5) / n).astype(np.float32)  # sub-pixel centres in [0, 1]
    dx = centres[None, None, :] - x[:, None, None]  # (B, 1, n): rightwards
    dy = y[:, None, None] - centres[None, :, None]  # (B, n, 1): upwards (rows go down)
    cos, sin = np.cos(rotation)[:, None, None], np.sin(rotation)[:, None, None]
    r = (RADIUS * scale)[:, None, None]
    u = (cos * dx + sin * dy) / r  # (B, n, n): the shape's own frame (rotated back, unit radius)
    v = (cos * dy - sin * dx) / r
    if SHAPES[shape] == "square":
        inside = np.maximum(np.abs(u), np.abs(v)) <= 1 / np.sqrt(2)  # corners on the unit circle
    elif SHAPES[shape] == "ellipse":
        inside = u ** 2 + (2 * v) ** 2 <= 1
    else:  # the equilateral triangle inscribed in the unit circle, a vertex up: three half-planes
        # whose outward normals point at -90, 30 and 150 degrees, each at distance 1/2 from the centre
        inside = np.ones(u.shape, bool)
        for phi in np.deg2rad([-90.0, 30.0, 150.0]):
            inside &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
    coverage = inside.reshape(-1, SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(2, 4))
    return np.rint(coverage * 255).astype(np.uint8)[:, None]
