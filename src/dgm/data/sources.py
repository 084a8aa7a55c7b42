"""Datasets with fixed names read from their original file formats: (Fashion-)MNIST, CIFAR-10, digits.

Every loader of :mod:`dgm.data` takes a :class:`Request` and returns the requested split as a
:class:`Part`: numpy arrays in the raw storage format (uint8 levels ``(N, C, H, W)`` for images,
float32 ``(N, D)`` for continuous data, int64 labels) and the facts that go into the
:class:`~dgm.data.core.DataSpec`.

Downloaded files are looked for, in this order, in ``$DGM_DATA/<name>``, ``~/.cache/dgm/<name>``
and ``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` package puts them).
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgm.errors import DgmError

#: the system-wide data directory, searched last (a module constant so tests can move it)
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Request:
    """What :func:`dgm.data.load` asks a loader for."""

    split: str  # "train" or "test"
    path: str = ""  # the PATH of a "folder:PATH" or "npz:PATH" name
    size: int | None = None  # folder: only
    channels: int | None = None  # folder: only


@dataclass
class Part:
    """One split as loaded: raw examples, labels, and what the DataSpec needs to know about them."""

    x: np.ndarray  # (N, *shape): uint8 levels, float32, or padded tokens / points
    y: np.ndarray | None  # (N,) int64 labels
    levels: int | None  # None for continuous data; the vocabulary size of tokens
    class_names: list[str] | None = None
    num_classes: int | None = None  # defaults to len(class_names)
    extras: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None  # DataSpec.kind: None infers image or vector from the shape
    lengths: np.ndarray | None = None  # (N,) int64 real tokens / points of each padded example
    factors: np.ndarray | None = None  # (N, K) int64 generative factor indices (extras["factors"])
    captions: np.ndarray | None = None  # (N, Lc) int64 caption word ids, 0-padded (extras["caption_words"])

    def __post_init__(self) -> None:
        if self.num_classes is None and self.class_names is not None:
            self.num_classes = len(self.class_names)


# --- the search path -------------------------------------------------------------------------------
def search_dirs(name: str) -> list[Path]:
    """The directories searched for dataset ``name``, in order of preference."""
    roots = [Path(os.environ["DGM_DATA"]).expanduser()] if os.environ.get("DGM_DATA") else []
    roots += [Path.home() / ".cache" / "dgm", SYSTEM_DATA_DIR]
    return [root / name for root in roots]


def find_files(name: str, files: Sequence[str], *, how_to_get: str, subdirs: Sequence[str] = ("",),
               gz: bool = False) -> list[Path]:
    """The paths of ``files`` in the first searched directory that holds all of them.

    Args:
        name: the dataset name, the sub-directory of every search root.
        files: file names that must all be present in one directory.
        how_to_get: how to obtain the files, for the error message.
        subdirs: sub-directories of ``<root>/<name>`` to try as well (archives unpack into one).
        gz: accept ``<file>.gz`` in place of ``<file>``.

    Raises:
        DgmError: no directory holds them all; the message lists every place looked in.
    """
    places = [d / sub if sub else d for d in search_dirs(name) for sub in subdirs]
    suffixes = ("", ".gz") if gz else ("",)
    for place in places:
        hits = [[place / (f + s) for s in suffixes if (place / (f + s)).is_file()] for f in files]
        if all(hits):
            return [h[0] for h in hits]  # the uncompressed file where there are both
    wanted = ", ".join(f + ("[.gz]" if gz else "") for f in files)
    unset = "" if os.environ.get("DGM_DATA") else f" (DGM_DATA is not set; $DGM_DATA/{name} is searched first)"
    raise DgmError(f"{name} data not found: looked for {wanted} in {', '.join(map(str, places))}{unset}; "
                   f"to get it: {how_to_get}")


def _read_bytes(path: Path) -> bytes:
    """The (decompressed, for ``.gz``) content of ``path``; DgmError naming the file if unreadable."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; EOFError: truncated
        raise DgmError(f"cannot read {path} ({e}): delete it and get it again") from e


# --- IDX: (Fashion-)MNIST ----------------------------------------------------------------------------
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_IDX_CLASSES = {"mnist": MNIST_CLASSES, "fashion-mnist": FASHION_MNIST_CLASSES}
_HOW_TO_GET = {
    "fashion-mnist": "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or download the four files "
                     "from https://github.com/zalandoresearch/fashion-mnist into $DGM_DATA/fashion-mnist",
    "mnist": "download the four files from http://yann.lecun.com/exdb/mnist/ (mirror: "
             "https://ossci-datasets.s3.amazonaws.com/mnist/) into $DGM_DATA/mnist",
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and unpack it into "
               "$DGM_DATA/cifar10",
}


@functools.lru_cache(maxsize=None)
def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, optionally gzipped (LeCun et al.'s format for MNIST).

    Layout: two zero bytes, a type byte (0x08: unsigned byte), a byte ``ndim``, ``ndim`` big-endian
    uint32 sizes, then the data in C order. The array is cached per path and read-only.
    """
    data = _read_bytes(path)

    def corrupt(why: str) -> DgmError:
        return DgmError(f"{path} is not a valid IDX file of unsigned bytes ({why}): delete it and get it again")

    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise corrupt(f"magic number {data[:4].hex() or 'missing'}, expected 000008xx")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise corrupt("truncated header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if len(data) - offset != math.prod(dims):
        raise corrupt(f"{len(data) - offset} data bytes for shape {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def load_idx(name: str, req: Request) -> Part:
    """MNIST (LeCun et al. 1998) or Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale, 60k/10k, 10 classes."""
    prefix = "train" if req.split == "train" else "t10k"
    image_file, label_file = find_files(name, [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"],
                                        how_to_get=_HOW_TO_GET[name], gz=True)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.shape[1:] != (28, 28):
        raise DgmError(f"{image_file} holds images of shape {images.shape[1:]}, expected 28x28")
    if labels.shape != images.shape[:1] or (len(labels) and labels.max() > 9):
        raise DgmError(f"{label_file} does not hold {len(images)} labels in 0..9 for {image_file}")
    return Part(images[:, None], labels.astype(np.int64), levels=256, class_names=_IDX_CLASSES[name])


# --- CIFAR-10, binary version ------------------------------------------------------------------------
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue 32x32 planes


@functools.lru_cache(maxsize=None)
def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64 of one CIFAR-10 binary batch file."""
    data = _read_bytes(path)
    if not data or len(data) % _CIFAR_RECORD:
        raise DgmError(f"{path} is not a CIFAR-10 binary batch: its {len(data)} bytes are not a whole number "
                       f"of {_CIFAR_RECORD}-byte records (label byte + 3x32x32 pixels); get it again")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DgmError(f"{path} has labels above 9: not a CIFAR-10 binary batch (CIFAR-100's has 2 label bytes)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(req: Request) -> Part:
    """CIFAR-10 (Krizhevsky 2009) from the binary version: 32x32 RGB, 50k/10k, 10 classes.

    Only ``cifar-10-batches-bin`` is read (never the pickled Python version, which would need
    unpickling untrusted data).
    """
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] if req.split == "train" else ["test_batch.bin"]
    paths = find_files("cifar10", files, how_to_get=_HOW_TO_GET["cifar10"], subdirs=("", "cifar-10-batches-bin"))
    images, labels = zip(*map(read_cifar_batch, paths))
    return Part(np.concatenate(images), np.concatenate(labels), levels=256, class_names=CIFAR10_CLASSES)


# --- scikit-learn's 8x8 digits ------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.images.astype(np.uint8)[:, None], digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_digits(req: Request) -> Part:
    """scikit-learn's bundled 8x8 digits (the UCI optdigits test set): 1797 images, values 0..16.

    Stored with ``levels=17``. The split is fixed: ``train_test_split(test_size=360,
    random_state=0, stratify=y)`` gives 1437 training and 360 test images, 10 classes in both.
    """
    x, y = _digits()[req.split]
    return Part(x, y, levels=17, class_names=MNIST_CLASSES)
