"""Images as sparse sequences of quantised DCT coefficients (the JPEG transform, read as a sequence).

Nash, Menick, Dieleman & Battaglia 2021, "Generating Images with Sparse Representations",
arXiv:2103.03841, section 2. An image becomes a list of triples ``(channel, position, value)``:

1. colour (C = 3): RGB -> YCbCr, JPEG / ITU-R BT.601 full range (JFIF), kept in float64 (not
   rounded to 8 bits, so the transform itself loses nothing); no chroma subsampling::

       Y  =       0.299    R + 0.587    G + 0.114    B
       Cb = 128 - 0.168736 R - 0.331264 G + 0.5      B
       Cr = 128 + 0.5      R - 0.418688 G - 0.081312 B

2. H, W padded up to multiples of 8 by repeating the edge pixels; the blocks ``p`` of 8x8 pixels
   numbered in raster order over the padded image.
3. per block, the orthonormal 2-D DCT-II of the level-shifted pixels (x - 128)::

       X_{u,v} = sum_{i,j} b_{u,v}(i, j) (x_{i,j} - 128),
       b_{u,v}(i, j) = a_u a_v cos((2i+1) u pi / 16) cos((2j+1) v pi / 16)

   with a_0 = sqrt(1/8), a_u = sqrt(2/8): the basis b is orthonormal (the DCT matrix is orthogonal).
4. quantisation ``q_{u,v} = round(X_{u,v} / step_{u,v})``, ``step = Q_{u,v} * s / 100`` with Q the JPEG
   luminance table (Y, grey) or chrominance table (Cb, Cr) of ITU-T T.81 Annex K, and s the IJG
   quality mapping (``s = 5000 / quality`` below 50, ``200 - 2 quality`` from 50; libjpeg's integer
   rounding ``floor((Q s + 50) / 100)``, clamped to >= 1; no upper clamp at 255).
5. the nonzero q as triples: ``channel = colour * 64 + zigzag(u, v)`` (JPEG zigzag, low frequencies
   first), ``position = p``, ``value = q`` clamped to +-``value_range``; sorted by channel (Y before
   Cb before Cr, each low to high frequency), then position: the paper's ordering.

Decoding inverts each step and rounds to the nearest level in 0..255. Data of ``L != 256`` levels
(the 17-level digits) is rescaled first, ``k -> round(255 k / (L - 1))``, and back after decoding,
``v -> round((L - 1) v / 255)``; the two maps are inverse on the levels because their spacing
``255 / (L - 1)`` is at least 1.

**Lossless setting** (``quality="lossless"``): every step is 1/16 for grey images and 1/32 for colour.
Why that returns every 8-bit pixel exactly: rounding moves each coefficient by at most ``step / 2``,
and the inverse DCT maps these errors e_{u,v} to a pixel error

    |sum_{u,v} e_{u,v} b_{u,v}(i, j)| <= (step / 2) sum_{u,v} |b_{u,v}(i, j)| <= (step / 2) * 8,

where ``sum_{u,v} |b_{u,v}(i, j)| <= sqrt(64) (sum_{u,v} b_{u,v}(i, j)^2)^(1/2) = 8`` by Cauchy-Schwarz and
orthonormality (the exact maximum is 6.98). Grey: 8 / 32 = 0.25 < 0.5, so rounding the decoded value
recovers the pixel. Colour: the inverse colour transform adds up to 1 + 1.772 = 2.772 times a YCbCr
error into one of R, G, B (the largest absolute row sum of the inverse matrix), so 1/16 would only
bound the error by 0.69; with 1/32 it is 2.772 * 8 / 64 = 0.35 < 0.5. Nothing is clamped there either:
|X_{u,v}| <= ||x - 128||_2 <= 8 * 128 = 1024 in every block, so ``value_range`` defaults to
``ceil(1024 / smallest step)`` (16384 grey, 32768 colour lossless; 205 at quality 75).

**Lossy settings**: the same argument bounds the error of every pixel by :func:`error_bound` (the
per-coefficient half steps through the basis, times 2.772 for colour, plus 0.5 for the final
rounding): 112 grey levels at quality 75 on grey images, 223 at quality 50. That worst case needs
all 64 rounding errors to align and is loose; typical errors are far smaller. On the sklearn digits
(8x8, 17 levels rescaled to 0..255, sharp strokes: a hard case for the DCT) the mean PSNR is 29.9 dB
at quality 75 and 24.6 dB at 50, the largest pixel error 45 and 89 levels (``tests/test_dct.py``
checks mean PSNR above 28 and 23 dB, and every error within the bound).

Example:
    >>> image = torch.randint(0, 256, (3, 13, 10))
    >>> triples = to_triples(image, quality="lossless")  # (N, 3): channel, position, value
    >>> bool((from_triples(triples, image.shape, quality="lossless") == image).all())
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.errors import DgmError

#: a JPEG quality 1..100, or the lossless setting (steps 1/16, colour 1/32)
Quality = int | Literal["lossless"]

BLOCK = 8  # side of a DCT block
COEFFICIENTS = BLOCK * BLOCK  # frequencies per block and colour
MAX_COEFFICIENT = 1024  # |X_{u,v}| <= ||x - 128||_2 <= 8 * 128 over a block (Cauchy-Schwarz)

#: ITU-T T.81 Annex K, Table K.1 (luminance) and K.2 (chrominance), natural order [u, v] (u: rows)
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)

#: JFIF RGB -> YCbCr (rows Y, Cb, Cr), applied as M (rgb) + offset
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_OFFSET = (0.0, 128.0, 128.0)
COLOUR_GAIN = 2.772  # >= the largest absolute row sum of the inverse colour matrix (B = Y + 1.772 (Cb - 128))


# --- the fixed pieces: zigzag, DCT matrix, quantisation steps -------------------------------------
@cache
def zigzag() -> Tensor:
    """``zigzag()[k]`` is the natural index ``8 u + v`` of the k-th frequency in JPEG zigzag order, ``(64,)``:
    by anti-diagonal ``u + v``, walking up (u falling) on even diagonals and down on odd ones."""
    cells = sorted(((u, v) for u in range(BLOCK) for v in range(BLOCK)),
                   key=lambda uv: (uv[0] + uv[1], -uv[0] if (uv[0] + uv[1]) % 2 == 0 else uv[0]))
    return torch.tensor([BLOCK * u + v for u, v in cells])


@cache
def dct_matrix() -> Tensor:
    """The orthonormal 8-point DCT-II, ``D[u, i] = a_u cos((2i + 1) u pi / 16)``, float64 ``(8, 8)``:
    ``X = D x D^T`` per block, ``x = D^T X D`` back (step 3)."""
    u = torch.arange(BLOCK, dtype=torch.float64)[:, None]
    i = torch.arange(BLOCK, dtype=torch.float64)[None, :]
    a = torch.where(u == 0, math.sqrt(1 / BLOCK), math.sqrt(2 / BLOCK))
    return a * torch.cos((2 * i + 1) * u * math.pi / (2 * BLOCK))


def check_quality(quality: Quality) -> None:
    if quality != "lossless" and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise DgmError(f"the DCT quality must be an integer 1..100 or 'lossless', got {quality!r}")


def quantisation_steps(quality: Quality, channels: int) -> Tensor:
    """The quantisation step of every colour and frequency, float64 ``(channels, 8, 8)``, natural order
    (step 4; luminance table for Y and grey, chrominance for Cb and Cr)."""
    check_quality(quality)
    if channels not in (1, 3):
        raise DgmError(f"the DCT code takes grey (1 channel) or colour (3 channel) images, got {channels} channels")
    if quality == "lossless":  # see the module docstring for why these steps lose nothing
        return torch.full((channels, BLOCK, BLOCK), 1 / 16 if channels == 1 else 1 / 32, dtype=torch.float64)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # IJG, in percent
    tables = torch.tensor([LUMINANCE_TABLE, CHROMINANCE_TABLE, CHROMINANCE_TABLE][:channels], dtype=torch.float64)
    return ((tables * scale + 50) // 100).clamp(min=1)


def max_value(quality: Quality, channels: int) -> int:
    """The largest |q| any image can give at this quality: ``ceil(1024 / smallest step)``; a
    ``value_range`` this large never clamps."""
    return math.ceil(MAX_COEFFICIENT / quantisation_steps(quality, channels).min().item())


def error_bound(quality: Quality, channels: int) -> float:
    """A bound on the absolute error of every decoded pixel (0..255 units) without clamping of values:
    ``sum_{u,v} (step_{u,v} / 2) |b_{u,v}(i, j)|`` at the worst pixel (times :data:`COLOUR_GAIN` for
    colour), plus 0.5 for rounding to a level; 0 when lossless (module docstring)."""
    if quality == "lossless":
        return 0.0
    D = dct_matrix()
    basis = (D[:, None, :, None] * D[None, :, None, :]).abs()  # (u, v, i, j): |b_{u,v}(i, j)|
    steps = quantisation_steps(quality, channels)  # (C, 8, 8)
    worst = torch.einsum("cuv,uvij->cij", steps / 2, basis).amax().item()
    return worst * (COLOUR_GAIN if channels == 3 else 1.0) + 0.5


# --- images <-> quantised coefficients ------------------------------------------------------------
def blocks_of(height: int, width: int) -> tuple[int, int]:
    """Blocks down and across an image of this size after padding to multiples of 8."""
    return -(-height // BLOCK), -(-width // BLOCK)


def to_coefficients(images: Tensor, *, quality: Quality) -> Tensor:
    """Quantised DCT coefficients of images with levels 0..255, ``(B, C, H, W)`` -> int64
    ``(B, C, 64, P)``: colour, zigzag frequency, block (steps 1-4). Unclamped."""
    B, C, H, W = images.shape
    steps = quantisation_steps(quality, C).to(images.device)
    x = images.to(torch.float64)
    if C == 3:
        M = torch.tensor(RGB_TO_YCBCR, dtype=torch.float64, device=x.device)
        x = torch.einsum("kc,bchw->bkhw", M, x) + torch.tensor(YCBCR_OFFSET, dtype=torch.float64,
                                                               device=x.device)[:, None, None]
    bh, bw = blocks_of(H, W)
    x = F.pad(x, (0, bw * BLOCK - W, 0, bh * BLOCK - H), mode="replicate") - 128  # edge replication
    x = x.view(B, C, bh, BLOCK, bw, BLOCK).permute(0, 1, 2, 4, 3, 5).reshape(B, C, bh * bw, BLOCK, BLOCK)
    D = dct_matrix().to(x.device)
    X = D @ x @ D.T  # (B, C, P, 8, 8): X_{u,v} per block
    q = torch.round(X / steps[None, :, None]).long()
    return q.flatten(3)[..., zigzag().to(x.device)].transpose(2, 3)  # (B, C, 64, P)


def from_coefficients(q: Tensor, shape: tuple[int, ...], *, quality: Quality) -> Tensor:
    """Images with levels 0..255, int64 ``(B, C, H, W)``, from quantised coefficients ``(B, C, 64, P)``."""
    C, H, W = shape
    B = len(q)
    bh, bw = blocks_of(H, W)
    steps = quantisation_steps(quality, C).to(q.device)
    natural = torch.empty_like(q.transpose(2, 3))  # (B, C, P, 64)
    natural[..., zigzag().to(q.device)] = q.transpose(2, 3)
    X = natural.to(torch.float64).view(B, C, bh * bw, BLOCK, BLOCK) * steps[None, :, None]
    D = dct_matrix().to(q.device)
    x = D.T @ X @ D + 128  # (B, C, P, 8, 8)
    x = x.view(B, C, bh, bw, BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5).reshape(B, C, bh * BLOCK, bw * BLOCK)
    x = x[..., :H, :W]
    if C == 3:
        M = torch.tensor(RGB_TO_YCBCR, dtype=torch.float64, device=x.device)
        offset = torch.tensor(YCBCR_OFFSET, dtype=torch.float64, device=x.device)[:, None, None]
        x = torch.einsum("kc,bchw->bkhw", torch.linalg.inv(M), x - offset)
    return x.round().clamp(0, 255).long()


# --- coefficients <-> padded triple sequences -----------------------------------------------------
def batch_to_triples(images: Tensor, *, quality: Quality, value_range: int | None = None) -> tuple[Tensor, Tensor]:
    """The triple sequences of images with levels 0..255, ``(B, C, H, W)``, padded to the longest.

    Returns:
        triples: int64 ``(B, L, 3)``: (channel, position, value) rows, sorted by channel then
            position; zeros after each sequence's end.
        mask: bool ``(B, L)``, True on real triples. (Reading L costs one host synchronisation.)
    """
    q = to_coefficients(images, quality=quality)  # (B, C, 64, P)
    limit = max_value(quality, images.shape[1]) if value_range is None else value_range
    P = q.shape[-1]
    flat = q.flatten(1).clamp(-limit, limit)  # (B, C*64*P): channel-major, so nonzero() comes sorted
    nonzero = flat != 0
    counts = nonzero.sum(1)  # (B,)
    L = int(counts.max()) if len(flat) else 0
    rows, index = nonzero.nonzero(as_tuple=True)  # row-major: sorted by channel, then position
    slot = nonzero.cumsum(1)[rows, index] - 1
    triples = torch.zeros(len(flat), L, 3, dtype=torch.long, device=q.device)
    triples[rows, slot] = torch.stack([index // P, index % P, flat[rows, index]], dim=1)
    mask = torch.arange(L, device=q.device) < counts[:, None]
    return triples, mask


def batch_from_triples(triples: Tensor, mask: Tensor, shape: tuple[int, ...], *, quality: Quality) -> Tensor:
    """Images with levels 0..255, int64 ``(B, C, H, W)``, from padded triples ``(B, L, 3)`` and their
    mask ``(B, L)``. A (channel, position) given twice adds its values; absent ones are zero."""
    C, H, W = shape
    bh, bw = blocks_of(H, W)
    P, K = bh * bw, C * COEFFICIENTS
    rows, t = mask.nonzero(as_tuple=True)
    channel, position, value = triples[rows, t].unbind(-1)
    if len(channel) and (channel.min() < 0 or channel.max() >= K or position.min() < 0 or position.max() >= P):
        raise DgmError(f"DCT triples out of range for images {tuple(shape)}: channels must be in 0..{K - 1} "
                       f"and positions in 0..{P - 1}")
    flat = torch.zeros(len(triples), K * P, dtype=torch.long, device=triples.device)
    flat.index_put_((rows, channel * P + position), value, accumulate=True)
    return from_coefficients(flat.view(len(triples), C, COEFFICIENTS, P), shape, quality=quality)


def to_triples(image: Tensor, *, quality: Quality, value_range: int | None = None) -> Tensor:
    """The sparse DCT sequence of one image with levels 0..255, ``(C, H, W)`` -> int64 ``(N, 3)``
    rows (channel, position, value), sorted by channel then position (module docstring, steps 1-5).
    ``value_range``: clamp of the values (``None``: :func:`max_value`, no clamping)."""
    triples, mask = batch_to_triples(image[None], quality=quality, value_range=value_range)
    return triples[0, mask[0]]


def from_triples(triples: Tensor, shape: tuple[int, ...], *, quality: Quality) -> Tensor:
    """The image, int64 levels 0..255 ``(C, H, W)``, of a triple sequence ``(N, 3)``."""
    mask = torch.ones(1, len(triples), dtype=torch.bool, device=triples.device)
    return batch_from_triples(triples[None], mask, shape, quality=quality)[0]


# --- the code a model works in --------------------------------------------------------------------
@dataclass(frozen=True)
class DCTCode:
    """The sparse DCT code of images of one shape and number of levels: the vocabularies a model of
    the triples needs, and batched encoding and decoding in the data's own levels.

    Attributes:
        shape: ``(C, H, W)`` of the images, C in {1, 3}.
        quality: a JPEG quality 1..100 or ``"lossless"``.
        value_range: values are clamped to +-value_range; ``None``: :func:`max_value` (never clamped).
        levels: levels of the data (0..levels-1), rescaled to 0..255 and back (module docstring).

    Example:
        >>> code = DCTCode((1, 8, 8), quality=75, levels=17)
        >>> triples, mask = code.encode(torch.randint(0, 17, (4, 1, 8, 8)))  # (4, L, 3), (4, L)
        >>> code.decode(triples, mask).shape
        torch.Size([4, 1, 8, 8])
    """

    shape: tuple[int, int, int]
    quality: Quality = 75
    value_range: int | None = None
    levels: int = 256

    def __post_init__(self) -> None:
        check_quality(self.quality)
        quantisation_steps(self.quality, self.shape[0])  # refuses channel counts other than 1 and 3
        if not 2 <= self.levels <= 256:
            raise DgmError(f"the DCT code takes images of 2..256 levels, got {self.levels}")
        if self.value_range is not None and self.value_range < 1:
            raise DgmError(f"the DCT value_range must be at least 1, got {self.value_range}")

    @property
    def num_channels(self) -> int:
        """Colours times frequencies, C * 64."""
        return self.shape[0] * COEFFICIENTS

    @property
    def num_positions(self) -> int:
        """8x8 blocks of the padded image."""
        bh, bw = blocks_of(*self.shape[1:])
        return bh * bw

    @property
    def max_abs_value(self) -> int:
        """The clamp of the values: ``value_range``, or the largest |q| the quality allows."""
        return max_value(self.quality, self.shape[0]) if self.value_range is None else self.value_range

    @property
    def num_values(self) -> int:
        """Distinct values, ``2 * max_abs_value + 1`` (value v has index v + max_abs_value)."""
        return 2 * self.max_abs_value + 1

    @property
    def lossless(self) -> bool:
        """Whether decoding returns every image exactly (lossless steps, no value clamped)."""
        return self.quality == "lossless" and self.max_abs_value >= max_value("lossless", self.shape[0])

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Padded triples ``(B, L, 3)`` and mask ``(B, L)`` of images in levels 0..levels-1 ``(B, C, H, W)``."""
        x = images.long()
        if self.levels != 256:
            x = torch.round(x.double() * (255 / (self.levels - 1))).long()
        return batch_to_triples(x, quality=self.quality, value_range=self.value_range)

    def decode(self, triples: Tensor, mask: Tensor) -> Tensor:
        """Images in levels 0..levels-1, int64 ``(B, C, H, W)``, of padded triples and their mask."""
        x = batch_from_triples(triples, mask, self.shape, quality=self.quality)
        if self.levels != 256:
            x = torch.round(x.double() * ((self.levels - 1) / 255)).long()
        return x
