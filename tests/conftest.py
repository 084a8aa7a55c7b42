"""Shared fixtures: small synthetic datasets that need no files."""
from __future__ import annotations

import pytest
import torch

from dgm.data.core import Dataset, DataSpec


def image_dataset(n: int = 256, size: int = 8, levels: int = 17, representation: str = "unit",
                  seed: int = 0, train: bool = True, labels: bool = False) -> Dataset:
    """Blurry random blobs on ``size x size`` images of ``levels`` levels (structured, so a VAE learns);
    with ``labels``, each blob is labelled by the quadrant of its centre (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(1, size - 1, (n, 2), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    raw = ((levels - 1) * torch.exp(-d2 / 4)).round().to(torch.uint8).unsqueeze(1)
    quadrant = (2 * (centres[:, 0] >= size / 2) + (centres[:, 1] >= size / 2)).long() if labels else None
    spec = DataSpec("blobs", (1, size, size), representation, levels=levels, num_classes=4 if labels else None)
    return Dataset(raw, quadrant, spec, train=train)


CLASS_CAPTIONS = ["top left", "top right", "bottom", "bottom right corner"]  # 1 to 3 words: some padding


def captioned_blobs(n: int = 64) -> Dataset:
    """The labelled blobs captioned by the names of their quadrants (:data:`CLASS_CAPTIONS`), for the
    models that draw images from captions."""
    d = image_dataset(n=n, labels=True)
    spec = DataSpec("blobs", d.spec.shape, "unit", levels=17, num_classes=4, class_names=CLASS_CAPTIONS)
    return Dataset(d.raw, d.labels, spec, train=True)


def vector_dataset(n: int = 512, dim: int = 2, seed: int = 0, train: bool = True) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    spec = DataSpec("vectors", (dim,), "continuous", levels=None)
    return Dataset(torch.randn(n, dim, generator=g), None, spec, train=train)


@pytest.fixture
def blobs() -> Dataset:
    return image_dataset()
