"""Pictures as files and pages: image grids, scatter plots, matplotlib figures as images, PNG files
and inline ``data:`` URIs. Nothing here knows a data representation (:mod:`dgm.data.pictures` does)."""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor



def grid(images: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> Image.Image:
    """Tile images ``(N, C, H, W)`` with values in [0, 1] into one picture, ``nrow`` per row."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top:top + h, left:left + w] = images[i]
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def scatter(points: Tensor, reference: Tensor | None = None, size: float = 4.0) -> Image.Image:
    """A scatter plot of 2-D ``points`` (over ``reference`` points in grey) as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8", label="data")
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return figure_to_image(fig)


def density_panels(data: Tensor, log_density: Tensor, extent: tuple[float, float, float, float],
                   samples: Tensor, size: float = 3.2) -> Image.Image:
    """Three panels side by side for a 2-D density model: the ``data`` points, the model's density
    ``exp(log_density)`` on a grid ``(rows = y, columns = x)`` covering ``extent`` = (x0, x1, y0, y1),
    and the model's ``samples``, all on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(3 * size, size), dpi=80, sharex=True, sharey=True)
    d, s = data.detach().cpu().numpy(), samples.detach().cpu().numpy()
    axes[0].scatter(d[:, 0], d[:, 1], s=1, c="0.3")
    axes[1].imshow(log_density.detach().double().exp().cpu().numpy(), origin="lower", extent=extent,
                   cmap="viridis", aspect="auto")
    axes[2].scatter(s[:, 0], s[:, 1], s=1, c="C0")
    for ax, title in zip(axes, ("data", "model density", "samples")):
        ax.set_title(title, fontsize=9)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
    fig.tight_layout()
    return figure_to_image(fig)


def figure_to_image(fig) -> Image.Image:  # noqa: ANN001 (a matplotlib Figure)
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # legends placed beside the axes included
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def save(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def data_uri(picture: Image.Image) -> str:
    """A PNG as an inline ``data:`` URI (the HTML report has no external files)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
