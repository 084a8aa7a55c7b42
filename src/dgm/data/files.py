"""The user's own data: ``folder:PATH`` (a folder of PNG/JPEG images) and ``npz:PATH`` (numpy arrays).

Without a given test split, both hold out 10% of the examples: a permutation drawn from
``numpy.random.default_rng(HOLDOUT_SEED)``, whose first ``ceil(N / 10)`` indices are the test split
and the rest the training split (both in that shuffled order, so ``Dataset.subset(n)`` is a fair
sample). The holdout depends only on ``N``, so it is the same in every run.
"""
from __future__ import annotations

import functools
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dgm.data.sources import Part, Request
from dgm.errors import DgmError

HOLDOUT_SEED = 0
TEST_FRACTION = 0.1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = 32


def holdout(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` in the deterministic 90/10 holdout of ``n`` examples (module docstring)."""
    order = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    n_test = math.ceil(n * TEST_FRACTION)
    return order[:n_test] if split == "test" else order[n_test:]


# --- folder:PATH -------------------------------------------------------------------------------------
def load_folder(req: Request) -> Part:
    """Every PNG/JPEG image under ``req.path`` (recursively, in sorted path order), as levels.

    Each image is center-cropped to a square (keeping its aspect ratio, like the usual
    Resize+CenterCrop pipeline for CelebA or LSUN) and resized to ``size x size`` (default 32) with
    PIL's bicubic filter (``Image.Resampling.BICUBIC``). It is converted to grayscale for
    ``channels=1`` and to RGB for ``channels=3``; by default the data is grayscale when every image
    is (PIL mode ``"L"`` or ``"1"``) and RGB otherwise.

    Labels: when every image lies in a sub-folder, the name of its immediate sub-folder is its
    class (``class_names`` are the sorted sub-folder names); otherwise there are no labels.
    The split is the holdout of the module docstring.
    """
    root = Path(req.path).expanduser()
    if not root.is_dir():
        raise DgmError(f"folder {root} does not exist" + (" (it is a file)" if root.exists() else ""))
    size = DEFAULT_SIZE if req.size is None else req.size
    if size < 1:
        raise DgmError(f"size must be a positive number of pixels, not {size}")
    if req.channels not in (None, 1, 3):
        raise DgmError(f"channels must be 1 (grayscale) or 3 (RGB), not {req.channels}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if len(paths) < 2:
        found = "only one image" if paths else f"no PNG/JPEG images ({', '.join(IMAGE_EXTENSIONS)})"
        raise DgmError(f"{found} found under {root}: a train/test holdout needs at least 2")
    # the modification times and sizes are part of the cache key, so edited folders are re-read
    stamps = tuple((p, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    x, y, class_names = _read_folder(root, stamps, size, req.channels)
    index = holdout(len(x), req.split)
    return Part(x[index], None if y is None else y[index], levels=256, class_names=class_names)


@functools.lru_cache(maxsize=4)
def _read_folder(root: Path, stamps: tuple[tuple[Path, int, int], ...], size: int, channels: int | None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """All images as uint8 ``(N, C, size, size)``, their labels and class names (see load_folder)."""
    images = [_read_image(path, size, channels) for path, _, _ in stamps]
    # default channels: RGB as soon as one image is in colour; grayscale images then get 3 equal
    # channels, which is what PIL's L -> RGB conversion gives (and it commutes with resizing)
    c = max(len(a) for a in images)
    x = np.stack([np.repeat(a, c // len(a), axis=0) for a in images])
    folders = [path.relative_to(root).parts for path, _, _ in stamps]
    if any(len(parts) == 1 for parts in folders):
        return x, None, None
    class_names = sorted({parts[0] for parts in folders})
    index = {name: i for i, name in enumerate(class_names)}
    y = np.array([index[parts[0]] for parts in folders], dtype=np.int64)
    return x, y, class_names


def _read_image(path: Path, size: int, channels: int | None) -> np.ndarray:
    """One image as uint8 ``(C, size, size)``; C is ``channels``, or 1 or 3 by the image's own mode."""
    try:
        with Image.open(path) as im:
            gray = channels == 1 or (channels is None and im.mode in ("L", "1"))
            im = im.convert("L" if gray else "RGB")  # decodes the whole file: corrupt data fails here
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DgmError(f"cannot read image {path}: {e}") from e
    w, h = im.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


# --- npz:PATH ------------------------------------------------------------------------------------------
_NPZ_KEYS = ("x", "y", "x_test", "y_test")
_EXPECTED_X = ("expected uint8 images (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, "
               "or floats of those shapes or (N, D)")


def load_npz(req: Request) -> Part:
    """Arrays ``x`` (and optionally ``y``) of a ``.npz`` file, read with ``allow_pickle=False``.

    ``x`` as uint8 is images of levels 0..255: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``
    with ``C`` 1 or 3 (NHWC is recognised by a last dimension of 1 or 3 and a second that is not,
    and transposed to NCHW). ``x`` as floats is continuous data, ``(N, D)`` or images, stored as
    float32. ``y`` holds ``N`` non-negative integer labels. Arrays ``x_test`` (and ``y_test``, when
    there is a ``y``) give the test split; without them, the holdout of the module docstring.
    """
    path = Path(req.path).expanduser()
    if not path.is_file():
        raise DgmError(f"npz file {path} does not exist")
    stat = path.stat()
    x, y, x_test, y_test = _read_npz(path.resolve(), stat.st_mtime_ns, stat.st_size)
    levels = 256 if x.dtype == np.uint8 else None
    labels = [a for a in (y, y_test) if a is not None]  # both splits count, so they agree
    num_classes = 1 + int(max(a.max(initial=0) for a in labels)) if labels else None
    if x_test is None:
        index = holdout(len(x), req.split)
        x, y = x[index], None if y is None else y[index]
    elif req.split == "test":
        x, y = x_test, y_test
    return Part(x, y, levels=levels, num_classes=num_classes)


Arrays = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]


@functools.lru_cache(maxsize=4)
def _read_npz(path: Path, mtime_ns: int, size: int) -> Arrays:
    """Checked ``x, y, x_test, y_test`` of ``path`` (the time and size in the cache key catch edits)."""
    try:
        # our own file object: np.load(path) leaks its handle when the zip is corrupt
        with open(path, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DgmError(f"{path} holds a single .npy array, not a .npz: save it with "
                               "numpy.savez(path, x=examples)")
            arrays = {key: npz[key] for key in _NPZ_KEYS if key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # ValueError: pickled object arrays
        raise DgmError(f"cannot read {path} as a .npz file: {e}") from e
    if "x" not in arrays:
        raise DgmError(f"{path} has no array 'x': save it with numpy.savez(path, x=examples, y=labels)")
    x = _examples(arrays["x"], "x", path)
    y = _labels(arrays["y"], len(x), "y", path) if "y" in arrays else None
    if "x_test" not in arrays:
        if len(x) < 2:
            raise DgmError(f"{path}: x holds {len(x)} example(s); a train/test holdout needs at least 2 "
                           "(or give the test split as x_test)")
        return x, y, None, None
    x_test = _examples(arrays["x_test"], "x_test", path)
    if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
        raise DgmError(f"{path}: x_test holds {arrays['x_test'].dtype} examples of shape {x_test.shape[1:]}; "
                       f"expected the dtype and example shape of x, {arrays['x'].dtype} {x.shape[1:]}")
    if ("y_test" in arrays) != (y is not None):
        raise DgmError(f"{path}: give labels for both splits (y and y_test) or for neither")
    y_test = _labels(arrays["y_test"], len(x_test), "y_test", path) if y is not None else None
    return x, y, x_test, y_test


def _examples(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``x`` checked and in raw storage form: uint8 ``(N, C, H, W)``, or float32 ``(N, ...)``."""
    is_float = np.issubdtype(x.dtype, np.floating)
    if not (x.dtype == np.uint8 or is_float) or not (x.ndim in (3, 4) or (x.ndim == 2 and is_float)):
        raise DgmError(f"{path}: array {key!r} is {x.dtype} of shape {x.shape}; {_EXPECTED_X}")
    if len(x) == 0:
        raise DgmError(f"{path}: array {key!r} is empty")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise DgmError(f"{path}: array {key!r} has shape {x.shape}, with no channel dimension of 1 or 3; "
                           f"{_EXPECTED_X}")
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if is_float:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DgmError(f"{path}: array {key!r} has NaN or infinite values (as float32)")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    """``y`` checked as ``n`` non-negative integer labels, as int64."""
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise DgmError(f"{path}: array {key!r} is {y.dtype} of shape {y.shape}; expected {n} non-negative "
                       f"integer labels, shape ({n},)")
    return y.astype(np.int64)
