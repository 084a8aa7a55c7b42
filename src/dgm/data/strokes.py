"""Pen strokes: the glyphs of the Hershey vector fonts as sequences of pen offsets (``hershey``, ``strokes:PATH``).

A glyph is drawn by a pen that moves along a few strokes (polylines). As in Graves 2013, "Generating
Sequences With Recurrent Neural Networks" (arXiv:1308.0850, section 4), each point of a glyph is one
row ``(dx, dy, pen_up)``: the pen's offset from the previous point (from the glyph's origin for the
first one) and a bit that is 1 where the point ends a stroke (the pen is lifted after it), so the
row after a 1 is the pen's move, in the air, to the start of the next stroke. The last point of
every glyph ends a stroke. Examples are stored padded with zero rows to ``max_points`` rows, with
their lengths (data of kind ``"points"``, shape ``(max_points, 3)``; every batch has a ``mask``).
Offsets are in units of :data:`SCALE` font units (``extras["scale"]``; the capitals of the Hershey
fonts are about 21 units tall), with ``y`` pointing up.

**The Hershey format** (``.jhf``, Allen V. Hershey's fonts as distributed by Debian's
``hershey-fonts-data``): a glyph is a line of a 5-character glyph number, a 3-character count of
vertices, then that many pairs of characters, each coordinate coded as ``ord(c) - ord("R")`` (``y``
pointing down). The first pair is the glyph's left and right bounds; the pair ``" R"`` lifts the pen.
A glyph longer than a line continues on the next lines (the original distribution wraps at 72
columns), so a glyph is read until it holds its count of pairs. :func:`parse_jhf`.

**Augmentation.** The fonts hold a few hundred distinct letters, so each glyph is drawn several
times (:data:`COPIES` per split), each copy with its own random slant (a shear ``x += tan(a) y``,
``a ~ U[-SLANT, SLANT]``), scale (``s ~ exp U[-SCALE_LOG_RANGE, SCALE_LOG_RANGE]``, the width by a
further ``exp U[-ASPECT_LOG_RANGE, ASPECT_LOG_RANGE]``) and jitter (``N(0, JITTER^2)`` font units
added to every point), all drawn from a fixed seed per split, so a split is the same at every load.
The jitter also makes the offsets continuous (the fonts' coordinates are integers), so a density
over them is finite. :func:`augment`.

* ``hershey``: the letters and digits (62 classes, the characters) of the Latin text fonts of
  :data:`HERSHEY_FONTS` in ``/usr/share/hershey-fonts`` (``apt-get install hershey-fonts-data``),
  each distinct glyph once (``futural`` repeats ``rowmans``, ``futuram`` ``rowmand``); the split is
  the 90/10 holdout of :mod:`dgm.data.files` over the distinct glyphs, so a held-out letter was
  never seen in any copy.
* ``hershey-words``: random strings of 2 to 6 letters and digits (:data:`WORD_LENGTHS`), each written
  in one of the fonts of ``hershey``: the glyphs' strokes side by side, the pen lifted between
  glyphs, each glyph advancing the pen by its width (its left and right bounds in the ``.jhf`` file,
  :func:`parse_jhf_bounds`), then the whole word slanted, scaled and jittered once
  (:func:`augment`). The characters are the example's caption, ids ``1 + CHARACTERS.index(c)`` padded
  with 0 (``Batch.captions``; the alphabet in ``extras["caption_characters"]``), for handwriting
  synthesis (Graves 2013, section 5). :data:`WORDS` distinct strings, drawn from a fixed seed, are
  split 90/10 by the holdout of :mod:`dgm.data.files`, so no held-out string is written in training
  (its glyphs and fonts are); words longer than :data:`WORDS_MAX_POINTS` points are dropped and
  counted (``extras["dropped_words"]``).
"""
from __future__ import annotations

import functools
import string
from pathlib import Path

import numpy as np

from dgm.data.files import holdout
from dgm.data.sources import Part, Request
from dgm.errors import DgmError

#: where Debian's hershey-fonts-data puts the fonts (a module constant so tests can move it)
HERSHEY_DIR = Path("/usr/share/hershey-fonts")
#: the Latin text fonts of ``hershey``: simplex, duplex, complex, script and italic faces (the triplex and
#: gothic ones fill their strokes with dozens of hatching lines, up to 92 points a glyph)
HERSHEY_FONTS = ("cursive", "futural", "futuram", "rowmand", "rowmans", "scriptc", "scripts", "timesi", "timesr")
#: the characters of ``hershey`` (the classes); a .jhf font holds the glyphs of ASCII 32..127 in order
CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase
FIRST_CODE = 32  # the character of a font file's first glyph (the space)
HERSHEY_MAX_POINTS = 64  # the longest glyph of HERSHEY_FONTS (scriptc's "W"), the padded length

SCALE = 10.0  # font units per data unit
COPIES = {"train": 16, "test": 8}  # augmented copies of each glyph
SPLIT_SEEDS = {"train": 1308, "test": 850}  # the seeds of the augmentation (Graves 2013 is arXiv:1308.0850)
SLANT = 0.25  # radians, the largest shear angle
SCALE_LOG_RANGE = 0.15  # log of the largest overall scale factor
ASPECT_LOG_RANGE = 0.1  # log of the largest extra factor of the width
JITTER = 0.3  # font units, the sd of the noise of every point

WORDS = 5000  # distinct strings of hershey-words, 90/10 train/test
WORD_LENGTHS = (2, 6)  # the fewest and the most characters of a word
WORDS_SEED = 46  # the seed of the strings (Graves's window is eq. 46)
WORDS_MAX_POINTS = 256  # the padded length of hershey-words; longer words are dropped

PEN_UP = (-50, 0)  # " R": ord(" ") - ord("R"), ord("R") - ord("R")
HOW_TO_GET = "apt-get install hershey-fonts-data (Debian/Ubuntu)"

Strokes = list[np.ndarray]  # the strokes of one glyph, each (n_i, 2) float64 points in font units, y up


# --- the Hershey format --------------------------------------------------------------------------------
def parse_jhf(text: str, source: str = "<text>") -> list[tuple[int, Strokes]]:
    """The glyphs of a Hershey ``.jhf`` text: ``(glyph number, strokes)`` each, in file order.

    Each stroke is an ``(n, 2)`` array of the points the pen passes, in font units with ``y`` up (the
    file's ``y`` points down). A glyph without strokes (the space) has an empty list. Lines may be
    continued on the next ones (module docstring); blank lines are skipped.

    Raises:
        DgmError: a glyph header that is not two numbers, or a file that ends inside a glyph.
    """
    return [(number, strokes) for number, strokes, _ in parse_jhf_bounds(text, source)]


def parse_jhf_bounds(text: str, source: str = "<text>") -> list[tuple[int, Strokes, tuple[int, int]]]:
    """:func:`parse_jhf` with each glyph's left and right bounds ``(left, right)`` in font units (the
    first pair of its vertices; the strokes' ``x`` is measured from the glyph's centre), so a line of
    text advances by ``right - left`` per glyph."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    glyphs, i = [], 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line.strip():
            continue
        number, count = line[:5].strip(), line[5:8].strip()
        if not (number.isdigit() and count.isdigit() and int(count) > 0):
            raise DgmError(f"{source}, line {i}: {line[:8]!r} is not a Hershey glyph header (a 5-character glyph "
                           f"number and a 3-character count of vertices): strokes:PATH reads Hershey .jhf files")
        body, want = line[8:], 2 * int(count)
        while len(body) < want and i < len(lines):  # a glyph wrapped over several lines
            body, i = body + lines[i], i + 1
        if len(body) < want:
            raise DgmError(f"{source}: glyph {number} has {len(body) // 2} of its {int(count)} vertices when the "
                           f"file ends: the file is cut short")
        left, right = (ord(c) - ord("R") for c in body[:2])  # the first pair holds the left and right bounds
        glyphs.append((int(number), _strokes(body[2:want]), (left, right)))
    return glyphs


def _strokes(pairs: str) -> Strokes:
    """The strokes of a glyph's coded vertex pairs (after its bounds), repeated points dropped."""
    codes = np.frombuffer(pairs.encode("latin-1"), np.uint8).astype(np.int64).reshape(-1, 2) - ord("R")
    strokes, current = [], []
    for x, y in codes.tolist():
        if (x, y) == PEN_UP:
            strokes.append(current)
            current = []
        elif not current or current[-1] != (x, -y):
            current.append((x, -y))  # y up
    strokes.append(current)
    return [np.array(s, np.float64) for s in strokes if s]


# --- strokes as offsets ----------------------------------------------------------------------------------
def to_offsets(strokes: Strokes) -> np.ndarray:
    """The rows ``(dx, dy, pen_up)`` ``(T, 3)`` of a glyph's strokes (module docstring), in the strokes'
    units: offsets from the previous point (from the origin for the first), pen_up 1 at each stroke's end."""
    points = np.concatenate(strokes)  # (T, 2)
    ends = np.cumsum([len(s) for s in strokes]) - 1
    pen_up = np.zeros(len(points))
    pen_up[ends] = 1
    return np.column_stack([np.diff(points, axis=0, prepend=0.0), pen_up])


def to_strokes(rows: np.ndarray) -> Strokes:
    """The strokes (absolute points ``(n_i, 2)``) of rows ``(T, 3)`` of offsets and pen bits, the inverse
    of :func:`to_offsets`; a pen bit above 1/2 ends a stroke."""
    points = np.cumsum(rows[:, :2], axis=0)
    ends = np.flatnonzero(rows[:, 2] > 0.5) + 1
    return [s for s in np.split(points, ends) if len(s)]


def augment(strokes: Strokes, rng: np.random.Generator) -> Strokes:
    """One randomly slanted, scaled and jittered copy of a glyph's strokes (module docstring)."""
    slant = np.tan(rng.uniform(-SLANT, SLANT))
    scale = np.exp(rng.uniform(-SCALE_LOG_RANGE, SCALE_LOG_RANGE))
    width = scale * np.exp(rng.uniform(-ASPECT_LOG_RANGE, ASPECT_LOG_RANGE))
    out = []
    for s in strokes:
        x, y = s[:, 0] + slant * s[:, 1], s[:, 1]  # shear: the slant of italics
        out.append(np.column_stack([width * x, scale * y]) + JITTER * rng.standard_normal(s.shape))
    return out


def stroke_part(glyphs: list[Strokes], labels: list[int] | None, req: Request, source: str, *,
                max_points: int | None = None, class_names: list[str] | None = None,
                extras: dict | None = None) -> Part:
    """The ``req.split`` of ``glyphs`` (the 90/10 holdout), each drawn :data:`COPIES` times by
    :func:`augment` with the split's seed, as offsets in data units padded to ``max_points`` rows
    (default: the longest glyph), in a seeded random order."""
    if req.size is not None or req.channels is not None:
        raise DgmError("data.size and data.channels apply to images and text; pen strokes have neither: drop them")
    if len(glyphs) < 2:
        raise DgmError(f"{source} holds {len(glyphs)} glyph(s) with pen strokes; a train/test holdout needs at "
                       "least 2: strokes:PATH reads Hershey .jhf glyph files (such as those of "
                       f"{HOW_TO_GET}, in {HERSHEY_DIR})")
    length = max_points or max(sum(map(len, g)) for g in glyphs)
    rng = np.random.default_rng(SPLIT_SEEDS[req.split])
    index = [i for i in holdout(len(glyphs), req.split) for _ in range(COPIES[req.split])]
    index = [index[k] for k in rng.permutation(len(index))]
    x = np.zeros((len(index), length, 3), np.float32)
    lengths = np.zeros(len(index), np.int64)
    for row, i in enumerate(index):
        offsets = to_offsets(augment(glyphs[i], rng)) / [SCALE, SCALE, 1.0]
        if len(offsets) > length:
            raise DgmError(f"{source}: a glyph has {len(offsets)} points, more than the {length} of this dataset")
        x[row, :len(offsets)], lengths[row] = offsets, len(offsets)
    y = None if labels is None else np.array([labels[i] for i in index], np.int64)
    return Part(x, y, levels=None, class_names=class_names, kind="points", lengths=lengths,
                extras={"strokes": True, "scale": SCALE, "rows": ["dx", "dy", "pen_up"], "glyphs": len(glyphs),
                        "copies": COPIES[req.split], **(extras or {})})


# --- the datasets ----------------------------------------------------------------------------------------
def load_hershey(req: Request) -> Part:
    """``hershey``: the letters and digits of :data:`HERSHEY_FONTS`, each distinct glyph once (module docstring)."""
    glyphs, labels = _hershey(HERSHEY_DIR)
    return stroke_part(glyphs, labels, req, str(HERSHEY_DIR), max_points=HERSHEY_MAX_POINTS,
                       class_names=list(CHARACTERS), extras={"fonts": list(HERSHEY_FONTS)})


@functools.lru_cache(maxsize=1)
def _hershey(folder: Path) -> tuple[list[Strokes], list[int]]:
    paths = [folder / f"{font}.jhf" for font in HERSHEY_FONTS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DgmError(f"hershey data not found: no {', '.join(missing)} in {folder}; to get it: {HOW_TO_GET}, or "
                       "train on Hershey files of your own with --data strokes:PATH")
    glyphs, labels, seen = [], [], set()
    for path in paths:
        for code, (_, strokes) in enumerate(parse_jhf(_read(path), str(path)), FIRST_CODE):
            key = tuple(s.tobytes() for s in strokes), chr(code)  # the same glyph in two fonts is kept once
            if chr(code) in CHARACTERS and strokes and key not in seen:
                seen.add(key)
                glyphs.append(strokes)
                labels.append(CHARACTERS.index(chr(code)))
    return glyphs, labels


def load_hershey_words(req: Request) -> Part:
    """``hershey-words``: random strings written in the fonts of ``hershey``, the characters as captions
    (module docstring)."""
    if req.size is not None or req.channels is not None:
        raise DgmError("data.size and data.channels apply to images and text; pen strokes have neither: drop them")
    fonts = _hershey_fonts(HERSHEY_DIR)
    rng = np.random.default_rng(WORDS_SEED)
    texts: dict[str, None] = {}  # distinct strings, in the order drawn
    while len(texts) < WORDS:
        n = rng.integers(WORD_LENGTHS[0], WORD_LENGTHS[1] + 1)
        texts["".join(rng.choice(list(CHARACTERS), n))] = None
    strings = [list(texts)[i] for i in sorted(holdout(WORDS, req.split))]
    rng = np.random.default_rng(SPLIT_SEEDS[req.split])
    x = np.zeros((len(strings), WORDS_MAX_POINTS, 3), np.float32)
    lengths = np.zeros(len(strings), np.int64)
    captions = np.zeros((len(strings), WORD_LENGTHS[1]), np.int64)
    kept = 0
    for text in strings:
        font = fonts[rng.integers(len(fonts))]
        offsets = to_offsets(augment(write(text, font), rng)) / [SCALE, SCALE, 1.0]
        if len(offsets) > WORDS_MAX_POINTS:
            continue
        x[kept, :len(offsets)], lengths[kept] = offsets, len(offsets)
        captions[kept, :len(text)] = [1 + CHARACTERS.index(c) for c in text]
        kept += 1
    return Part(x[:kept], None, levels=None, kind="points", lengths=lengths[:kept], captions=captions[:kept],
                extras={"strokes": True, "scale": SCALE, "rows": ["dx", "dy", "pen_up"], "fonts": list(HERSHEY_FONTS),
                        "caption_characters": CHARACTERS, "caption_length": WORD_LENGTHS[1],
                        "words": WORDS, "dropped_words": len(strings) - kept,
                        "example_captions": ["dgm", "2026", "Graves", "pen", "Ink42", "hello"]})


Font = dict[str, tuple[Strokes, tuple[int, int]]]  # a character's strokes and its left and right bounds


def write(text: str, font: Font) -> Strokes:
    """The strokes of ``text`` in ``font``, glyph after glyph: each moved right so that its left bound
    lies where the previous glyph's right bound was (the pen starts at 0)."""
    strokes, cursor = [], 0.0
    for c in text:
        glyph, (left, right) = font[c]
        strokes += [s + [cursor - left, 0.0] for s in glyph]
        cursor += right - left
    return strokes


@functools.lru_cache(maxsize=1)
def _hershey_fonts(folder: Path) -> list[Font]:
    """The letters and digits of each of :data:`HERSHEY_FONTS` (those fonts that have them all)."""
    _hershey(folder)  # refuses missing fonts in one line
    fonts = []
    for font in HERSHEY_FONTS:
        path = folder / f"{font}.jhf"
        glyphs = {chr(code): (strokes, bounds)
                  for code, (_, strokes, bounds) in enumerate(parse_jhf_bounds(_read(path), str(path)), FIRST_CODE)
                  if chr(code) in CHARACTERS and strokes}
        if len(glyphs) == len(CHARACTERS):
            fonts.append(glyphs)
    return fonts


def load_strokes(req: Request) -> Part:
    """``strokes:PATH``: every glyph with strokes of a ``.jhf`` file, or of the ``.jhf`` files under a folder."""
    path = Path(req.path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jhf") if p.is_file())
        if not files:
            raise DgmError(f"folder {path} holds no .jhf files: strokes:PATH reads a Hershey .jhf file or a folder "
                           f"of them ({HOW_TO_GET} puts some in {HERSHEY_DIR})")
    elif path.is_file():
        files = [path]
    else:
        raise DgmError(f"cannot read pen strokes from {path}: no such file or folder")
    glyphs = [strokes for f in files for _, strokes in parse_jhf(_read(f), str(f)) if strokes]
    if not glyphs:
        raise DgmError(f"{path} holds no pen strokes: strokes:PATH reads Hershey .jhf glyph files (a glyph a line: "
                       f"number, vertex count, coordinate pairs), such as those of {HOW_TO_GET}, in {HERSHEY_DIR}")
    return stroke_part(glyphs, None, req, str(path))


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("latin-1")
    except OSError as e:
        raise DgmError(f"cannot read stroke file {path}: {e}") from e
