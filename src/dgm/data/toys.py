"""2-D toy distributions: mode-counting mixtures (GAN papers) and the shapes of the flow papers.

Each split is drawn afresh from a fixed seed, a different one per split, so the test points are
independent of the training points and every run sees the same data: 50,000 training and 10,000
test points, float32 ``(N, 2)``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dgm.data.sources import Part, Request

SPLIT_SIZES = {"train": 50_000, "test": 10_000}
SPLIT_SEEDS = {"train": 2024, "test": 2025}

Sampler = Callable[[int, int], Part]  # (number of points, seed) -> points


def load(sampler: Sampler, req: Request) -> Part:
    """The ``req.split`` split of the toy drawn by ``sampler``."""
    return sampler(SPLIT_SIZES[req.split], SPLIT_SEEDS[req.split])


def _points(x: np.ndarray) -> Part:
    return Part(x.astype(np.float32), None, levels=None)


def _mixture(means: np.ndarray, std: float, n: int, seed: int) -> Part:
    """An equal-weight mixture of isotropic Gaussians; labels are the component indices.

    ``extras`` carries the mode centres and the standard deviation, so that evaluators can count
    the modes a model covers and its high-quality samples (within 3 sd of a mode), as in VEEGAN
    (Srivastava et al. 2017) and PacGAN (Lin et al. 2018).
    """
    rng = np.random.default_rng(seed)
    k = rng.integers(len(means), size=n)
    x = means[k] + std * rng.standard_normal((n, 2))
    return Part(x.astype(np.float32), k.astype(np.int64), levels=None, num_classes=len(means),
                extras={"modes": means.tolist(), "mode_std": std})


def ring8(n: int, seed: int) -> Part:
    """8 Gaussians with means ``(cos 2πk/8, sin 2πk/8)`` and sd 0.01 (the PacGAN 2D-ring)."""
    angles = 2 * np.pi * np.arange(8) / 8
    return _mixture(np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01, n, seed)


def grid25(n: int, seed: int) -> Part:
    """25 Gaussians with means on ``{-4, -2, 0, 2, 4}^2`` and sd 0.05 (the PacGAN 2D-grid)."""
    axis = np.arange(-4.0, 5.0, 2.0)
    return _mixture(np.array([(a, b) for a in axis for b in axis]), 0.05, n, seed)


def moons(n: int, seed: int) -> Part:
    """Two interleaving half circles: ``sklearn.datasets.make_moons(noise=0.05)``."""
    from sklearn.datasets import make_moons  # imported here: scikit-learn is slow to import

    return _points(make_moons(n, noise=0.05, random_state=seed)[0])


def swissroll(n: int, seed: int) -> Part:
    """``sklearn.datasets.make_swiss_roll(noise=0.5)``, columns (0, 2), divided by 5."""
    from sklearn.datasets import make_swiss_roll

    return _points(make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]] / 5)


def checkerboard(n: int, seed: int) -> Part:
    """The 4x4 checkerboard of FFJORD (Grathwohl et al. 2019), on [-4, 4]^2.

    As in FFJORD's ``toy_data.py``: ``x1 ~ U[-2, 2)``; ``x2 = U[0, 1) - 2 B + (floor(x1) mod 2)``
    with ``B`` uniform on {0, 1}, which puts ``x2`` in alternating unit cells; both scaled by 2.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return _points(np.stack([x1, x2], axis=1) * 2)
