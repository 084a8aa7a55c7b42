"""The one protocol every generative model implements, and the registry that finds them.

A model is an ``nn.Module`` built from ``(config, spec)``: a typed config dataclass (every field
documented inline, round-tripping through JSON) and the :class:`~dgm.data.DataSpec` of its data.
It declares

* its training objective(s) as named :class:`Phase` objects; the trainer runs the phases of one
  *round* in order, each for ``phase.steps`` optimiser steps on fresh batches, and calls
  :meth:`GenerativeModel.loss` with the phase name. One phase for most families; a GAN has a
  critic phase (k steps) and a generator phase. A model trained in stages (:class:`Stage`), one
  after another (a VQ-VAE, then a prior over its codes), declares them with
  :meth:`GenerativeModel.stages`, each with its own phases, budget and schedule. The trainer never
  asks which family it is training.
* :meth:`sample` in data space, and whichever of :meth:`log_prob` (exact), :meth:`elbo` (a lower
  bound), :meth:`iwae_bound` (importance-weighted, k samples), :meth:`encode`, :meth:`decode`,
  :meth:`reconstruct` it has. :func:`capabilities` says which, by looking at what the subclass
  overrides, so evaluation and the CLI ask a model what it *can* do.
"""
from __future__ import annotations

import dataclasses
import math
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, Dataset
from dgm.errors import DgmError, unknown_name
from dgm.settings import check, coerce, type_hints


# --- what the trainer and the model exchange ------------------------------------------------------
@dataclass
class Phase:
    """One player or stage of a model's training.

    Attributes:
        name: passed back to :meth:`GenerativeModel.loss`.
        parameters: the parameters this phase's optimiser updates.
        steps: optimiser steps per round (e.g. ``k`` critic steps per generator step).
        lr: learning rate; ``None`` takes its stage's, else the trainer's ``lr`` (TTUR sets two rates).
        betas: Adam betas; ``None`` takes the trainer's.
        epochs: ``(first, last)`` epochs of its stage, 0-based and inclusive, in which the phase is
            active; ``None`` for always. (Stages that follow one another: :class:`Stage`.)
        after_step: called after each optimiser step of this phase, e.g. a projection of the
            parameters back onto a constraint set (WGAN's weight clipping).
    """

    name: str
    parameters: list[nn.Parameter]
    steps: int = 1
    lr: float | None = None
    betas: tuple[float, float] | None = None
    epochs: tuple[int, int] | None = None
    after_step: Callable[[], None] | None = None

    def active(self, epoch: int) -> bool:
        return self.epochs is None or self.epochs[0] <= epoch <= self.epochs[1]


@dataclass
class Stage:
    """One stage of a model's training: its phases, trained for its own budget after the stages
    before it, with fresh optimisers and a learning-rate schedule (warm-up, then constant or cosine)
    over its own steps. While a stage runs, the parameters of the other stages' phases are frozen.

    Attributes:
        name: the stage, in messages, ``trainer.json`` and :attr:`Progress.stage`.
        phases: its players; phase names are unique across all the stages (``loss`` gets the phase
            name, and ``metrics.csv`` names columns by phase).
        epochs: its budget in epochs (at least 1); ``None`` (the last stage only): the rest of
            ``train.epochs``.
        lr: base rate of its phases that set none; ``None``: ``train.lr``.
        schedule: its schedule after warm-up; ``None``: ``train.schedule``.
        warmup_steps: its linear warm-up from 0, in optimiser steps; ``None``: ``train.warmup_steps``.

    Example:
        >>> def stages(self):  # a VQ-VAE, then an autoregressive prior over its codes
        ...     return [Stage("vqvae", [Phase("autoencoder", [*self.encoder.parameters(), ...])], epochs=20),
        ...             Stage("prior", [Phase("prior", list(self.prior.parameters()))], lr=3e-4, schedule="cosine")]
    """

    name: str
    phases: list[Phase]
    epochs: int | None = None
    lr: float | None = None
    schedule: Literal["constant", "cosine"] | None = None
    warmup_steps: int | None = None


@dataclass(frozen=True)
class Sampler:
    """One way a model draws samples, with its options: ``model.sample(n, sampler=name, **options)``.

    Attributes:
        name: passed as ``sampler=``; ``dgm sample --sampler NAME``.
        description: one line for ``dgm sample RUN --help``.
        options: a dataclass of the keyword options this sampler takes; each field (typed, with its
            range, ``metadata={"help": ...}``, default ``None`` for "the model's setting") becomes a
            flag of ``dgm sample`` for runs of this model, so the CLI names no sampler of its own.
    """

    name: str
    description: str
    options: type | None = None

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options)) if self.options is not None else []


@dataclass
class Progress:
    """Where training stands, passed explicitly to :meth:`GenerativeModel.loss` (for schedules such
    as KL warm-up) instead of being threaded through ``forward``."""

    step: int = 0  # optimiser rounds completed so far
    epoch: int = 0
    total_steps: int = 1  # rounds in the whole run
    stage: str = "model"  # the stage being trained (see GenerativeModel.stages)
    stage_step: int = 0  # optimiser rounds completed in this stage
    stage_steps: int = 1  # rounds in this stage
    # the run's source of training noise, on the model's device (the trainer's, saved in its
    # checkpoints); ``None``: torch's global RNG. Every draw in ``loss`` takes it (see :func:`randn`)
    generator: torch.Generator | None = None


def _noise_device(like: Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else like.device


@dataclass(frozen=True)
class NoiseShard:
    """This process's share of a batch split across ``world`` processes (data-parallel training):
    rows ``rank * batch .. (rank + 1) * batch`` of a global batch of ``world * batch`` examples."""

    rank: int
    world: int
    batch: int  # examples of the local batch


_NOISE_SHARD: NoiseShard | None = None


@contextmanager
def noise_shard(shard: NoiseShard | None) -> Iterator[None]:
    """Within this context, :func:`randn`, :func:`rand` and :func:`randint` draw noise whose first
    dimension is k times the local batch (k = 1, or k samples per example, sample-major) for the
    GLOBAL batch and return this process's rows: every process consumes the same stream of a
    generator seeded alike, and the union of their draws is the draw of one process training on
    the whole batch (so data-parallel training follows the single-process run). Other noise (not
    per example) is drawn identically by every process."""
    global _NOISE_SHARD
    previous, _NOISE_SHARD = _NOISE_SHARD, shard
    try:
        yield
    finally:
        _NOISE_SHARD = previous


def _draw(fill, shape: tuple[int, ...] | torch.Size) -> Tensor:  # noqa: ANN001 (shape -> tensor)
    """``fill(shape)``, or under :func:`noise_shard` this process's rows of the global draw."""
    shard, shape = _NOISE_SHARD, tuple(shape)
    if shard is None or shard.world == 1 or not shape or shape[0] % shard.batch:
        return fill(shape)
    k = shape[0] // shard.batch  # samples per example, sample-major: row s * batch + b
    full = fill((k, shard.world * shard.batch, *shape[1:]))
    return full[:, shard.rank * shard.batch:(shard.rank + 1) * shard.batch].reshape(shape)


def randn(shape: tuple[int, ...] | torch.Size, *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator``
    (``None``: torch's global RNG): ``torch.randn_like`` with a generator. Drawn on the generator's
    device and moved, so a CPU generator also serves a model on a GPU (sharded: :func:`noise_shard`)."""
    device = _noise_device(like, generator)
    return _draw(lambda s: torch.randn(s, generator=generator, device=device, dtype=like.dtype), shape).to(like.device)


def rand(shape: tuple[int, ...] | torch.Size, *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator``."""
    device = _noise_device(like, generator)
    return _draw(lambda s: torch.rand(s, generator=generator, device=device, dtype=like.dtype), shape).to(like.device)


def randint(high: int, shape: tuple[int, ...] | torch.Size, *, like: Tensor,
            generator: torch.Generator | None) -> Tensor:
    """Integers uniform in [0, high), int64, on ``like``'s device, drawn from ``generator``."""
    device = _noise_device(like, generator)
    return _draw(lambda s: torch.randint(high, s, generator=generator, device=device), shape).to(like.device)


@dataclass
class Loss:
    """The output of :meth:`GenerativeModel.loss`.

    Attributes:
        loss: the scalar to minimise.
        metrics: scalars to log (detached by the trainer), e.g. ``{"elbo": ..., "kl": ...}``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


# --- the protocol ---------------------------------------------------------------------------------
class GenerativeModel(nn.Module):
    """Base class of every dgm model. Subclasses set ``name``, ``Config`` and implement :meth:`loss`
    and :meth:`sample`, plus any of the optional capabilities."""

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    default_ema: ClassVar[float | None] = None  # EMA decay of the weights when the run does not set train.ema
    #: the named samplers ``sample`` takes as ``sampler=`` (with their options); none: ``sample`` has one way
    samplers: ClassVar[tuple[Sampler, ...]] = ()

    def __init__(self, config: Any, spec: DataSpec) -> None:
        super().__init__()
        self.config = check(config, "model")  # ranges, also for configs built in Python
        self.spec = spec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in GENERATION_METHODS:  # every family's generation runs without autograd
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_inference", False):
                setattr(cls, name, inference(method))

    @classmethod
    def migrate_config(cls, values: dict[str, Any], spec: DataSpec, version: str) -> dict[str, Any]:
        """The config ``values`` of a run written by dgm ``version``, as this version reads them, so
        an old run still builds the network its weights belong to; unchanged by default."""
        return values

    # -- data representation the model wants, decided before the model exists ----------------------
    @classmethod
    def default_representation(cls, config: Any, spec: DataSpec) -> str:
        """The data representation this configuration trains on (``spec`` has the natural one)."""
        return spec.representation

    # -- training --------------------------------------------------------------------------------
    def memory_format(self) -> torch.memory_format:
        """The layout of 4-D weights (and so of activations) this model trains fastest in, which
        ``train.memory_format=auto`` takes: contiguous (NCHW) by default. A conv net whose step is
        faster in channels_last (NHWC, oneDNN's native layout) returns that; measured per network,
        since attention and group norm over NHWC can be slower (benchmarks/mfu.py)."""
        return torch.contiguous_format

    def phases(self) -> list[Phase]:
        """The players of training; one phase over all parameters by default."""
        return [Phase("model", list(self.parameters()))]

    def stages(self) -> list[Stage]:
        """The stages of training, run one after another; by default one stage of :meth:`phases`
        for ``train.epochs`` epochs. Override to train in stages (see :class:`Stage`)."""
        return [Stage("model", self.phases())]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        raise NotImplementedError

    def fit(self, data: Dataset, *, generator: torch.Generator, progress: bool = False) -> dict[str, float]:
        """Fit the model to the whole training split ``data`` in closed form or by EM, instead of by
        gradient steps (PPCA's eigendecomposition, factor analysis, a Gaussian mixture): a model that
        overrides this is fitted by one call, which the trainer makes in place of its loop (see
        :func:`fits_in_closed_form`). ``generator`` draws any noise (dequantization of the data,
        initialisation); returns the numbers to log, e.g. ``{"train_log_likelihood": ..., "iterations": ...}``.
        Its :meth:`loss` still works (the negative log-likelihood), so gradients reach its parameters."""
        raise NotImplementedError

    def prepare(self, data: Dataset) -> None:
        """Learn from the whole training split what the model needs before its first step (a
        subword tokenizer, a word vocabulary). The trainer calls it once, on a fresh run only: what
        it sets must live in buffers of a shape fixed by the config, so it is saved with the
        weights and a resumed or loaded run has it. Nothing by default."""

    def monitors(self) -> dict[str, dict[str, Any]]:
        """Diagnostics to log during training, by the name of a monitor registered in :mod:`dgm.eval`
        (:func:`dgm.eval.register_monitor`) with its options, e.g. ``{"duality_gap": {"every": 5}}``.
        The model names them and :func:`dgm.run.monitors` builds them, so a model never imports the
        evaluation layer above it. None by default."""
        return {}

    # -- generation (run under torch.inference_mode(): see GENERATION_METHODS) --------------------
    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``(n, *spec.shape)`` in the data representation."""
        raise NotImplementedError

    @property
    def default_sampler(self) -> str | None:
        """The sampler ``sample`` uses when none is named (the first declared; a config may choose)."""
        return self.samplers[0].name if self.samplers else None

    def preview_sample(self, n: int, *, generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """``n`` samples for pictures drawn during training and in reports: the model's sampler at a
        cost fit for a preview (a diffusion model runs a short DDIM chain instead of all T steps), with
        a progress bar where that takes a while and ``progress`` is on. By default :meth:`sample`."""
        return self.sample(n, generator=generator)

    # -- optional capabilities (override what the model has) ---------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-likelihood in nats, ``(B,)``. On padded data (``spec.kind`` tokens or points) the
        evaluator calls ``log_prob(x, mask=mask)`` with ``mask`` (B, L) true where real: a model of
        such data takes that keyword and leaves the padding out (the same for the bounds below)."""
        raise NotImplementedError

    def elbo(self, x: Tensor) -> Tensor:
        """A variational lower bound on log p(x) in nats, ``(B,)``."""
        raise NotImplementedError

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500) -> Tensor:
        """The importance-weighted bound with ``k`` samples, nats, ``(B,)`` (Burda et al. 2016)."""
        raise NotImplementedError

    def kl_per_dim(self, x: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) for each latent dimension in nats, ``(B, latent_dim)`` (posterior
        collapse diagnostics)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """A deterministic code (e.g. the posterior mean), ``(B, latent_dim)``."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Data-space output ``(B, *spec.shape)`` for codes ``z``."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def restore(self, known: Any, *, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        """Images ``(B, *spec.shape)`` consistent with a known view of them (``known``, a
        :class:`~dgm.models.samplers.KnownView`: kept pixels, a low-resolution or a grey version),
        the rest generated by the model: inpainting, super-resolution, colorization."""
        raise NotImplementedError

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        """Pictures only this model can draw, for the report: ``(title, images (N, *shape) in the
        data representation, images per row, caption)`` each, e.g. InfoGAN's latent traversals; or
        ``(title, text, 0, caption)``, shown as preformatted text (a text model's interpolations, a
        topic model's top words). The caption says what the figure shows (the report adds nothing
        of its own)."""
        return []

    @property
    def log_prob_description(self) -> str:
        """How :meth:`log_prob` relates to the likelihood of the data, for result tables: ``"exact"``,
        or a bound's name where it is the probability of one of several ways to produce the data."""
        return "exact"

    @property
    def elbo_description(self) -> str:
        """How :meth:`elbo` is computed, for result tables."""
        return "ELBO, 1 sample"

    def scored_units(self, lengths: Tensor) -> Tensor:
        """How many units (tokens, points) of each padded example of ``lengths`` real ones
        :meth:`log_prob` scores: the real ones by default; a language model also scores the end
        token of every sequence shorter than the padded length. Bits per unit divide by these."""
        return lengths

    @property
    def kl_description(self) -> str:
        """How :meth:`kl_per_dim` (and ``kl_per_layer``) estimate the KL to the prior, for result tables."""
        return "KL(q(z|x) || p(z)), analytic"

    @property
    def likelihood_kind(self) -> str:
        """``"discrete"`` when :meth:`log_prob` / bounds are a pmf over the discrete data (binary, levels),
        ``"density"`` when they are a density over continuous values (dequantized or continuous data)."""
        return "density" if self.spec.representation in ("dequantized", "continuous") else "discrete"

    def withheld_capabilities(self) -> dict[str, str]:
        """Capabilities the class has but this configuration cannot give, with the reason (e.g. a DCT
        transformer at a lossy quality has no likelihood of the data); :func:`capabilities` of the
        instance leaves them out, so evaluation and apps do not ask. None by default."""
        return {}

    # -- conveniences ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def num_classes(self) -> int | None:
        """Number of classes a conditional model takes as ``condition`` (``None``: unconditional)."""
        return None


#: Methods that generate. Each subclass's own definition of one of them is wrapped in
#: ``torch.inference_mode()`` when the class is created, so no family can build an autograd graph
#: while sampling (a 1000-step diffusion chain with a graph keeps every step's activations: > 24 GB)
#: and what they return carries no graph. A caller that needs gradients through samples calls the
#: networks directly (as the GAN losses do).
GENERATION_METHODS = ("sample", "preview_sample", "restore", "report_figures")


def inference(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run under ``torch.inference_mode()``; the tensors it returns are copied out of
    inference mode, so a caller may still feed them to a network that is being trained."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.is_inference_mode_enabled():  # called from generation: no copies on the way out
            return method(*args, **kwargs)
        with torch.inference_mode():
            out = method(*args, **kwargs)
        return _outside_inference(out)

    wrapper._inference = True  # type: ignore[attr-defined]
    return wrapper


def _outside_inference(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_outside_inference(v) for v in value)
    return value


#: the protocol's optional methods: a model has one of these when its class overrides it
PROTOCOL_CAPABILITIES = ("sample", "log_prob", "elbo", "iwae_bound", "kl_per_dim", "encode", "decode",
                         "reconstruct", "restore")


def capability(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``method`` as a capability named after it, one the protocol does not list (e.g.
    ``classify`` of a semi-supervised model, ``complete`` of an autoregressive one), so metrics and
    apps that need it find it with :func:`capabilities`; no list in this file is edited.

    Example:
        >>> class M2(GenerativeModel):
        ...     @capability
        ...     def classify(self, x: Tensor) -> Tensor: ...
    """
    method._capability = method.__name__  # type: ignore[attr-defined]
    return method


def class_marginal(conditional_log_prob: Callable[[Tensor, Tensor], Tensor], x: Tensor, num_classes: int) -> Tensor:
    """log p(x) = logsumexp_y log p(x | y) - log K, ``(B,)``: a class-conditional model's marginal under
    a uniform class prior, from its ``conditional_log_prob(x, y)`` (K passes, one per class)."""
    per_class = [conditional_log_prob(x, torch.full((len(x),), y, dtype=torch.long, device=x.device))
                 for y in range(num_classes)]
    return torch.stack(per_class).logsumexp(0) - math.log(num_classes)


def capabilities(model: GenerativeModel | type[GenerativeModel]) -> set[str]:
    """What a model can do: the protocol's optional methods its class overrides, and the methods
    it marks with :func:`capability`; for an instance, less those its configuration withholds
    (:meth:`GenerativeModel.withheld_capabilities`)."""
    cls = model if isinstance(model, type) else type(model)
    have = {c for c in PROTOCOL_CAPABILITIES if getattr(cls, c) is not getattr(GenerativeModel, c)}
    if {"encode", "decode"} <= have:
        have.add("reconstruct")
    have |= {name for klass in cls.__mro__ for name, value in vars(klass).items()
             if name in (getattr(value, "_capability", None),  # marked outside another decorator
                         getattr(getattr(value, "__wrapped__", None), "_capability", None))}  # or inside
    if not isinstance(model, type):  # an instance: less what its configuration withholds
        have -= set(model.withheld_capabilities())
    return have


def fits_in_closed_form(model: GenerativeModel | type[GenerativeModel]) -> bool:
    """Whether ``model`` is fitted by one call of :meth:`GenerativeModel.fit` rather than trained by
    gradient steps (its class overrides ``fit``)."""
    cls = model if isinstance(model, type) else type(model)
    return cls.fit is not GenerativeModel.fit


# --- registry -------------------------------------------------------------------------------------
MODELS: dict[str, type[GenerativeModel]] = {}


def register(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Class decorator: make a model available to :func:`create`, ``dgm train NAME`` and ``dgm list``."""
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    MODELS[cls.name] = cls
    return cls


def model_class(name: str) -> type[GenerativeModel]:
    import dgm.models  # noqa: F401  (importing the package registers every built-in family)

    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name]


def make_config(cls: type[GenerativeModel], values: dict[str, Any]) -> Any:
    """Build ``cls.Config`` from plain values (JSON, YAML, ``--set``), with clear errors."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise unknown_name(f"setting of model {cls.name!r}", unknown[0], fields)
    hints = type_hints(cls.Config)
    return cls.Config(**{k: coerce(v, hints[k], f"model.{k}") for k, v in values.items()})


def create(name: str, spec: DataSpec, **config: Any) -> GenerativeModel:
    """Build a registered model by name for data described by ``spec``.

    Example:
        >>> spec = dgm.data.load("digits").spec
        >>> vae = dgm.create("vae", spec, latent_dim=8)
    """
    cls = model_class(name)
    return cls(make_config(cls, config), spec)


def config_to_json(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def iter_models() -> Iterator[type[GenerativeModel]]:
    import dgm.models  # noqa: F401

    yield from (MODELS[k] for k in sorted(MODELS))
