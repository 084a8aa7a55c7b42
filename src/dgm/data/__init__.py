"""Datasets by name, as tensors on the training device, in the representation a model asks for.

Example::

    train = load("digits")                      # 1437 8x8 images, levels 0..16, as "unit" floats
    test = load("ring8", "test")                # 10,000 2-D points from 8 Gaussians
    mine = load("folder:~/pictures", size=64)   # any folder of PNG/JPEG images
    lines = load("text:notes.txt")              # byte-level token sequences, batches with a mask

:func:`list_datasets` names them all; representations and the kinds of data (images, vectors,
token sequences, point sets) are described in :mod:`dgm.data.core`. Data rendered from known
factors (``sprites``, ``scenes``) can be rendered again from any factors: :func:`render`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch

from dgm.data import audio, files, probes, scenes, sequences, sources, sprites, strokes, toys, voxels
from dgm.data.core import REPRESENTATIONS, UNLABELLED, Batch, Dataset, DataSpec, to_unit
from dgm.data.sources import Part, Request
from dgm.errors import DgmError, unknown_name

__all__ = ["Batch", "Dataset", "DataSpec", "REPRESENTATIONS", "UNLABELLED", "to_unit", "load", "list_datasets",
           "default_representation", "render"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Source:
    """A registered dataset: how to load a split of it, and a one-line description."""

    description: str
    load: Callable[[Request], Part]
    #: the natural representation; None where the data decides (npz: uint8 -> unit, floats -> continuous)
    representation: str | None
    #: whether ``size`` and ``channels`` choose the stored shape (folders of images)
    resizable: bool = False
    #: examples ``(N, *shape)`` from factor indices ``(N, K)``, for data made from known factors
    render: Callable[[np.ndarray], np.ndarray] | None = None
    #: caption word ids ``(N, Lc)`` from factor indices ``(N, K)``, for rendered data with captions
    caption: Callable[[np.ndarray], np.ndarray] | None = None


DATASETS: dict[str, Source] = {
    "fashion-mnist": Source("Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale clothing, 60k/10k, 10 classes",
                            partial(sources.load_idx, "fashion-mnist"), "unit"),
    "mnist": Source("MNIST (LeCun et al. 1998): 28x28 grayscale digits, 60k/10k, 10 classes",
                    partial(sources.load_idx, "mnist"), "unit"),
    "cifar10": Source("CIFAR-10 (Krizhevsky 2009), binary version: 32x32 RGB, 50k/10k, 10 classes",
                      sources.load_cifar10, "unit"),
    "digits": Source("scikit-learn 8x8 digits, 17 levels, fixed stratified split 1437/360, 10 classes",
                     sources.load_digits, "unit"),
    "ring8": Source("8 Gaussians on the unit circle, sd 0.01 (VEEGAN/PacGAN mode counting), 50k/10k points",
                    partial(toys.load, toys.ring8), "continuous"),
    "grid25": Source("25 Gaussians on the grid {-4,-2,0,2,4}^2, sd 0.05 (PacGAN mode counting), 50k/10k points",
                     partial(toys.load, toys.grid25), "continuous"),
    "moons": Source("two interleaving half moons, noise 0.05 (scikit-learn make_moons), 50k/10k points",
                    partial(toys.load, toys.moons), "continuous"),
    "swissroll": Source("2-D Swiss roll, noise 0.5, scaled by 1/5 (scikit-learn make_swiss_roll), 50k/10k points",
                        partial(toys.load, toys.swissroll), "continuous"),
    "checkerboard": Source("4x4 checkerboard on [-4, 4]^2 (FFJORD, Grathwohl et al. 2019), 50k/10k points",
                           partial(toys.load, toys.checkerboard), "continuous"),
    "sprites": Source("32x32 grey shapes from 5 known factors (shape, scale, rotation, x, y), like dSprites; "
                      "10k/2k, 3 classes", sprites.load, "unit", render=sprites.render),
    "scenes": Source("32x32 RGB scenes of one or two coloured shapes with captions from 10 known factors; no "
                     "green triangle in training (held-out compositions); 20k/2k, 3 classes (shape of A)",
                     scenes.load, "unit", render=scenes.render, caption=scenes.caption_word_ids),
    "voxels": Source("16^3 voxel volumes of a box, sphere, cylinder or cone, or the union of two, from 10 known "
                     "factors; 10k/2k, 4 classes (first shape)", voxels.load, "unit", render=voxels.render),
    "voxels32": Source("the voxels data at 32^3; 4k/1k, 4 classes", partial(voxels.load, side=32), "unit",
                       render=partial(voxels.render, side=32)),
    "dots3": Source("probe (Zhao et al. 2018): 32x32 grey, exactly 3 white dots; 10k/2k",
                    partial(probes.load_dots, (3,)), "unit"),
    "dots2or4": Source("probe: 32x32 grey, 2 or 4 white dots (never 3); 10k/2k",
                       partial(probes.load_dots, (2, 4)), "unit"),
    "colours": Source("probe: 32x32 RGB stripes, red:green:blue area 1/2:1/4:1/4; 10k/2k",
                      probes.load_colours, "unit"),
    "combos": Source("probe: 32x32 grey, 2 discs + 1 square or 1 disc + 2 squares; 10k/2k", probes.load_combos,
                     "unit"),
    "shapes2d": Source("point sets: 8..64 2-D points on a circle or a square outline, 10k/2k sets, 2 classes",
                       sequences.load_shapes2d, "continuous"),
    "fortunes": Source("byte-level token sequences: the fortunes of fortune-mod (apt-get install fortunes-min), "
                       "up to size (256) bytes, 90/10 holdout", sequences.load_fortunes, "levels", resizable=True),
    "hershey": Source("pen strokes (dx, dy, pen_up) of the letters and digits of 9 Hershey fonts (apt-get install "
                      "hershey-fonts-data), slanted, scaled and jittered; 90/10 holdout of the glyphs, 16/8 copies "
                      "each, up to 64 points, 62 classes", strokes.load_hershey, "continuous"),
    "hershey-words": Source("pen strokes of random strings of 2-6 letters and digits written in the fonts of hershey, "
                            "the characters as captions (handwriting synthesis); 4500/500 distinct strings, up to "
                            "256 points", strokes.load_hershey_words, "continuous"),
    "spoken-digits": Source("audio: the words zero..nine (the label) spoken by espeak-ng (apt-get install espeak-ng) in "
                            "8 voices x 4 speeds x 3 pitches, 8 kHz mu-law, clips of size (4000) samples; held-out "
                            "combinations 770/190, 10 classes", audio.load_spoken_digits, "levels", resizable=True),
}

#: datasets named "<prefix>:PATH"
PATTERNS: dict[str, Source] = {
    "folder": Source("a folder of PNG/JPEG images (labels from sub-folders), resized to size (32), 90/10 holdout",
                     files.load_folder, "unit", resizable=True),
    "npz": Source("a .npz with x (uint8 images or float arrays), optional y, x_test, y_test; else 90/10 holdout",
                  files.load_npz, None),
    "text": Source("byte-level token sequences: each non-empty line of a text file or a folder's files, up to "
                   "size (256) bytes, 90/10 holdout", sequences.load_text, "levels", resizable=True),
    "docs": Source("byte-level token sequences: each document (lines up to a blank line) of a text file or a "
                   "folder's files, up to size (256) bytes, 90/10 holdout", sequences.load_docs, "levels",
                   resizable=True),
    "strokes": Source("pen strokes (dx, dy, pen_up) of every glyph of a Hershey .jhf file or a folder's .jhf files, "
                      "slanted, scaled and jittered as hershey; 90/10 holdout of the glyphs", strokes.load_strokes,
                      "continuous"),
    "wav": Source("audio: a mono 8 or 16 kHz WAV file or a folder of them, mu-law, cut into clips of size "
                  "(half a second) samples, 90/10 holdout", audio.load_wav, "levels", resizable=True),
}


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every dataset; ``"folder:PATH"`` and ``"npz:PATH"`` are patterns."""
    return ([(name, s.description) for name, s in DATASETS.items()]
            + [(f"{prefix}:PATH", s.description) for prefix, s in PATTERNS.items()])


def _resolve(name: str) -> tuple[Source, str]:
    """The source of dataset ``name`` and the PATH of a pattern name ("" otherwise)."""
    prefix, colon, path = name.partition(":")
    if colon and prefix in PATTERNS:
        if not path:
            raise DgmError(f"dataset {name!r} names no path: write {prefix}:PATH")
        return PATTERNS[prefix], path
    if name in DATASETS:
        return DATASETS[name], ""
    raise unknown_name("dataset", name, [name for name, _ in list_datasets()])


def _natural_representation(part: Part) -> str:
    if part.kind in ("tokens", "audio"):
        return "levels"
    return "continuous" if part.levels is None else "unit"


def default_representation(name: str) -> str:
    """The representation :func:`load` uses when given none: ``"unit"`` for images of discrete
    levels, ``"continuous"`` for the 2-D toys, point sets and float arrays (which reads an ``npz:``
    file), ``"levels"`` for token sequences."""
    source, path = _resolve(name)
    if source.representation is not None:
        return source.representation
    return _natural_representation(source.load(Request("train", path)))


def load(name: str, split: Literal["train", "test"] = "train", *, representation: str | None = None,
         device: str | torch.device = "cpu", size: int | None = None, channels: int | None = None) -> Dataset:
    """One split of a dataset, as tensors on ``device``.

    Args:
        name: a name of :func:`list_datasets`, or ``"folder:PATH"`` / ``"npz:PATH"``.
        split: ``"train"`` or ``"test"``.
        representation: how batches present the examples (see :mod:`dgm.data.core`); ``None`` for
            the dataset's natural one (:func:`default_representation`).
        device: where the tensors live.
        size: image side in pixels for ``folder:`` datasets (default 32); bytes per sequence (the
            context) for text (default 256); elsewhere only the dataset's own size is accepted.
        channels: 1 (grayscale) or 3 (RGB) for ``folder:`` datasets (default: from the images);
            elsewhere only the dataset's own channel count is accepted.

    Raises:
        DgmError: unknown name or split, missing or corrupt files, or a representation, size or
            channel count the data does not have.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    source, path = _resolve(name)
    part = source.load(Request(split, path, size, channels))
    shape = part.x.shape[1:]
    if not source.resizable:
        _check_fixed_shape(name, shape, size, channels)
    spec = DataSpec(name=name, shape=shape, representation=representation or _natural_representation(part),
                    levels=part.levels, num_classes=part.num_classes, class_names=part.class_names,
                    extras=part.extras, kind=part.kind)

    # copies: the parsed arrays are cached (and read-only), the tensors belong to the caller
    def tensor(a: np.ndarray | None, dtype: np.dtype | None = None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.array(a, dtype=dtype))

    data = Dataset(tensor(part.x), tensor(part.y, np.int64), spec, train=split == "train",
                   lengths=tensor(part.lengths, np.int64), factors=tensor(part.factors, np.int64),
                   captions=tensor(part.captions, np.int64))
    try:
        return data if torch.device(device) == data.device else data.to(device)
    except (RuntimeError, AssertionError) as e:  # a malformed device string, or CUDA not available
        raise DgmError(f"cannot put dataset {name!r} on device {device!r}: {e}") from e


def render(spec: DataSpec, factors: torch.Tensor) -> Dataset:
    """The examples of the dataset of ``spec`` with the factor indices ``factors`` ``(N, K)``, as a
    test split in ``spec``'s representation (for evaluators that vary one factor at a time), with
    their captions' word ids where the data has captions (``scenes``).

    Raises:
        DgmError: the dataset is not made from known factors.
    """
    source, _ = _resolve(spec.name)
    if source.render is None:
        raise DgmError(f"dataset {spec.name!r} is not rendered from known factors: choose one with "
                       "'factors' in its spec.extras (sprites)")
    indices = factors.cpu().numpy()
    raw = torch.from_numpy(source.render(indices)).to(factors.device)
    captions = None if source.caption is None else torch.from_numpy(source.caption(indices)).to(factors.device)
    return Dataset(raw, None, spec, train=False, factors=factors.long(), captions=captions)


def _check_fixed_shape(name: str, shape: tuple[int, ...], size: int | None, channels: int | None) -> None:
    """Refuse a ``size`` or ``channels`` other than the dataset's own (only folders are resized)."""
    image = len(shape) == 3
    if size is not None and not (image and shape[1:] == (size, size)):
        raise DgmError(f"dataset {name!r} has examples of shape {shape}, not size {size}: size applies "
                       "to folder:PATH datasets only; drop it")
    if channels is not None and not (image and shape[0] == channels):
        raise DgmError(f"dataset {name!r} has examples of shape {shape}, not {channels} channel(s): channels "
                       "applies to folder:PATH datasets only; drop it")
