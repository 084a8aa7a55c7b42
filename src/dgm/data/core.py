"""Datasets as tensors, and the representations a model can ask for.

A dataset is stored once, in its raw form (integer intensity levels for images, floats for 2-D toys
and float arrays), as tensors on the training device. The *representation* is applied per batch, so
that dynamic binarization and uniform dequantization draw fresh noise every time a batch is drawn:

===================  ============================================================  =====================
representation       value of a pixel at level ``k`` of ``L`` levels               dtype
===================  ============================================================  =====================
``levels``           ``k``                                                         int64
``unit``             ``k / (L - 1)`` in [0, 1]                                     float32
``signed``           ``2 k / (L - 1) - 1`` in [-1, 1]                              float32
``binary-dynamic``   ``Bernoulli(k / (L - 1))``, resampled at every draw (train)   float32 in {0, 1}
``binary-static``    one Bernoulli draw per pixel, fixed by a seed                 float32 in {0, 1}
``dequantized``      ``(k + u) / L``, ``u ~ U[0, 1)`` fresh at every draw          float32 in [0, 1)
``continuous``       the raw float values (2-D toys, float arrays)                 float32
===================  ============================================================  =====================

Evaluation splits of ``binary-dynamic`` are binarized once with a fixed seed, so a test NLL is
reproducible (the same protocol as Burda et al. 2016 for dynamically binarized MNIST).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from dgm.errors import DgmError

Representation = Literal[
    "levels", "unit", "signed", "binary-dynamic", "binary-static", "dequantized", "continuous"
]
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
BINARY_REPRESENTATIONS = ("binary-dynamic", "binary-static")

#: seed of the one fixed Bernoulli draw behind ``binary-static`` and evaluation splits
BINARIZATION_SEED = 20160101


@dataclass
class DataSpec:
    """What a model needs to know about its data; round-trips through JSON.

    Attributes:
        name: the dataset name as given to :func:`dgm.data.load` (e.g. ``"fashion-mnist"``).
        shape: the shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vectors.
        representation: how examples are presented to the model (table above).
        levels: number of discrete intensity levels of the raw data (256 for 8-bit images, 17 for
            the 8x8 digits); ``None`` for continuous data.
        num_classes: number of labels, or ``None`` when the data has none.
        class_names: human-readable labels, when known.
        extras: dataset-specific facts for evaluators, e.g. the mode centres and the component
            standard deviation of the 2-D toys (``{"modes": [[x, y], ...], "mode_std": 0.01}``).
    """

    name: str
    shape: tuple[int, ...]
    representation: str = "unit"
    levels: int | None = 256
    num_classes: int | None = None
    class_names: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.representation not in REPRESENTATIONS:
            from dgm.errors import unknown_name

            raise unknown_name("data representation", self.representation, REPRESENTATIONS)
        if self.levels is None and self.representation != "continuous":
            raise DgmError(
                f"dataset {self.name!r} is continuous and has only the 'continuous' representation, "
                f"not {self.representation!r}: drop the representation setting"
            )

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def dim(self) -> int:
        """Number of dimensions of one example (the D of bits per dimension)."""
        d = 1
        for s in self.shape:
            d *= s
        return d

    @property
    def is_binary(self) -> bool:
        return self.representation in BINARY_REPRESENTATIONS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**d)


@dataclass
class Batch:
    """One batch: examples ``x`` in the dataset's representation, labels ``y`` when present."""

    x: Tensor  # (B, *shape)
    y: Tensor | None = None  # (B,) int64


class Dataset:
    """A split of a dataset held as tensors, presented in one representation.

    Args:
        raw: the stored examples, ``(N, *shape)``: uint8 levels for discrete data, float32 for
            continuous data.
        labels: ``(N,)`` int64 labels, or ``None``.
        spec: the :class:`DataSpec` (its ``representation`` decides what batches look like).
        train: whether this is a training split (``binary-dynamic`` resamples only there).
    """

    def __init__(self, raw: Tensor, labels: Tensor | None, spec: DataSpec, *, train: bool) -> None:
        if tuple(raw.shape[1:]) != spec.shape:
            raise ValueError(f"raw data of shape {tuple(raw.shape)} does not match spec shape {spec.shape}")
        if labels is not None and len(labels) != len(raw):
            raise ValueError(f"{len(labels)} labels for {len(raw)} examples")
        self.raw = raw
        self.labels = labels
        self.spec = spec
        self.train = train
        self._static: Tensor | None = None  # the fixed binarization, made on first use

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return (f"Dataset({self.spec.name!r}, n={len(self)}, shape={self.spec.shape}, "
                f"representation={self.spec.representation!r}, device={self.raw.device})")

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def to(self, device: str | torch.device) -> Dataset:
        """The same split with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return Dataset(self.raw.to(device), labels, self.spec, train=self.train)

    def with_representation(self, representation: str) -> Dataset:
        """The same tensors presented in another representation (no copy)."""
        spec = DataSpec(**{**self.spec.to_json(), "representation": representation})
        return Dataset(self.raw, self.labels, spec, train=self.train)

    def subset(self, n: int) -> Dataset:
        """The first ``n`` examples (deterministic; for quick runs and evaluation budgets)."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(self.raw[:n], labels, self.spec, train=self.train)

    # --- representations --------------------------------------------------------------------------
    def present(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The examples at ``index`` in this dataset's representation (noise from ``generator``)."""
        raw = self.raw[index]
        rep = self.spec.representation
        if rep == "continuous":
            return raw.float()
        L = self.spec.levels
        assert L is not None
        if rep == "levels":
            return raw.long()
        unit = raw.float() / (L - 1)
        if rep == "unit":
            return unit
        if rep == "signed":
            return unit * 2 - 1
        if rep == "dequantized":
            return (raw.float() + uniform_noise(raw.shape, generator, raw.device)) / L
        # binary: fresh draws for a training split of binary-dynamic; otherwise one fixed draw
        if rep == "binary-dynamic" and self.train:
            return (uniform_noise(raw.shape, generator, raw.device) < unit).float()
        return self._fixed_binarization()[index]

    def _fixed_binarization(self) -> Tensor:
        if self._static is None:
            g = torch.Generator(device="cpu").manual_seed(BINARIZATION_SEED)
            unit = self.raw.float().cpu() / (self.spec.levels - 1)
            self._static = torch.bernoulli(unit, generator=g).to(self.raw.device)
        return self._static

    def to_unit(self, x: Tensor) -> Tensor:
        """Map examples in this representation back to [0, 1] for display (images only)."""
        return to_unit(x, self.spec)

    # --- iteration --------------------------------------------------------------------------------
    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                generator: torch.Generator | None = None, start: int = 0) -> Iterator[Batch]:
        """Iterate over the split once.

        Args:
            batch_size: examples per batch.
            shuffle: draw the order from ``generator`` (a fresh permutation per call).
            drop_last: skip a final incomplete batch.
            generator: source of the order and of representation noise, for reproducible runs.
            start: index of the first batch to yield (resuming inside an epoch); the order and the
                noise of the skipped batches are still drawn, so the batches that follow are the
                same as in an uninterrupted pass.
        """
        n = len(self)
        order = (torch.randperm(n, generator=generator, device="cpu") if shuffle
                 else torch.arange(n)).to(self.device)
        stop = n - n % batch_size if drop_last else n
        for i, lo in enumerate(range(0, stop, batch_size)):
            index = order[lo:lo + batch_size]
            x = self.present(index, generator)
            if i < start:
                continue
            y = None if self.labels is None else self.labels[index]
            yield Batch(x, y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def tensors(self, n: int | None = None) -> Batch:
        """The first ``n`` examples (all by default) as one batch, in this representation."""
        n = len(self) if n is None else min(n, len(self))
        index = torch.arange(n, device=self.device)
        return Batch(self.present(index), None if self.labels is None else self.labels[:n])


def uniform_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) noise drawn on the generator's device and moved to ``device``: the data generator
    lives on the CPU, so a run draws the same noise on a CPU and on a GPU."""
    noise_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=noise_device).to(device)


def to_unit(x: Tensor, spec: DataSpec) -> Tensor:
    """Map examples in ``spec.representation`` to [0, 1] floats (for images and grids)."""
    rep = spec.representation
    if rep == "levels":
        return x.float() / (spec.levels - 1)
    if rep == "signed":
        return ((x + 1) / 2).clamp(0, 1)
    return x.float().clamp(0, 1)
