"""The natural picture of examples in a data representation: an image grid for images, a scatter
plot for 2-D points."""
from __future__ import annotations

from PIL import Image
from torch import Tensor

from dgm.data.core import DataSpec, to_unit
from dgm.io.images import grid, scatter


def sample_picture(samples: Tensor, spec: DataSpec, reference: Tensor | None = None,
                   nrow: int | None = None) -> Image.Image:
    """The natural picture of samples in ``spec``'s representation: a grid or a scatter plot."""
    if spec.is_image:
        scale = max(1, 64 // spec.shape[-1])  # 8x8 digits are shown 8 times larger
        return grid(to_unit(samples, spec), nrow=nrow, scale=scale)
    if spec.shape == (2,):
        return scatter(samples, reference)
    raise ValueError(f"no picture for data of shape {spec.shape}")
