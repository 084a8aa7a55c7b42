"""Variable-length data: byte-level text (token sequences) and 2-D point sets.

Both are stored padded to a fixed length, with the true length of each example (``Part.lengths``),
so every batch carries a ``mask`` of its real tokens or points (:class:`dgm.data.core.Batch`).

* ``text:PATH``, ``docs:PATH`` and ``fortunes``: byte-level token sequences (vocabulary 256, the
  bytes of UTF-8 text), padded with zeros to ``size`` tokens (the context; ``data.size``, default
  :data:`MAX_LENGTH`). ``text:PATH`` reads one sequence per non-blank line, ``docs:PATH`` one per
  document (blocks of lines separated by blank lines), of a text file or of every file under a
  folder (sorted by path); ``fortunes`` one per fortune of the fortune-mod database (records
  separated by a line ``%``). Longer sequences are left out (their number is in
  ``extras["too_long"]``). A file holding a NUL byte (the padding and end token) is not text and is
  refused. The split is the 90/10 holdout of :mod:`dgm.data.files`.
* ``shapes2d``: sets of 8 to 64 points on the outline of a circle or a square (the label), padded
  with zeros to 64 points.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from dgm.data.files import holdout
from dgm.data.sources import Part, Request
from dgm.errors import DgmError

MAX_LENGTH = 256  # tokens per sequence, padding included
VOCAB_SIZE = 256  # bytes
#: where fortune-mod's database lives (a module constant so tests can move it)
FORTUNES_DIR = Path("/usr/share/games/fortunes")


# --- token sequences -----------------------------------------------------------------------------------
def pack(sequences: list[bytes], max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as tokens ``(N, max_length)`` uint8, zero-padded, and their lengths ``(N,)``."""
    x = np.zeros((len(sequences), max_length), np.uint8)
    for i, s in enumerate(sequences):
        x[i, :len(s)] = np.frombuffer(s, np.uint8)
    return x, np.array([len(s) for s in sequences], np.int64)


def unpack(x: torch.Tensor, lengths: torch.Tensor | None = None) -> list[bytes]:
    """The bytes of each padded token sequence ``x (N, L)`` (the inverse of :func:`pack`): its first
    ``lengths`` tokens, or those before the first 0 (the padding)."""
    rows = x.to(torch.uint8).cpu().numpy()
    if lengths is None:
        return [row.tobytes().split(b"\0", 1)[0] for row in rows]
    return [row[:n].tobytes() for row, n in zip(rows, lengths.tolist())]


def _text_part(sequences: list[bytes], req: Request, source: str) -> Part:
    """The ``req.split`` of ``sequences`` (holdout), those up to ``req.size`` bytes, as a Part."""
    if req.channels is not None:
        raise DgmError("data.channels applies to images; text has none: drop it")
    size = req.size or MAX_LENGTH
    kept = [s for s in sequences if 0 < len(s) <= size]
    if len(kept) < 2:
        longest = max(map(len, sequences), default=0)
        hint = f"; the longest is {longest} bytes: raise data.size (the context, now {size})" if longest > size else ""
        raise DgmError(f"{source} holds {len(kept)} sequence(s) of 1 to {size} bytes; a train/test holdout "
                       f"needs at least 2{hint}")
    x, lengths = pack([kept[i] for i in holdout(len(kept), req.split)], size)
    return Part(x, None, levels=VOCAB_SIZE, kind="tokens", lengths=lengths,
                extras={"too_long": len(sequences) - len(kept)})


def load_text(req: Request) -> Part:
    """``text:PATH``: each non-blank line (without its line break) of a file, or of every file under a folder."""
    return _text_part([line for text in _read_texts(req.path) for line in _lines(text)], req, req.path)


def load_docs(req: Request) -> Part:
    """``docs:PATH``: each document (lines up to a blank line) of a file, or of every file under a folder."""
    return _text_part([doc for text in _read_texts(req.path) for doc in _documents(text)], req, req.path)


def _lines(text: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in text.split(b"\n") if line.strip()]  # blank lines are no sequence


def _documents(text: bytes) -> list[bytes]:
    """Blocks of non-blank lines, joined by their line breaks (a blank line holds only whitespace)."""
    docs, block = [], []
    for line in text.replace(b"\r\n", b"\n").split(b"\n") + [b""]:
        if line.strip():
            block.append(line)
        elif block:
            docs.append(b"\n".join(block))
            block = []
    return docs


def _read_texts(name: str) -> list[bytes]:
    """The content of the file ``name``, or of every regular file under the folder ``name``."""
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DgmError(f"folder {path} holds no files: text:PATH and docs:PATH read a text file or a folder of them")
    elif path.is_file():
        files = [path]
    else:
        raise DgmError(f"cannot read text from {path}: no such file or folder")
    return [_read_text(f.resolve(), *_stamp(f)) for f in files]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as e:
        raise DgmError(f"cannot read text file {path}: {e}") from e
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _read_text(path: Path, mtime_ns: int, size: int) -> bytes:
    """The bytes of the text file ``path`` (the time and size in the cache key catch edits)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DgmError(f"cannot read text file {path}: {e}") from e
    if b"\x00" in data:
        raise DgmError(f"{path} is not a text file (it holds NUL bytes, at byte {data.index(0)}): "
                       "text:PATH and docs:PATH read text")
    return data


def load_fortunes(req: Request) -> Part:
    """``fortunes``: every fortune of fortune-mod's database, one sequence each."""
    return _text_part(_fortunes(FORTUNES_DIR), req, str(FORTUNES_DIR))


@functools.lru_cache(maxsize=1)
def _fortunes(folder: Path) -> list[bytes]:
    """The fortunes of every database file in ``folder`` (sorted; not the ``.dat`` indexes or links)."""
    paths = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink() and p.suffix != ".dat") \
        if folder.is_dir() else []
    if not paths:
        raise DgmError(f"no fortune files in {folder}: apt-get install fortunes-min (Debian/Ubuntu), "
                       "or train on a text file of your own with --data text:PATH")
    records: list[bytes] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DgmError(f"cannot read fortune file {path}: {e}") from e
        # records are separated by a line holding only "%"
        records += [r.strip(b"\n") for r in data.replace(b"\r\n", b"\n").split(b"\n%\n")]
    return [r for r in records if r]


# --- point sets ------------------------------------------------------------------------------------------
MAX_POINTS = 64
MIN_POINTS = 8
SHAPES2D = ["circle", "square"]
SPLIT_SIZES = {"train": 10_000, "test": 2_000}
SPLIT_SEEDS = {"train": 2024, "test": 2025}
POINT_NOISE = 0.01  # sd of the Gaussian jitter of each point


def load_shapes2d(req: Request) -> Part:
    """``shapes2d``: the ``req.split`` split of :func:`shapes2d`."""
    return shapes2d(SPLIT_SIZES[req.split], SPLIT_SEEDS[req.split])


def shapes2d(n: int, seed: int) -> Part:
    """``n`` sets of points on the outline of a circle or an axis-aligned square.

    Each set draws its shape (the label) uniformly, a centre in ``U[-0.5, 0.5]^2``, a size (radius,
    or half-side) in ``U[0.3, 1]``, a number of points uniform on ``8..64``, and its points
    uniformly along the outline, each jittered by ``N(0, 0.01^2)``; points ``(n, 64, 2)`` float32
    padded with zeros, in random order.
    """
    rng = np.random.default_rng(seed)
    label = rng.integers(len(SHAPES2D), size=n)
    centre = rng.uniform(-0.5, 0.5, (n, 1, 2))
    size = rng.uniform(0.3, 1.0, (n, 1, 1))
    lengths = rng.integers(MIN_POINTS, MAX_POINTS + 1, size=n)
    t = rng.uniform(0, 1, (n, MAX_POINTS))  # position along the outline, as a fraction of it
    angle = 2 * np.pi * t
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    # the square's outline: side floor(4t), at fraction 4t mod 1 along it, counter-clockwise
    side, along = np.divmod(4 * t, 1)
    a = 2 * along - 1
    square = np.select([side[..., None] == k for k in range(4)],
                       [np.stack(p, axis=-1) for p in ((np.ones_like(a), a), (-a, np.ones_like(a)),
                                                         (-np.ones_like(a), -a), (a, -np.ones_like(a)))])
    outline = np.where(label[:, None, None] == 0, circle, square)
    x = centre + size * outline + POINT_NOISE * rng.standard_normal((n, MAX_POINTS, 2))
    x[np.arange(MAX_POINTS)[None, :] >= lengths[:, None]] = 0  # padding
    return Part(x.astype(np.float32), label.astype(np.int64), levels=None, class_names=SHAPES2D,
                kind="points", lengths=lengths.astype(np.int64), extras={"min_points": MIN_POINTS})
