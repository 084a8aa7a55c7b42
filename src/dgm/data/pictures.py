"""The natural picture of examples in a data representation: an image grid for images, a scatter
plot for 2-D points, lines of text for token sequences, a grid of small scatter plots for point sets,
a grid of pen drawings for pen strokes, spectrograms for audio clips (which also have a sound:
:func:`sample_sound`).

Samples of padded kinds come without a mask; their padding is read the way the data writes it
(:mod:`dgm.data.sequences`): a token sequence ends at its first padding token ``0`` (byte-level
text holds no NUL byte), and a point exactly at the origin in every coordinate, or one that is not
finite, is padding.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dgm.data.core import DataSpec, to_unit
from dgm.data.strokes import to_strokes
from dgm.io.images import figure_to_image, grid, scatter

#: the padding token of byte-level sequences, which also ends a sampled one
PAD_TOKEN = 0
#: characters per line of a text picture, and lines per sequence (longer ones end in "…")
TEXT_COLUMNS = 96
TEXT_LINES_PER_SEQUENCE = 3


def sample_picture(samples: Tensor, spec: DataSpec, reference: Tensor | None = None,
                   nrow: int | None = None, mask: Tensor | None = None) -> Image.Image:
    """The natural picture of samples in ``spec``'s representation: a grid, a scatter plot, lines of
    text (tokens) or one small scatter plot per set (points). ``mask`` marks the real tokens or points
    of padded samples; ``None`` reads the padding from the samples (module docstring)."""
    if spec.is_image:
        scale = max(1, 64 // spec.shape[-1])  # 8x8 digits are shown 8 times larger
        return grid(to_unit(samples, spec), nrow=nrow, scale=scale)
    if spec.kind == "tokens":
        return text_picture(decode_tokens(samples, mask))
    if spec.kind == "volume":  # a volume is shown by a shaded view of it (dgm.data.voxels.picture_views)
        from dgm.data.voxels import picture_views

        return grid(picture_views(to_unit(samples, spec)), nrow=nrow, scale=max(1, 64 // spec.shape[-1]))
    if spec.kind == "points" and spec.extras.get("strokes"):  # pen strokes (dgm.data.strokes)
        return strokes_picture(samples, real_mask(samples, spec) if mask is None else mask, nrow=nrow)
    if spec.kind == "points":
        return point_sets_picture(samples, real_mask(samples, spec) if mask is None else mask, nrow=nrow)
    if spec.kind == "audio":  # a clip is shown by its spectrogram (dgm.data.audio.spectrograms)
        from dgm.data.audio import spectrogram_picture

        return spectrogram_picture(samples, spec, nrow=nrow)
    if spec.shape == (2,):
        return scatter(samples, reference)
    raise ValueError(f"no picture for data of shape {spec.shape}")


def sample_sound(samples: Tensor, spec: DataSpec) -> bytes | None:
    """The natural sound of samples: a WAV file of the first few audio clips, one after another
    (:func:`dgm.data.audio.samples_wav`); ``None`` for data that is not audio."""
    if spec.kind != "audio":
        return None
    from dgm.data.audio import samples_wav

    return samples_wav(samples, spec)


def real_mask(samples: Tensor, spec: DataSpec) -> Tensor:
    """``(B, L)`` or ``(B, N)`` bool, True at the real tokens or points of padded samples."""
    if spec.kind == "tokens":  # real up to the first padding token
        return (samples == PAD_TOKEN).long().cumsum(1) == 0
    if spec.kind == "points":
        return samples.isfinite().all(-1) & (samples != 0).any(-1)
    raise ValueError(f"{spec.kind} data has no padding")


def decode_tokens(samples: Tensor, mask: Tensor | None = None) -> list[str]:
    """Byte-level token sequences ``(B, L)`` as text: the bytes of the real tokens (``mask``, or up
    to the first padding token), decoded as UTF-8 (invalid bytes as U+FFFD), control characters
    other than tabs shown as U+FFFD too."""
    tokens = samples.detach().long().cpu()
    keep = ((tokens == PAD_TOKEN).long().cumsum(1) == 0) if mask is None else mask.detach().cpu().bool()
    texts = []
    for row, real in zip(tokens, keep):
        text = bytes(row[real].clamp(0, 255).tolist()).decode("utf-8", errors="replace")
        texts.append("".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text))
    return texts


def text_picture(texts: list[str], columns: int = TEXT_COLUMNS,
                 lines_per_text: int = TEXT_LINES_PER_SEQUENCE) -> Image.Image:
    """Texts as lines of dark text on white, one numbered entry per text, each wrapped at
    ``columns`` characters and cut after ``lines_per_text`` lines."""
    font = ImageFont.load_default()
    lines: list[str] = []
    width = len(str(len(texts)))
    for i, text in enumerate(texts):
        wrapped = [text[j:j + columns] for j in range(0, len(text), columns)] or [""]
        if len(wrapped) > lines_per_text:
            wrapped = wrapped[:lines_per_text]
            wrapped[-1] = wrapped[-1][:-1] + "…"
        lines += [f"{i + 1:>{width}}  {wrapped[0]}"] + [" " * (width + 2) + w for w in wrapped[1:]]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), line or " ", font=font) for line in lines]
    height = max(b[3] - b[1] for b in boxes) + 4
    picture = Image.new("RGB", (max(b[2] for b in boxes) + 16, height * len(lines) + 12), "white")
    draw = ImageDraw.Draw(picture)
    for k, line in enumerate(lines):
        draw.text((8, 6 + k * height), line, fill=(30, 30, 30), font=font)
    return picture


def point_sets_picture(samples: Tensor, mask: Tensor, nrow: int | None = None, panel: float = 1.0) -> Image.Image:
    """One small scatter plot per set of ``samples`` ``(B, N, 2)`` (only the first two coordinates
    of higher-dimensional points), its real points (``mask`` ``(B, N)``) only, all on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, mask = samples.detach().float().cpu(), mask.detach().cpu().bool()
    n = len(points)
    cols = nrow or math.ceil(math.sqrt(n))
    rows = max(1, math.ceil(n / cols))
    real = points[mask][:, :2]
    real = real[real.isfinite().all(-1)]
    lo, hi = (real.min().item(), real.max().item()) if len(real) else (-1.0, 1.0)
    margin = 0.05 * (hi - lo) + 1e-3
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows), dpi=80, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(lo - margin, hi + margin)
        ax.set_ylim(lo - margin, hi + margin)
        ax.set_aspect("equal")
    for ax, pts, keep in zip(axes.flat, points, mask):
        p = pts[keep][:, :2].numpy()
        ax.scatter(p[:, 0], p[:, 1], s=3, c="C0")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    return figure_to_image(fig)


def strokes_picture(samples: Tensor, mask: Tensor, nrow: int | None = None, cell: int = 64,
                    height: float = 3.5) -> Image.Image:
    """One pen drawing per sequence of ``samples`` ``(B, N, 3)`` of rows ``(dx, dy, pen_up)``
    (:mod:`dgm.data.strokes`), its real rows (``mask`` ``(B, N)``) only: each stroke a polyline, the
    pen lifted after a row whose pen bit is 1, so the move to the next stroke is not drawn. Each
    drawing is centred in a ``cell`` pixel square and shrunk to fit it; one as tall as ``height``
    data units (the glyphs' span, descenders included) fills it, smaller ones keep their size."""
    rows, mask = samples.detach().double().cpu().numpy(), mask.detach().cpu().bool().numpy()
    big = 2 * cell  # drawn at twice the size, then scaled down: smooth lines
    cells = []
    for seq, keep in zip(rows, mask):
        picture = Image.new("L", (big, big), 255)
        real = seq[keep]
        strokes = to_strokes(real[np.isfinite(real).all(-1)])
        if strokes:
            points = np.concatenate(strokes)
            lo, hi = points.min(0), points.max(0)
            scale = min((big - 8) / max(float((hi - lo).max()), 1e-9), big / height)
            draw = ImageDraw.Draw(picture)
            for stroke in strokes:
                xy = (stroke - (lo + hi) / 2) * [scale, -scale] + big / 2  # y up in the data, down in a picture
                if len(xy) == 1:
                    draw.ellipse([*(xy[0] - 2), *(xy[0] + 2)], fill=0)
                else:
                    draw.line([tuple(p) for p in xy], fill=0, width=3, joint="curve")
        cells.append(np.asarray(picture.resize((cell, cell), Image.Resampling.LANCZOS), np.float32) / 255)
    return grid(torch.from_numpy(np.stack(cells))[:, None] if cells else torch.ones(1, 1, cell, cell), nrow=nrow)
