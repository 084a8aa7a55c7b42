"""The metric registry and :func:`evaluate`."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError, unknown_name
from dgm.models.base import GenerativeModel, capabilities
from dgm.train.distributed import SINGLE, World, gather


T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, enabled: bool, total: int | None = None, desc: str = "",
                 unit: str = "batch") -> Iterable[T]:
    """``iterable`` with a tqdm progress bar on stderr (cleared when done) when ``enabled``, else as it is."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit=unit, dynamic_ncols=True)


@dataclass
class Result:
    """One number with what it means.

    Attributes:
        metric: the metric's name (``"nll"``, ``"active_units"``, ...).
        value: the number.
        unit: ``"nats"``, ``"bits/dim"`` (``"bits/sample"`` of audio), ``"units"``, ``""``.
        qualifier: how it was obtained: ``"exact"``, ``"bound (IWAE k=1000)"``, ...
        split: the data split it was computed on, with its size (``"test, n=360"``).
        details: extra values (e.g. the KL of each latent dimension).
    """

    metric: str
    value: float
    unit: str = ""
    qualifier: str = ""
    split: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalContext:
    """What every metric gets besides the model: the data and the shared settings.

    Samples and their features are drawn once per :func:`evaluate` call and shared by every
    sample-quality metric (FID, KID, IS, precision/recall, memorisation, mode coverage).
    """

    data: Dataset  # the evaluation split, in the model's representation
    train: Dataset | None = None  # the training split (probes, memorisation)
    k: int = 1000  # importance samples of IWAE bounds
    batch_size: int = 256  # examples per forward pass where k does not decide it
    num_samples: int = 10000  # samples drawn for sample-quality metrics
    feature_net: str | None = None  # None: the domain network for the image size, else inception
    inception_weights: str | None = None  # the pt_inception-2015-12-05 weights file
    kid_subset_size: int | None = None  # None: min(1000, the smaller set)
    seed: int = 0
    progress: bool = True
    world: World = SINGLE  # the processes sharing the work (torchrun): each takes every size-th piece
    shared: dict[str, Any] = field(default_factory=dict)  # samples and features computed once

    @property
    def split(self) -> str:
        return f"{'train' if self.data.train else 'test'}, n={len(self.data)}"

    def batches(self, batch_size: int | None = None, desc: str = "") -> Iterator[Tensor]:
        """The split's examples (in the model's representation) in order, with a progress bar."""
        for x, _ in self.inputs(batch_size, desc):
            yield x

    def inputs(self, batch_size: int | None = None, desc: str = "") -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """The split's examples in order, each batch with the keyword arguments a likelihood takes
        besides ``x``: ``{"mask": (B, L) or (B, N)}`` of the real tokens or points of padded data
        (``model.log_prob(x, mask=mask)``), ``{}`` for fixed-size examples."""
        size = batch_size or self.batch_size
        yield from progress_bar(self._inputs(size), enabled=self.progress, total=self.data.num_batches(size), desc=desc)

    def _inputs(self, size: int) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for batch in self.data.batches(size, generator=torch.Generator().manual_seed(0)):
            yield batch.x, ({} if batch.mask is None else {"mask": batch.mask})

    def spread(self, pieces: Iterable[T], compute: Callable[[T], Any], *, total: int, desc: str = "",
               unit: str = "batch") -> list[Any]:
        """``[compute(piece) for piece in pieces]``, the work shared by the processes of the
        evaluation: piece i is computed by process ``i mod N`` and the results are gathered, in order,
        in every process. Each piece runs under its own seed (from ``seed`` and i), so the numbers are
        the same whether one process or several compute them."""
        world = self.world
        own = ((i, piece) for i, piece in enumerate(pieces) if i % world.size == world.rank)
        mine: list[Any] = []
        for i, piece in progress_bar(own, enabled=self.progress, total=len(range(world.rank, total, world.size)),
                                     desc=desc, unit=unit):
            with torch.random.fork_rng(devices=self._cuda_devices()):
                torch.manual_seed(self.piece_seed(i))
                out = compute(piece)
            mine.append(cpu(out) if world.active else out)  # gathered by pickling: CPU tensors only
        if not world.active:
            return mine
        every = gather(mine, world)  # every[r][j]: piece j * N + r
        return [every[i % world.size][i // world.size] for i in range(total)]

    def per_example(self, compute: Callable[..., Any], batch_size: int | None = None, desc: str = "") -> Any:
        """``compute(x, **options)`` (a tensor with a row per example, or a tuple of them) over the
        whole split, concatenated in order, on the evaluation's device: the split's batches spread
        over the processes (:meth:`spread`). ``options`` holds the ``mask`` of padded data."""
        size = batch_size or self.batch_size
        values = self.spread(self._inputs(size), lambda inputs: compute(inputs[0], **inputs[1]),
                             total=self.data.num_batches(size), desc=desc)
        if values and isinstance(values[0], tuple):  # several values per example: each concatenated
            return tuple(torch.cat([v[j].to(self.data.device) for v in values]) for j in range(len(values[0])))
        return torch.cat([v.to(self.data.device) for v in values])

    def piece_seed(self, i: int) -> int:
        """The seed of piece ``i`` of a spread computation (:meth:`spread`)."""
        return self.seed * 1_000_003 + i + 1

    def _cuda_devices(self) -> list[int]:
        return [self.data.device.index or 0] if self.data.device.type == "cuda" else []

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the stored value after."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


def cpu(value: Any) -> Any:
    """``value`` with every tensor in it (also inside tuples and lists) moved to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(cpu(v) for v in value)
    return value


@dataclass
class Work:
    """A piece of a metric's work, for the estimate :func:`evaluate` prints before it starts:
    ``units`` pieces in all (examples, samples), of which ``probe(n)`` does ``n``; the probe is
    timed on ``min(probe_units, units)`` pieces and the time scaled up. Metrics that share work (the
    samples of FID, KID, IS, ...) name it by the same ``key``: it is timed and counted once."""

    key: str
    units: int
    probe: Callable[[int], object]
    probe_units: int = 8


@dataclass
class Plan:
    """What a metric will compute (``"diffusion VLB, all 1000 terms, on 10000 examples"``), the work
    that takes the time, and how to make it cheaper (``"--max-examples N"``)."""

    what: str
    work: list[Work] = field(default_factory=list)
    cheaper: str = ""


@dataclass
class Metric:
    name: str
    requires: tuple[str, ...]  # capabilities the model must have (all of them)
    requires_any: tuple[str, ...]  # ... and at least one of these (when given)
    compute: Callable[[GenerativeModel, EvalContext], list[Result]]
    description: str
    default: bool = True  # part of the metrics 'dgm eval' computes when none are named
    data: Callable[[DataSpec], str | None] | None = None  # why the data does not suit it, or None
    plan: Callable[[GenerativeModel, EvalContext], Plan] | None = None  # for the estimate; None: untimed

    def unsuitable(self, spec: DataSpec | None) -> str | None:
        return self.data(spec) if self.data is not None and spec is not None else None


METRICS: dict[str, Metric] = {}

#: the capabilities that make a likelihood (exact or a bound)
LIKELIHOOD_CAPABILITIES = {"log_prob", "elbo", "iwae_bound"}
#: the capabilities that give log p(x | c) of a condition c (a class, a caption, known factors) or a
#: bound on it: exact first, then the tighter bound, then the ELBO
CONDITIONAL_LIKELIHOODS = ("conditional_log_prob", "conditional_iwae_bound", "conditional_elbo")


#: training monitors by name (objects with ``on_epoch_end(trainer, epoch)`` returning metrics to
#: log, and ``logs``: ``{logged name: what it is}`` for the report); models name the ones they want
MONITORS: dict[str, Callable[..., Any]] = {}


def register_monitor(name: str) -> Callable:
    """Class decorator: make a training monitor available by ``name`` to
    :meth:`~dgm.models.base.GenerativeModel.monitors`."""
    def wrap(cls: Callable[..., Any]) -> Callable[..., Any]:
        MONITORS[name] = cls
        return cls

    return wrap


def build_monitor(name: str, options: dict[str, Any]) -> Any:
    if name not in MONITORS:
        raise unknown_name("training monitor", name, MONITORS)
    return MONITORS[name](**options)


def metric(name: str, *, requires: Sequence[str] = (), requires_any: Sequence[str] = (),
           description: str, default: bool = True,
           data: Callable[[DataSpec], str | None] | None = None,
           plan: Callable[[GenerativeModel, EvalContext], Plan] | None = None) -> Callable:
    """Decorator registering ``compute(model, ctx) -> list[Result]`` as metric ``name``.

    Args:
        requires: capabilities the model must have; ``requires_any``: at least one of these.
        default: computed by ``dgm eval`` when no metrics are named.
        data: returns why a data spec does not suit the metric (e.g. no known modes), or None.
        plan: returns what the metric will compute and the work to time for the estimate that
            :func:`evaluate` prints first (with ``progress``).
    """

    def wrap(fn: Callable[[GenerativeModel, EvalContext], list[Result]]) -> Callable:
        METRICS[name] = Metric(name, tuple(requires), tuple(requires_any), fn, description, default, data, plan)
        return fn

    return wrap


def supported(model: GenerativeModel, spec: DataSpec | None = None) -> list[str]:
    """The registered metrics ``model`` can be evaluated with (on data like ``spec``, if given)."""
    have = capabilities(model)
    return [m.name for m in METRICS.values() if set(m.requires) <= have
            and (not m.requires_any or have & set(m.requires_any)) and m.unsuitable(spec) is None]


def duration(seconds: float) -> str:
    """``"about 4 h"``, ``"about 3 min"``, ``"about 20 s"``, ``"under a second"``."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


#: an estimate above this many seconds comes with the plan's advice on making it cheaper
LONG_SECONDS = 60.0


def announce(model: GenerativeModel, names: Sequence[str], ctx: EvalContext) -> None:
    """Print one line per metric (stderr): what it will compute and roughly how long that takes,
    from timing each piece of work on a first small batch. The probes draw their own random numbers
    and share nothing with the evaluation: its results do not depend on whether this ran."""
    from tqdm.auto import tqdm

    ctx = replace(ctx, shared={})
    timed: dict[str, float] = {}
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(ctx.seed + 1)
        for name in names:
            m = METRICS[name]
            if m.plan is None:
                tqdm.write(f"dgm: {name}: {m.description}", file=sys.stderr)
                continue
            try:
                plan = m.plan(model, ctx)
            except DgmError:  # the evaluation itself says why
                continue
            seconds, shared = 0.0, []
            for work in plan.work:
                if work.key in timed:
                    shared.append(work.key)
                    continue
                n = min(work.probe_units, work.units)
                start = time.perf_counter()
                if n:
                    try:
                        work.probe(n)
                    except DgmError:  # the evaluation itself says why
                        break
                timed[work.key] = (time.perf_counter() - start) * work.units / max(n, 1)
                seconds += timed[work.key]
            line = f"dgm: {name}: {plan.what}: {duration(seconds)}"
            if shared:
                line += f" (shares the {', '.join(shared)} of the metrics above)"
            if seconds > LONG_SECONDS and plan.cheaper:
                line += f" (cheaper: {plan.cheaper})"
            tqdm.write(line, file=sys.stderr)


@torch.inference_mode()
def evaluate(model: GenerativeModel, data: Dataset, metrics: Sequence[str] | None = None, *,
             train: Dataset | None = None, k: int = 1000, batch_size: int = 256, num_samples: int = 10000,
             feature_net: str | None = None, inception_weights: str | None = None,
             kid_subset_size: int | None = None, seed: int = 0, progress: bool = True,
             world: World = SINGLE) -> list[Result]:
    """Compute ``metrics`` (default: every default metric the model supports) of ``model`` on ``data``.

    Args:
        model: any registered model; its capabilities decide which metrics apply.
        data: an evaluation split in the model's representation (``dgm.run.load_data``).
        metrics: names from :data:`METRICS`; asking for one the model cannot give raises a
            :class:`DgmError` that lists what it can.
        train: the training split (for representation probes and the memorisation check).
        k: importance samples of IWAE bounds.
        num_samples: samples drawn for FID, KID, IS, precision/recall, mode coverage.
        feature_net: ``fmnist-net``, ``digits-net`` or ``inception`` (default: by image size).
        inception_weights: the pt_inception-2015-12-05 weights file (or $DGM_INCEPTION_WEIGHTS).
        seed: seeds all Monte Carlo noise and sampling, so results are reproducible.
        progress: first print what each metric will compute and roughly how long it will take
            (timed on a first batch), then show a progress bar for every long phase.
        world: the processes of a torchrun launch that share the evaluation (every process calls
            ``evaluate`` alike): each computes its share of the examples' bounds and of the samples and
            their features (:meth:`EvalContext.spread`), and every process returns the same results,
            equal to one process's.

    Example:
        >>> results = dgm.evaluate(model, test, ["nll", "posterior_collapse"], k=1000)
        >>> print(results_table(results))
    """
    if data.spec.shape != model.spec.shape:
        raise DgmError(f"the data has examples of shape {data.spec.shape}, the model expects "
                       f"{model.spec.shape}: evaluate on the data the model was trained on")
    names = list(metrics) if metrics else [m for m in supported(model, data.spec) if METRICS[m].default]
    for name in names:
        if name not in METRICS:
            raise unknown_name("metric", name, METRICS)
        m = METRICS[name]
        if name not in supported(model):
            have = capabilities(model)
            if set(m.requires_any or m.requires) <= LIKELIHOOD_CAPABILITIES and not have & LIKELIHOOD_CAPABILITIES:
                others = ', '.join(supported(model, data.spec)) or 'sample-based metrics'
                conditional = [c for c in CONDITIONAL_LIKELIHOODS if c in have]
                if conditional:
                    raise DgmError(f"model {model.name!r} has a likelihood only given its condition ({conditional[0]}: "
                                   f"log p(x | caption, class or factors)), not of x alone, so it cannot give "
                                   f"{name!r}; call {conditional[0]} from Python, or evaluate it with {others}")
                raise DgmError(f"model {model.name!r} has no likelihood: it is an implicit model that can sample "
                               f"but defines no density, so it cannot give {name!r}; evaluate it with {others}")
            needs = " and ".join(m.requires) or " or ".join(m.requires_any)
            raise DgmError(f"model {model.name!r} cannot give {name!r} ({m.description}; it needs {needs}): "
                           f"it supports {', '.join(supported(model, data.spec)) or 'no metric'}")
        if m.unsuitable(data.spec):
            raise DgmError(f"{name!r} does not apply to {data.spec.name!r}: {m.unsuitable(data.spec)}")
    ctx = EvalContext(data.to(model.device), None if train is None else train.to(model.device), k=k,
                      batch_size=batch_size, num_samples=num_samples, feature_net=feature_net,
                      inception_weights=inception_weights, kid_subset_size=kid_subset_size, seed=seed,
                      progress=progress, world=world)
    was_training = model.training
    model.eval()
    if progress:
        announce(model, names, ctx)
    results: list[Result] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            try:
                results.extend(METRICS[name].compute(model, ctx))
            except DgmError as e:
                if metrics:  # a metric the user named must run
                    raise
                # of the defaults, one that cannot run here (no feature network for this image size,
                # one class for a probe) is left out with a note: the others still run
                print(f"dgm: note: {name} left out: {e}", file=sys.stderr)
    model.train(was_training)
    return results


#: a run's evaluation results: the union of every ``dgm eval`` and app that measured it
RESULTS_FILE = "eval.json"


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The results recorded in the run's :data:`RESULTS_FILE` (as JSON objects); none before an evaluation."""
    from dgm.train.checkpoint import load_json

    path = Path(run_dir) / RESULTS_FILE
    return load_json(path) if path.exists() else []


def record_results(run_dir: str | Path, results: Sequence[Result]) -> None:
    """Add ``results`` to the run's :data:`RESULTS_FILE`, replacing earlier results of the same metrics
    and keeping the others (one file, the union of evaluations, which the report and ``dgm compare`` read)."""
    from dgm.train.checkpoint import save_json

    fresh = {r.metric for r in results}
    kept = [r for r in read_results(run_dir) if r.get("metric") not in fresh]
    save_json(kept + [r.to_json() for r in results], Path(run_dir) / RESULTS_FILE)


def results_table(results: Sequence[Result]) -> str:
    """A plain-text table of results (the CLI prints it)."""
    rows = [("metric", "value", "unit", "qualifier", "split")]
    rows += [(r.metric, f"{r.value:.4f}", r.unit, r.qualifier, r.split) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
