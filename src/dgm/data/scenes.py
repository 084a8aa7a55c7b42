"""``scenes``: 32x32 RGB scenes of one or two coloured shapes on black, each with its caption.

A small stand-in for the captioned images of DALL-E (Ramesh et al. 2021, arXiv:2102.12092), made
like the procedural shapes of ``sprites`` so that every image has known factors, a caption that
names them ("a large green square above a small blue triangle"), and can be rendered again from
them (:func:`render`). Whether a text-to-image model composes what it has not seen is measured
with held-out compositions: no training scene holds a *green triangle*, though green things and
triangles are everywhere; the test split has both kinds (about 12% held out).

==========  ======  ===========================================================================
factor      values  value of index ``k``
==========  ======  ===========================================================================
count       2       one, two objects
shape_a     3       circle, square, triangle (object A: the only, the left or the upper one)
colour_a    4       red (255, 0, 0), green (0, 255, 0), blue (0, 0, 255), yellow (255, 255, 0)
size_a      2       small, large: half-width 3.5 or 6 pixels
shape_b     3       as shape_a, of object B (0 for one object)
colour_b    4       as colour_a (0 for one object)
size_b      2       as size_a (0 for one object)
relation    2       A left of B (side by side), A above B (one over the other); 0 for one object
shift_x     5       ``k - 2`` pixels: the whole scene moved right
shift_y     5       ``k - 2`` pixels: the whole scene moved down
==========  ======  ===========================================================================

Shapes fill a square box of the half-width: a circle of that radius, a square of 0.85 of it, a
triangle with its apex at the top of the box and its base the bottom side. The scene's centre is
pixel corner ``(16 + shift_x, 16 + shift_y)``; one object sits there, two sit 7 pixels either
side of it along the relation's axis, so two large objects stay 2 pixels apart and every object
stays 1 pixel clear of the frame. Each pixel is the fraction of its 4x4 sub-pixel centres inside
an object, times the object's colour (anti-aliased edges, as ``sprites``).

Captions read ``a SIZE COLOUR SHAPE`` and, for two objects, ``a SIZE COLOUR SHAPE left of a SIZE
COLOUR SHAPE`` or ``... above ...`` (object A first): at most 10 words of a 13-word vocabulary.
The positions are not captioned (:func:`specified`). Each split draws every factor uniformly from
a fixed seed (a different one per split), so half the scenes hold one object: 20,000 training
scenes (held-out ones redrawn) and 2,000 test scenes. The labels are object A's shape.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from dgm.data.captions import CaptionVocabulary, words
from dgm.data.sources import Part, Request
from dgm.errors import DgmError

SIZE = 32  # image side in pixels
SUPERSAMPLE = 4  # sub-pixels per pixel side
SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "green", "blue", "yellow"]
COLOUR_RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.float32)
SIZES = ["small", "large"]
HALF_WIDTHS = [3.5, 6.0]  # pixels, of each size
RELATIONS = ["left of", "above"]
SHIFTS = [-2, -1, 0, 1, 2]  # pixels, of the whole scene
SEPARATION = 7  # pixels from the scene's centre to each of two objects' centres
SQUARE_SIDE = 0.85  # the square's half-side, of the half-width: its area near the circle's
FACTORS = ["count", "shape_a", "colour_a", "size_a", "shape_b", "colour_b", "size_b", "relation",
           "shift_x", "shift_y"]
FACTOR_SIZES = [2, 3, 4, 2, 3, 4, 2, 2, len(SHIFTS), len(SHIFTS)]
FACTOR_VALUES = [["one", "two"], SHAPES, COLOURS, SIZES, SHAPES, COLOURS, SIZES, RELATIONS, SHIFTS, SHIFTS]
#: the factors of object B and the relation, zero in a scene of one object
B_FACTORS = [4, 5, 6, 7]
#: the position factors' value where a caption leaves them free (:func:`caption_factors`): no shift
CANONICAL_SHIFT = SHIFTS.index(0)
HELDOUT = "green triangle"
CAPTION_WORDS = ["a", *SIZES, *COLOURS, *SHAPES, "left", "of", "above"]
CAPTION_LENGTH = 10  # "a small red circle left of a large blue square"
SPLIT_SIZES = {"train": 20_000, "test": 2_000}
SPLIT_SEEDS = {"train": 3031, "test": 3032}
_CHUNK = 2048  # images rendered at once (bounds the gathered coverage to a few MB)
_PAD = 32  # the templates' centre, in pixels from their corner (they are 2 * _PAD pixels wide)


def vocabulary() -> CaptionVocabulary:
    """The vocabulary of every scene caption."""
    return CaptionVocabulary(CAPTION_WORDS, CAPTION_LENGTH)


#: captions a report draws: seen compositions, and (marked *) held-out ones with a green triangle
EXAMPLE_CAPTIONS = ["a small red circle", "a large blue square", "a large green triangle",  # *
                    "a small yellow triangle left of a large blue circle",
                    "a large green triangle above a small red square",  # *
                    "a small green circle left of a large red triangle"]


def caption_word_ids(factors: np.ndarray) -> np.ndarray:
    """The word ids ``(N, 10)`` int64 of the captions of the factor indices ``(N, 10)``."""
    return vocabulary().encode(caption(factors)).numpy()


def load(req: Request) -> Part:
    """The ``req.split`` split: images ``(N, 3, 32, 32)``, shape-of-A labels, factors ``(N, 10)``,
    caption word ids ``(N, 10)``."""
    x, factors, ids = _split(req.split)
    return Part(x, factors[:, 1].copy(), levels=256, class_names=SHAPES, factors=factors, captions=ids,
                extras={"factors": FACTORS, "factor_sizes": FACTOR_SIZES, "factor_values": FACTOR_VALUES,
                        "caption_words": CAPTION_WORDS, "caption_length": CAPTION_LENGTH, "heldout": HELDOUT,
                        "example_captions": EXAMPLE_CAPTIONS})


@functools.lru_cache(maxsize=2)
def _split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    factors = _draw(rng, SPLIT_SIZES[split])
    while split == "train" and (redraw := is_heldout(factors)).any():  # rejection: seen compositions only
        factors[redraw] = _draw(rng, int(redraw.sum()))
    x, ids = render(factors), caption_word_ids(factors)
    for a in (x, factors, ids):
        a.flags.writeable = False  # cached: callers copy
    return x, factors, ids


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    factors = np.stack([rng.integers(k, size=n) for k in FACTOR_SIZES], axis=1)
    return _canonical(factors)


def _canonical(factors: np.ndarray) -> np.ndarray:
    """``factors`` with object B's factors and the relation zeroed in scenes of one object."""
    factors = factors.copy()
    factors[np.ix_(factors[:, 0] == 0, B_FACTORS)] = 0
    return factors


def _check(factors: np.ndarray) -> np.ndarray:
    """``factors`` as an int64 array ``(N, 10)`` (one row may be given alone), or a DgmError."""
    factors = np.asarray(factors, dtype=np.int64)
    factors = factors[None] if factors.ndim == 1 else factors
    if factors.ndim != 2 or factors.shape[1] != len(FACTORS):
        raise DgmError(f"scene factors must be an array (N, {len(FACTORS)}) ({', '.join(FACTORS)}), not of shape "
                       f"{factors.shape}: see dgm.data.scenes")
    if (factors < 0).any() or (factors >= FACTOR_SIZES).any():
        raise DgmError(f"scene factors must be indices below {FACTOR_SIZES} ({', '.join(FACTORS)}), found a row "
                       f"{factors[((factors < 0) | (factors >= FACTOR_SIZES)).any(axis=1)][0].tolist()}: "
                       "see dgm.data.scenes")
    return factors


# --- rendering ---------------------------------------------------------------------------------------
def render(factors: np.ndarray) -> np.ndarray:
    """Images ``(N, 3, 32, 32)`` uint8 of the factor indices ``(N, 10)`` (module docstring).

    Object B's factors and the relation are ignored in scenes of one object.
    """
    factors = _check(factors)
    return np.concatenate([_render(factors[i:i + _CHUNK]) for i in range(0, len(factors), _CHUNK)]
                          or [np.zeros((0, 3, SIZE, SIZE), np.uint8)])


def _render(factors: np.ndarray) -> np.ndarray:
    count, shape_a, colour_a, size_a, shape_b, colour_b, size_b, relation, sx, sy = factors.T
    two = count == 1
    # the scene's centre, and each object's offset from it along the relation's axis: A left / up
    cx, cy = SIZE // 2 + np.array(SHIFTS)[sx], SIZE // 2 + np.array(SHIFTS)[sy]
    dx = np.where(two & (relation == 0), SEPARATION, 0)
    dy = np.where(two & (relation == 1), SEPARATION, 0)
    a = _coverage(shape_a, size_a, cx - dx, cy - dy)  # (B, H, W)
    b = _coverage(shape_b, size_b, cx + dx, cy + dy) * two[:, None, None]  # absent from scenes of one object
    # the objects never overlap, so their colours add without clipping: (B, 3, H, W)
    rgb = a[:, None] * COLOUR_RGB[colour_a][:, :, None, None] + b[:, None] * COLOUR_RGB[colour_b][:, :, None, None]
    return np.rint(rgb).astype(np.uint8)


def _coverage(shape: np.ndarray, size: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Coverage ``(B, H, W)`` of objects centred on pixel corners ``(cx, cy)``: their template moved there."""
    pixels = np.arange(SIZE)
    rows = pixels[None, :, None] - cy[:, None, None] + _PAD  # (B, H, 1)
    cols = pixels[None, None, :] - cx[:, None, None] + _PAD  # (B, 1, W)
    return _templates()[(shape * len(SIZES) + size)[:, None, None], rows, cols]


@functools.lru_cache(maxsize=1)
def _templates() -> np.ndarray:
    """Coverage ``(shapes * sizes, 64, 64)`` of each shape and size centred on the corner (32, 32).

    The centres are whole pixel corners, so the template moved by whole pixels is exactly the
    coverage rendered in place.
    """
    n = 2 * _PAD * SUPERSAMPLE
    centres = ((np.arange(n) + 0.5) / SUPERSAMPLE - _PAD).astype(np.float64)  # sub-pixel centres
    u, v = centres[None, :], centres[:, None]  # rightwards, downwards from the centre
    out = []
    for shape in SHAPES:
        for r in HALF_WIDTHS:
            if shape == "circle":
                inside = u ** 2 + v ** 2 <= r ** 2
            elif shape == "square":
                inside = np.maximum(np.abs(u), np.abs(v)) <= SQUARE_SIDE * r
            else:  # apex (0, -r), base from (-r, r) to (r, r): half as wide as it is far below the apex
                inside = (np.abs(v) <= r) & (np.abs(u) <= (v + r) / 2)
            out.append(inside.reshape(2 * _PAD, SUPERSAMPLE, 2 * _PAD, SUPERSAMPLE).mean(axis=(1, 3)))
    templates = np.stack(out).astype(np.float32)
    templates.flags.writeable = False
    return templates


# --- captions ----------------------------------------------------------------------------------------
def caption(factors: np.ndarray) -> list[str]:
    """The caption of each scene of the factor indices ``(N, 10)``."""
    def thing(shape: int, colour: int, size: int) -> str:
        return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]}"

    out = []
    for count, sa, ca, za, sb, cb, zb, relation, _, _ in _check(factors):
        text = thing(sa, ca, za)
        out.append(f"{text} {RELATIONS[relation]} {thing(sb, cb, zb)}" if count else text)
    return out


_GRAMMAR = (f"'a SIZE COLOUR SHAPE', optionally followed by 'left of' or 'above' and 'a SIZE COLOUR SHAPE' "
            f"(sizes {', '.join(SIZES)}; colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)})")


def caption_factors(texts: Sequence[str]) -> np.ndarray:
    """The factor indices ``(N, 10)`` that each caption specifies; the positions, which no caption
    gives, at :data:`CANONICAL_SHIFT` (no shift).

    Raises:
        DgmError: a caption outside the grammar of :func:`caption`.
    """
    if isinstance(texts, str):
        texts = [texts]
    out = np.zeros((len(texts), len(FACTORS)), np.int64)
    out[:, 8:] = CANONICAL_SHIFT
    for n, text in enumerate(texts):
        ws = words(text)

        def thing(at: int) -> list[int]:
            a, size, colour, shape = (ws[at:at + 4] + [""] * 4)[:4]
            if a != "a" or size not in SIZES or colour not in COLOURS or shape not in SHAPES:
                raise DgmError(f"the caption {text!r} is not a scene caption: write {_GRAMMAR}")
            return [SHAPES.index(shape), COLOURS.index(colour), SIZES.index(size)]

        out[n, 1:4] = thing(0)
        rest = ws[4:]
        if not rest:
            continue
        relation = 0 if rest[:2] == ["left", "of"] else 1 if rest[:1] == ["above"] else None
        tail = rest[2:] if relation == 0 else rest[1:]
        if relation is None or len(tail) != 4:
            raise DgmError(f"the caption {text!r} is not a scene caption: write {_GRAMMAR}")
        out[n, 0], out[n, 7] = 1, relation
        out[n, 4:7] = thing(len(ws) - 4)
    return out


def specified(factors: np.ndarray) -> np.ndarray:
    """Which factors ``(N, 10)`` bool the caption of each scene fixes: the count and object A's
    always, object B's and the relation in scenes of two objects, the positions never."""
    factors = _check(factors)
    out = np.zeros(factors.shape, bool)
    out[:, :4] = True
    out[:, B_FACTORS] = (factors[:, 0] == 1)[:, None]
    return out


def is_heldout(factors: np.ndarray) -> np.ndarray:
    """Whether each scene ``(N,)`` holds a green triangle (held out of the training split)."""
    factors = _check(factors)
    green_triangle = SHAPES.index("triangle"), COLOURS.index("green")
    a = (factors[:, 1] == green_triangle[0]) & (factors[:, 2] == green_triangle[1])
    b = (factors[:, 4] == green_triangle[0]) & (factors[:, 5] == green_triangle[1]) & (factors[:, 0] == 1)
    return a | b
