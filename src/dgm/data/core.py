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

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from dgm.errors import DgmError

Representation = Literal[
    "levels", "unit", "signed", "binary-dynamic", "binary-static", "dequantized", "continuous"
]
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
#: what one example is: an image ``(C, H, W)``, a vector ``(D,)``, a token sequence ``(L,)`` padded to
#: ``L`` tokens, a set of up to ``N`` points ``(N, D)`` (sequences and sets come with their lengths), or
#: a voxel volume ``(C, D, H, W)`` (``voxels``), or a mono audio clip ``(T,)`` of mu-law codes (:mod:`dgm.data.audio`)
Kind = Literal["image", "vector", "tokens", "points", "volume", "audio"]
KINDS: tuple[str, ...] = get_args(Kind)
#: the one representation of each variable-length kind (their raw values are what a model sees)
_KIND_REPRESENTATION = {"tokens": "levels", "points": "continuous"}
#: the label of an example whose label is hidden (see :meth:`Dataset.with_labelled`)
UNLABELLED = -1
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
            standard deviation of the 2-D toys (``{"modes": [[x, y], ...], "mode_std": 0.01}``), or
            the names and sizes of the generative factors of a procedural dataset
            (``{"factors": ["shape", ...], "factor_sizes": [3, ...]}``, values in ``Dataset.factors``).
        kind: ``"image"``, ``"vector"``, ``"tokens"``, ``"points"`` or ``"volume"`` (:data:`Kind`); ``None`` infers
            image or vector from the shape. For ``"tokens"``, ``shape`` is ``(max_length,)`` and
            ``levels`` the vocabulary size; for ``"points"``, ``shape`` is ``(max_points, D)``. Both
            are padded, and each batch carries a ``mask`` of the real tokens or points. For ``"audio"``,
            ``shape`` is ``(T,)`` samples, ``levels`` the 256 mu-law codes and ``extras["sample_rate"]`` the rate.
    """

    name: str
    shape: tuple[int, ...]
    representation: str = "unit"
    levels: int | None = 256
    num_classes: int | None = None
    class_names: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.kind is None:
            self.kind = "image" if len(self.shape) == 3 else "vector"
        if self.kind not in KINDS:
            from dgm.errors import unknown_name

            raise unknown_name("data kind", self.kind, KINDS)
        only = _KIND_REPRESENTATION.get(self.kind)
        if only is not None and self.representation != only:
            raise DgmError(f"dataset {self.name!r} holds {self.kind} and has only the {only!r} representation, "
                           f"not {self.representation!r}: drop the representation setting, or choose a model "
                           f"that reads {self.kind}")
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
        return self.kind == "image"

    @property
    def is_variable_length(self) -> bool:
        """Whether examples are padded sequences or sets, with a ``mask`` in every batch."""
        return self.kind in _KIND_REPRESENTATION

    @property
    def vocab_size(self) -> int | None:
        """The number of distinct tokens of a token dataset (``None`` for other kinds)."""
        return self.levels if self.kind == "tokens" else None

    @property
    def dim(self) -> int:
        """Number of dimensions of one example (the D of bits per dimension); for tokens and points,
        of a full-length padded example: count the real ones with a batch's ``mask``."""
        d = 1
        for s in self.shape:
            d *= s
        return d

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**d)


@dataclass
class Batch:
    """One batch: examples ``x`` in the dataset's representation, labels ``y`` when present.

    ``labelled`` marks the examples whose label is known when only some are (semi-supervised data,
    :meth:`Dataset.with_labelled`): there ``y`` holds :data:`UNLABELLED` (-1). ``mask`` marks the
    real tokens of padded sequences, or the real points of padded sets. ``factors`` holds the
    generative factors of data rendered from known factors (``sprites``): an auxiliary variable for
    the models that condition on it, and the truth the disentanglement metrics score codes against.
    ``captions`` holds the word ids of the examples' own captions (``scenes``;
    :mod:`dgm.data.captions`), 0-padded after the last word.
    """

    x: Tensor  # (B, *shape)
    y: Tensor | None = None  # (B,) int64
    labelled: Tensor | None = None  # (B,) bool, True where y is known; None: every y is known
    mask: Tensor | None = None  # (B, L) tokens or (B, N) points, bool, True where real; None: fixed size
    factors: Tensor | None = None  # (B, K) int64 generative factor indices of data made from known factors
    captions: Tensor | None = None  # (B, Lc) int64 caption word ids 1..V, 0 = padding; None: no captions


class Dataset:
    """A split of a dataset held as tensors, presented in one representation.

    Args:
        raw: the stored examples, ``(N, *shape)``: uint8 levels for discrete data, float32 for
            continuous data.
        labels: ``(N,)`` int64 labels, or ``None``.
        spec: the :class:`DataSpec` (its ``representation`` decides what batches look like).
        train: whether this is a training split (``binary-dynamic`` resamples only there).
        labelled: ``(N,)`` bool, True where the label is known (``labels`` holds :data:`UNLABELLED`
            elsewhere); ``None`` when every label is known.
        lengths: ``(N,)`` int64 number of real tokens or points of each padded example (token and
            point data); batches carry the matching ``mask``.
        factors: ``(N, K)`` int64 indices of the generative factors of each example, for data made
            from known factors (their names and sizes in ``spec.extras["factors"]`` and
            ``["factor_sizes"]``).
        captions: ``(N, Lc)`` int64 word ids of each example's caption, 0-padded after the last word,
            for data with captions of its own (vocabulary in ``spec.extras["caption_words"]``).
    """

    def __init__(self, raw: Tensor, labels: Tensor | None, spec: DataSpec, *, train: bool,
                 labelled: Tensor | None = None, lengths: Tensor | None = None,
                 factors: Tensor | None = None, captions: Tensor | None = None,
                 labelled_per_batch: int = 0) -> None:
        if tuple(raw.shape[1:]) != spec.shape:
            raise ValueError(f"raw data of shape {tuple(raw.shape)} does not match spec shape {spec.shape}")
        for what, t in (("labels", labels), ("labelled flags", labelled), ("lengths", lengths),
                        ("factor rows", factors), ("captions", captions)):
            if t is not None and len(t) != len(raw):
                raise ValueError(f"{len(t)} {what} for {len(raw)} examples")
        if labelled is not None and labels is None:
            raise ValueError("labelled flags for a dataset without labels")
        if spec.is_variable_length and lengths is None:
            raise ValueError(f"{spec.kind} data needs the lengths of its examples")
        self.raw = raw
        self.labels = labels
        self.spec = spec
        self.train = train
        self.labelled = labelled
        self.lengths = lengths
        self.factors = factors
        self.captions = captions
        # labelled examples added to every shuffled batch of a partly labelled split (with_labelled)
        self.labelled_per_batch = labelled_per_batch
        self._static: Tensor | None = None  # the fixed binarization, made on first use

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return (f"Dataset({self.spec.name!r}, n={len(self)}, shape={self.spec.shape}, "
                f"representation={self.spec.representation!r}, device={self.raw.device})")

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def _map(self, f: Callable[[Tensor], Tensor], spec: DataSpec | None = None) -> Dataset:
        """This split with ``f`` applied to the examples and every per-example tensor."""
        def g(t: Tensor | None) -> Tensor | None:
            return None if t is None else f(t)

        return Dataset(f(self.raw), g(self.labels), spec or self.spec, train=self.train,
                       labelled=g(self.labelled), lengths=g(self.lengths), factors=g(self.factors),
                       captions=g(self.captions), labelled_per_batch=self.labelled_per_batch)

    def to(self, device: str | torch.device) -> Dataset:
        """The same split with its tensors on ``device`` (and its fixed binarization, if drawn: it
        is not drawn again)."""
        moved = self._map(lambda t: t.to(device))
        if self._static is not None:
            moved._static = self._static.to(device)
        return moved

    def with_representation(self, representation: str) -> Dataset:
        """The same tensors presented in another representation (no copy)."""
        spec = DataSpec(**{**self.spec.to_json(), "representation": representation})
        return self._map(lambda t: t, spec)

    def subset(self, n: int) -> Dataset:
        """The first ``n`` examples (deterministic; for quick runs and evaluation budgets)."""
        return self._map(lambda t: t[:n])

    def known_labels(self) -> Dataset:
        """The examples whose label is known, in order: of a partly labelled split (:meth:`with_labelled`)
        the labelled ones; the split itself when every label is known."""
        if self.labelled is None:
            return self
        keep = self.labelled
        return self._map(lambda t: t[keep.to(t.device)])

    def with_labelled(self, n: int, seed: int, *, per_batch: int = 0) -> Dataset:
        """This split with the labels of only ``n`` examples kept, the same number per class.

        With ``per_batch`` > 0, every shuffled batch (training) also carries ``min(per_batch, n)``
        labelled examples, appended after the batch's own, drawn in turn from a fresh permutation of
        the labelled subset each time it runs out: with 100 labels among 60000 examples a batch
        would otherwise hold a labelled example once in five batches (Kingma et al. 2014 train on
        a labelled and an unlabelled minibatch each step).

        The kept examples are drawn with ``seed`` (:func:`dgm.data.labels.balanced_labelled`: ``n //
        K`` per class, and one more for the first ``n mod K`` classes); the other labels become
        :data:`UNLABELLED` and their ``labelled`` flag False (semi-supervised learning, as in the
        100-label MNIST of Kingma et al. 2014).

        Raises:
            DgmError: the split has no labels, fewer than ``n`` known labels, or a class with fewer
                examples than it needs.
        """
        from dgm.data.labels import balanced_labelled

        known = balanced_labelled(self.labels, self.labelled, n, seed, num_classes=self.spec.num_classes,
                                  class_names=self.spec.class_names, name=self.spec.name)
        labels = torch.where(known, self.labels, torch.full_like(self.labels, UNLABELLED))
        return Dataset(self.raw, labels, self.spec, train=self.train, labelled=known,
                       lengths=self.lengths, factors=self.factors, captions=self.captions,
                       labelled_per_batch=min(per_batch, n))

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
        extra = self.labelled_per_batch if shuffle and self.labelled is not None else 0
        if extra:  # the labelled examples every batch carries, drawn for the whole pass up front
            stream = self._labelled_stream(extra * len(range(0, stop, batch_size)), generator)
        for i, lo in enumerate(range(0, stop, batch_size)):
            index = order[lo:lo + batch_size]
            if extra:
                index = torch.cat([index, stream[i * extra:(i + 1) * extra]])
            x = self.present(index, generator)
            if i < start:
                continue
            yield self._batch(x, index)

    def _labelled_stream(self, count: int, generator: torch.Generator | None) -> Tensor:
        """``count`` indices of labelled examples: permutations of the labelled subset one after
        another (each example once per permutation), drawn from ``generator``."""
        assert self.labelled is not None
        labelled = torch.nonzero(self.labelled.cpu()).flatten()
        rounds = -(-count // len(labelled))
        perms = [labelled[torch.randperm(len(labelled), generator=generator, device="cpu")] for _ in range(rounds)]
        return torch.cat(perms)[:count].to(self.device)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def tensors(self, n: int | None = None) -> Batch:
        """The first ``n`` examples (all by default) as one batch, in this representation."""
        n = len(self) if n is None else min(n, len(self))
        index = torch.arange(n, device=self.device)
        return self._batch(self.present(index), index)

    def _batch(self, x: Tensor, index: Tensor) -> Batch:
        """The batch of the examples ``x`` at ``index``, with their labels and masks."""
        y = None if self.labels is None else self.labels[index]
        labelled = None if self.labelled is None else self.labelled[index]
        mask = None
        if self.lengths is not None:  # (B, L): position i is real when i < length
            mask = torch.arange(self.spec.shape[0], device=self.device) < self.lengths[index, None]
        factors = None if self.factors is None else self.factors[index]
        captions = None if self.captions is None else self.captions[index]
        return Batch(x, y, labelled, mask, factors, captions)


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
