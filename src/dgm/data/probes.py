"""Probe datasets: images with one controlled feature, and the extractors that measure it on any image.

Zhao, Ren, Yuan, Song, Goodman & Ermon 2018, "Bias and Generalization in Deep Generative Models:
An Empirical Study" (NeurIPS, arXiv:1811.03259) train a generative model on images in which one
feature takes a known value (or a known set of values), then measure that feature on the samples.
If the training distribution of feature ``f`` is ``p_train(f)``, the probe is the distribution of
the same feature over samples ``x ~ p_model``,

    p_gen(f = k) = E_{x ~ p_model} [ 1{ f(x) = k } ],                                   (1)

estimated by the share of samples with ``f(x) = k``. Their finding for numerosity (their Fig. 4):
a model trained on images of exactly 3 dots generates mostly 3, but also 2 and 4 (a log-normal-
like spread around the trained value); trained on several numerosities, it can generate counts in
between. The datasets here are rendered so that the extractors recover the feature *exactly* on
training images (no anti-aliasing, objects well apart), so any spread in (1) is the model's.

==============  =====  ===========================================================================
dataset         kind   what is controlled
==============  =====  ===========================================================================
``dots3``       grey   exactly 3 white discs (radius 2 px) on black, 32x32, random positions
``dots2or4``    grey   2 or 4 discs (half each): does the model fill in the unseen 3?
``colours``     RGB    32 columns coloured red : green : blue = 16 : 8 : 8 in a random order and
                       cyclic shift; the feature is the share of red pixels (1/2 in training)
``combos``      grey   two kinds of object, discs (13 px) and 5x5 squares (25 px): 2 discs + 1
                       square or 1 disc + 2 squares (half each); which other combinations appear?
==============  =====  ===========================================================================

Feature extractors (they take images ``(N, C, H, W)`` in [0, 1], generated ones included):

* **numerosity** :func:`count_dots`: threshold the grey level at 1/2, label the connected components
  (``scipy.ndimage.label``, 4-connectivity), count those of at least ``min_area`` pixels (a smaller
  speck is noise, not a dot: a training disc has 13 pixels);
* **combination** :func:`count_kinds`: the same components, a disc when it has fewer than
  ``SQUARE_AREA_CUT`` (19) pixels and a square otherwise; the value is ``10 * discs + squares``;
* **colour proportion** :func:`colour_shares`: classify each pixel to the nearest palette colour
  (Euclidean in RGB) and take the share of each colour; the feature is the red share in steps of
  1/32 (one column), :func:`red_share_bins`.

Each split draws its images from a fixed seed (a different one per split and per dataset):
10,000 training and 2,000 test images. There are no labels.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dgm.data.sources import Part, Request

SIZE = 32  # image side in pixels
RADIUS = 2  # a dot is the pixels within RADIUS of its centre (13 pixels)
MIN_DISTANCE = 2 * RADIUS + 3  # between dot centres: at least 2 black pixels between two dots
MIN_AREA = 3  # pixels: smaller bright components of a generated image are specks, not dots
SQUARE_AREA_CUT = 19  # pixels: half-way between a disc (13) and a 5x5 square (25)
COMBOS = ((2, 1), (1, 2))  # (discs, squares) of the training images of ``combos``
SPLIT_SIZES = {"train": 10_000, "test": 2_000}
SPLIT_SEEDS = {"train": 1811, "test": 3259}
#: red, green, blue: the palette of ``colours`` (levels 0..255)
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
COLOUR_NAMES = ["red", "green", "blue"]
COLUMNS = (16, 8, 8)  # of the 32 columns of a ``colours`` image, per palette colour

_offsets = np.array([(dy, dx) for dy in range(-RADIUS, RADIUS + 1) for dx in range(-RADIUS, RADIUS + 1)
                     if dy * dy + dx * dx <= RADIUS * RADIUS])  # (13, 2): the disc's pixels
# (25, 2): a square of the same extent as the disc, so the same placement keeps them apart
_square = np.array([(dy, dx) for dy in range(-RADIUS, RADIUS + 1) for dx in range(-RADIUS, RADIUS + 1)])


# --- numerosity ------------------------------------------------------------------------------------
def render_dots(counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images ``(N, 1, 32, 32)`` uint8 with exactly ``counts[i]`` discs each (0 or 255 levels),
    placed uniformly at random, every two centres at least ``MIN_DISTANCE`` apart."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros((len(counts), 1, SIZE, SIZE), np.uint8)
    for i, n in enumerate(counts):
        centres = _place(int(n), rng)
        pixels = (centres[:, None, :] + _offsets[None]).reshape(-1, 2)  # (n * 13, 2) as (row, column)
        out[i, 0, pixels[:, 0], pixels[:, 1]] = 255
    return out


def _place(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` disc centres ``(n, 2)`` inside the image, pairwise at least ``MIN_DISTANCE`` apart:
    random sequential placement, started again in the rare case it jams."""
    while True:
        centres: list[np.ndarray] = []
        for _ in range(200 * max(n, 1)):
            if len(centres) == n:
                return np.array(centres, np.int64).reshape(n, 2)
            c = rng.integers(RADIUS, SIZE - RADIUS, size=2)
            if all(np.sum((c - d) ** 2) >= MIN_DISTANCE ** 2 for d in centres):
                centres.append(c)
        if len(centres) == n:
            return np.array(centres, np.int64).reshape(n, 2)


def component_areas(images: np.ndarray, *, threshold: float = 0.5, min_area: int = MIN_AREA) -> list[np.ndarray]:
    """The pixel counts of the objects of each grey image ``(N, 1, H, W)`` (or ``(N, H, W)``) in [0, 1]:
    connected components of pixels above ``threshold`` with at least ``min_area`` pixels."""
    from scipy import ndimage

    images = np.asarray(images, dtype=np.float32)
    grey = images.reshape(len(images), *images.shape[-2:])
    out = []
    for image in grey:
        labelled, n = ndimage.label(image > threshold)  # 4-connectivity: the default structure
        areas = np.bincount(labelled.ravel(), minlength=n + 1)[1:]  # (n,) pixels per component
        out.append(areas[areas >= min_area])
    return out


def count_dots(images: np.ndarray, *, threshold: float = 0.5, min_area: int = MIN_AREA) -> np.ndarray:
    """The number of dots ``(N,)`` int64 of grey images: their objects (:func:`component_areas`)."""
    return np.array([len(a) for a in component_areas(images, threshold=threshold, min_area=min_area)], np.int64)


def count_kinds(images: np.ndarray) -> np.ndarray:
    """The (discs, squares) ``(N, 2)`` int64 of grey images: objects below ``SQUARE_AREA_CUT`` pixels
    are discs, the others squares."""
    return np.array([[np.sum(a < SQUARE_AREA_CUT), np.sum(a >= SQUARE_AREA_CUT)] for a in component_areas(images)],
                    np.int64).reshape(-1, 2)


def combination_code(images: np.ndarray) -> np.ndarray:
    """The feature of ``combos``: ``10 * discs + squares`` ``(N,)``, each count capped at 9."""
    kinds = np.minimum(count_kinds(images), 9)
    return 10 * kinds[:, 0] + kinds[:, 1]


def render_combos(pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images ``(N, 1, 32, 32)`` uint8 with ``pairs[i] = (discs, squares)`` objects, placed as dots are."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros((len(pairs), 1, SIZE, SIZE), np.uint8)
    for i, (discs, squares) in enumerate(pairs):
        centres = _place(int(discs + squares), rng)
        for k, centre in enumerate(centres):
            pixels = centre + (_offsets if k < discs else _square)
            out[i, 0, pixels[:, 0], pixels[:, 1]] = 255
    return out


def load_combos(req: Request) -> Part:
    """The ``req.split`` split of ``combos``: the pairs of ``COMBOS`` in turn."""
    return Part(_combos_split(req.split), None, levels=256,
                extras=_extras("combination", combinations=[list(c) for c in COMBOS]))


@functools.lru_cache(maxsize=2)
def _combos_split(split: str) -> np.ndarray:
    rng = np.random.default_rng([SPLIT_SEEDS[split], 21])
    x = render_combos(np.resize(np.array(COMBOS), (SPLIT_SIZES[split], 2)), rng)
    x.flags.writeable = False
    return x


def load_dots(counts: tuple[int, ...], req: Request) -> Part:
    """The ``req.split`` split of a numerosity dataset: each image has one of ``counts`` dots, the
    counts in equal shares (in turn), at random positions."""
    return Part(_dots_split(counts, req.split), None, levels=256, extras=_extras("numerosity", counts=list(counts)))


@functools.lru_cache(maxsize=4)
def _dots_split(counts: tuple[int, ...], split: str) -> np.ndarray:
    rng = np.random.default_rng([SPLIT_SEEDS[split], *counts])
    n = SPLIT_SIZES[split]
    x = render_dots(np.resize(np.array(counts), n), rng)
    x.flags.writeable = False  # cached: callers copy
    return x


# --- colour proportions ----------------------------------------------------------------------------
def render_colours(columns: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images ``(n, 3, 32, 32)`` uint8 of vertical stripes: ``columns[c]`` of the 32 columns in
    palette colour ``c``, each colour one stripe, the colours in a random order, the whole pattern
    shifted cyclically by a random number of columns (so only the proportion is fixed)."""
    if sum(columns) != SIZE:
        raise ValueError(f"columns {tuple(columns)} must add up to {SIZE}")
    out = np.empty((n, 3, SIZE, SIZE), np.uint8)
    for i in range(n):
        order = rng.permutation(len(columns))
        colour_of_column = np.concatenate([np.full(columns[c], c) for c in order])  # (32,)
        colour_of_column = np.roll(colour_of_column, int(rng.integers(SIZE)))
        out[i] = PALETTE[colour_of_column].T[:, None, :]  # (3, 1, 32) -> every row alike
    return out


def colour_shares(images: np.ndarray) -> np.ndarray:
    """The share of pixels ``(N, 3)`` of RGB images ``(N, 3, H, W)`` in [0, 1] nearest to each
    palette colour (red, green, blue)."""
    images = np.asarray(images, dtype=np.float32)
    palette = PALETTE.astype(np.float32) / 255  # (3 colours, 3 channels)
    pixels = images.transpose(0, 2, 3, 1)[..., None, :]  # (N, H, W, 1, 3)
    nearest = np.argmin(((pixels - palette) ** 2).sum(-1), axis=-1)  # (N, H, W)
    return np.stack([(nearest == c).mean(axis=(1, 2)) for c in range(len(palette))], axis=1)


def red_share_bins(images: np.ndarray) -> np.ndarray:
    """The feature of ``colours``: the share of red pixels ``(N,)`` in whole columns, 0..32
    (a training image has 16: half of its area is red)."""
    return np.rint(colour_shares(images)[:, 0] * SIZE).astype(np.int64)


def load_colours(req: Request) -> Part:
    """The ``req.split`` split of ``colours``: images ``(N, 3, 32, 32)``, red : green : blue columns 16 : 8 : 8."""
    return Part(_colours_split(req.split), None, levels=256, extras=_extras("colour-proportion"))


@functools.lru_cache(maxsize=2)
def _colours_split(split: str) -> np.ndarray:
    x = render_colours(COLUMNS, SPLIT_SIZES[split], np.random.default_rng([SPLIT_SEEDS[split], *COLUMNS]))
    x.flags.writeable = False
    return x


# --- the probes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """A feature to measure: its name, the extractor (images ``(N, C, H, W)`` in [0, 1] -> integer
    values ``(N,)``), the values a histogram shows at least, the largest value it shows on its own
    (larger ones share one bin, ``top + 1``, named ``>top``), and how to name a value."""

    feature: str
    measure: Callable[[np.ndarray], np.ndarray]
    values: tuple[int, ...]
    top: int
    name: Callable[[int], str] = str

    def label(self, k: int) -> str:
        return f">{self.name(self.top)}" if k > self.top else self.name(k)


PROBES: dict[str, Probe] = {
    # a noisy sample can show dozens of specks: counts above 12 are one bin
    "numerosity": Probe("number of dots", count_dots, tuple(range(0, 9)), 12),
    "colour-proportion": Probe("share of red pixels", red_share_bins, tuple(range(0, SIZE + 1, 4)), SIZE,
                               lambda k: f"{k}/{SIZE}"),
    "combination": Probe("discs + squares", combination_code, tuple(10 * a + b for a, b in COMBOS), 99,
                         lambda k: f"{k // 10}d+{k % 10}s"),
}


def _extras(probe: str, **more: object) -> dict[str, object]:
    return {"probe": probe, **more}


def probe_of(extras: dict[str, object]) -> Probe | None:
    """The probe of a dataset with ``extras`` (its DataSpec's), or None when it is not a probe dataset."""
    name = extras.get("probe")
    return PROBES.get(name) if isinstance(name, str) else None


def histogram(values: np.ndarray, probe: Probe) -> dict[int, float]:
    """The share of each feature value ``k`` among ``values`` (eq. 1), over ``probe.values`` and every
    value that occurs (those above ``probe.top`` as ``top + 1``), in increasing order of ``k``."""
    values = np.minimum(np.asarray(values, dtype=np.int64), probe.top + 1)  # (N,): the overflow bin last
    keys = sorted(set(probe.values) | set(values.tolist()))
    n = max(len(values), 1)
    return {k: float(np.sum(values == k)) / n for k in keys}
