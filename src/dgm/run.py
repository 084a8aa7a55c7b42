"""Runs: a model, its data and its trainer settings in one JSON-able config, trained into a folder.

``config.json`` in a run directory is a :class:`RunConfig`; :func:`load` rebuilds the trained model
from it and the safetensors weights beside it, so a run is reproducible from its folder alone.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from dgm import __version__
from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError, unknown_name
from dgm.models.base import GenerativeModel, config_to_json, make_config, model_class
from dgm.settings import NonNegativeInt, PositiveInt, coerce, type_hints
from dgm.train import checkpoint as ckpt
from dgm.train import distributed
from dgm.train.trainer import TrainConfig, Trainer, resolve_device


@dataclass
class DataConfig:
    """Which data a run trains on (``--set data.KEY=VALUE``)."""

    name: str = "digits"  # a name from 'dgm list', or folder:PATH / npz:PATH
    representation: str | None = None  # None: the one the model asks for (e.g. binary-dynamic for Bernoulli)
    size: PositiveInt | None = None  # folder: images are resized to size x size; text: bytes per sequence (256)
    channels: Literal[1, 3] | None = None  # folder: 1 (grayscale) or 3 (RGB)
    max_examples: PositiveInt | None = None  # train on the first N examples only (quick runs)
    # keep the labels of this many training examples, the same number per class, chosen with
    # data.seed; the rest unlabelled (semi-supervised models): see dgm.data.labels
    labelled: PositiveInt | None = None
    # with data.labelled: labelled examples added to every training batch, in turn from the labelled
    # subset (None: as many as train.batch_size, at most the subset; 0: none, they come as they fall)
    labelled_per_batch: NonNegativeInt | None = None
    seed: NonNegativeInt = 0  # the data's own draws (the labelled subset), apart from the run's seed


@dataclass
class RunConfig:
    """Everything needed to rebuild a run: ``config.json``."""

    model: str  # registered model name
    model_config: dict[str, Any] = field(default_factory=dict)  # the model's Config, as plain values
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self, spec: DataSpec | None = None) -> dict[str, Any]:
        out = {"dgm_version": __version__, "model": self.model, "model_config": self.model_config,
               "data": asdict(self.data), "train": asdict(self.train)}
        if spec is not None:
            out["spec"] = spec.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        try:
            return cls(model=d["model"], model_config=dict(d.get("model_config", {})),
                       data=_dataclass_from(DataConfig, d.get("data", {}), "data"),
                       train=_dataclass_from(TrainConfig, d.get("train", {}), "train"))
        except (KeyError, TypeError) as e:
            raise DgmError(f"config.json is not a dgm run config ({e!r}): pass a folder written by 'dgm train'") from None

    # --- settings by dotted key (the CLI's --set and YAML files) ------------------------------------
    def set(self, key: str, value: Any) -> None:
        """Set ``model.KEY``, ``train.KEY`` or ``data.KEY`` (a bare KEY is looked up in that order)."""
        cls = model_class(self.model)
        sections: dict[str, tuple[Any, dict[str, Any]]] = {
            "model": (cls.Config, {f.name: f for f in dataclasses.fields(cls.Config)}),
            "train": (TrainConfig, {f.name: f for f in dataclasses.fields(TrainConfig)}),
            "data": (DataConfig, {f.name: f for f in dataclasses.fields(DataConfig)}),
        }
        if "." in key:
            section, name = key.split(".", 1)
            if section not in sections:
                raise unknown_name("settings section", section, sections)
            if name not in sections[section][1]:
                raise unknown_name(f"{section} setting", name, sections[section][1])
        else:
            matches = [s for s, (_, fields) in sections.items() if key in fields]
            if not matches:
                every = [f"{s}.{n}" for s, (_, fields) in sections.items() for n in fields]
                raise unknown_name("setting", key, every)
            section, name = matches[0], key
        hint = type_hints(sections[section][0])[name]
        typed = coerce(value, hint, f"{section}.{name}")
        if section == "model":
            self.model_config[name] = typed
        else:
            setattr(getattr(self, section), name, typed)


def _dataclass_from(cls: type, values: dict[str, Any], section: str) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in fields:
            raise unknown_name(f"{section} setting", k, fields)
    hints = type_hints(cls)
    return cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


# --- building -------------------------------------------------------------------------------------
def load_data(config: RunConfig, split: str, *, device: str | torch.device = "cpu") -> Dataset:
    """The split of the run's dataset in the representation its model trains on."""
    from dgm import data as dgm_data

    d = config.data
    natural = dgm_data.load(d.name, split, size=d.size, channels=d.channels, device=device)
    representation = d.representation or representation_for(config, natural.spec)
    dataset = natural.with_representation(representation)
    if split == "train" and d.max_examples:
        dataset = dataset.subset(d.max_examples)
    if split == "train" and d.labelled:  # the test split keeps every label, to score classifiers
        per_batch = config.train.batch_size if d.labelled_per_batch is None else d.labelled_per_batch
        dataset = dataset.with_labelled(d.labelled, d.seed, per_batch=per_batch)
    return dataset


#: the record of a run's labelled subset (data.labelled): which training examples kept their label
LABELS_RECORD = "labels.json"


def record_labels(data: Dataset, out: Path) -> None:
    """Write which training examples keep their label (:data:`LABELS_RECORD`: the count, the count
    per class, the indices) and say when the count does not divide among the classes."""
    if data.labelled is None:
        return
    from dgm.train.trainer import note

    index = torch.nonzero(data.labelled.cpu()).flatten()
    labels = data.labels.cpu()[index]
    k = data.spec.num_classes or int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=k).tolist()
    ckpt.save_json({"count": len(index), "per_class": counts, "labelled_per_batch": data.labelled_per_batch,
                    "indices": index.tolist()}, out / LABELS_RECORD)
    if len(set(counts)) > 1:
        more = [c for c in range(k) if counts[c] == max(counts)]
        note(f"{len(index)} labels do not divide among {k} classes: classes {more[0]}-{more[-1]} keep "
             f"{max(counts)} each, the others {min(counts)} (the list is in {out / LABELS_RECORD})")


def representation_for(config: RunConfig, spec: DataSpec) -> str:
    cls = model_class(config.model)
    return cls.default_representation(make_config(cls, config.model_config), spec)


def build_model(config: RunConfig, spec: DataSpec) -> GenerativeModel:
    cls = model_class(config.model)
    torch.manual_seed(config.train.seed)  # the initial weights follow the run's seed
    return cls(make_config(cls, config.model_config), spec)


#: Set to 1 to run every documented command at a tiny size (the README's commands are tested so):
#: 2 steps per epoch, 256 training examples, 4 images per sample grid, and the model settings of
#: :data:`TINY_MODEL_CAPS` (the epochs stay, so resuming to more epochs works as written). The capped
#: values land in config.json, so a tiny run says what it was.
TINY = "DGM_TINY"

#: Model settings capped under :data:`TINY` in every model whose config has a field of that name:
#: chains that cost a network pass per step (a diffusion's T, which its ancestral sampler, its bound
#: and its restorations walk in full, and the DDIM steps of its training and report pictures).
TINY_MODEL_CAPS = {"timesteps": 100, "preview_steps": 10}


def tiny() -> bool:
    return os.environ.get(TINY, "") not in ("", "0")


def cap_to_tiny(config: RunConfig) -> None:
    """Shrink ``config`` in place to the tiny settings of :data:`TINY`."""
    t, d = config.train, config.data
    t.max_steps_per_epoch = min(t.max_steps_per_epoch or 2, 2)
    t.num_samples = min(t.num_samples, 4)
    d.max_examples = min(d.max_examples or 256, 256)
    defaults = {f.name: f.default for f in dataclasses.fields(model_class(config.model).Config)}
    for name, cap in TINY_MODEL_CAPS.items():
        if isinstance(defaults.get(name), int):
            config.model_config[name] = min(config.model_config.get(name, defaults[name]), cap)


def train(config: RunConfig, out: str | Path, *, resume: bool = False) -> tuple[GenerativeModel, Path]:
    """Train the run described by ``config`` into the folder ``out`` (or resume the run there).

    Returns the trained model (carrying its EMA weights if EMA was kept) and the run directory.
    ``config`` is left as given: the settings resolved here (the model's defaults, its EMA, the
    batch size that fits the split, the tiny caps) go to the run's ``config.json``, which
    :func:`read_config` reads back.
    """
    config = copy.deepcopy(config)  # resolved below; the caller's stays as it was
    out = Path(out)
    if tiny():
        cap_to_tiny(config)
    world = distributed.launched()  # started by torchrun: one of several processes (dgm.train.distributed)
    device = resolve_device(config.train.device)
    owned = world.active and not distributed.connected()  # a script of the user's may have connected
    if world.active:
        device = distributed.connect(world, device, config.train.backend)
    try:  # a process that stops, for any reason, leaves the group cleanly and frees the others
        if world.active:
            distributed.check_same(world, "settings (model, data, train, output folder)",
                                   json.dumps([asdict(config), str(out.resolve()), resume], sort_keys=True, default=str))
            config.train.progress = config.train.progress and world.writes  # one progress bar, rank 0's
        if resume:  # before anything is written: a run with nothing left to train stays as it is
            check_resumable(out, config.train.epochs)
        data = load_data(config, "train", device=device)
        # before anything is written: every process needs its equal share of each batch (Trainer checks again)
        distributed.check_batch(world, min(config.train.batch_size, len(data)),
                                data.labelled_per_batch if data.labelled is not None else 0)
        model = build_model(config, data.spec)
        # the full model config (defaults included) is what lands in the checkpoint
        config.model_config = config_to_json(model.config)
        if config.train.ema is None:  # the model's own default (diffusion samples with EMA weights)
            config.train.ema = type(model).default_ema
        if not resume:
            if (out / ckpt.TRAINER_STATE).exists():
                raise DgmError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
            distributed.barrier(world)  # every process has looked before rank 0 writes
            if world.writes:
                out.mkdir(parents=True, exist_ok=True)
        callbacks = monitors(model, data, lambda: load_data(config, "test", device=device))
        trainer = Trainer(model, data, config.train, run_dir=out, callbacks=callbacks, world=world, device=device)
        # config.json describes the run as trained: the target epochs, the batch size actually used (the
        # trainer caps it at the size of a small split)
        config.train = trainer.config
        if world.writes:
            ckpt.save_json(config.to_json(data.spec), out / ckpt.CONFIG)
            if not resume:
                record_labels(data, out)
        trainer.fit(resume=resume)
    finally:
        if owned:
            distributed.disconnect()
    if trainer.ema is not None:
        model.load_state_dict(trainer.ema.shadow)
    return model.eval(), out


def check_resumable(run_dir: Path, epochs: int) -> None:
    """Refuse to resume ``run_dir`` to ``epochs`` epochs when it has no checkpoint, or has already
    trained that many (one line that says what to pass)."""
    ckpt.complete_pending(run_dir)
    if not (run_dir / ckpt.TRAINER_STATE).exists():
        raise DgmError(f"{run_dir} holds no checkpoint to resume (the run stopped before it saved one): "
                       f"train it anew with --out {run_dir}")
    done = ckpt.load_json(run_dir / ckpt.TRAINER_STATE)["epoch"]
    if epochs <= done:
        raise DgmError(f"{run_dir} has already trained {done} epoch{'' if done == 1 else 's'}; "
                       f"pass --epochs above {done} to train further")


def monitors(model: GenerativeModel, data: Dataset, test: Callable[[], Dataset] | None = None) -> list[Any]:
    """The diagnostics logged during training: those the data calls for (mode coverage on mixtures
    with known modes) and those the model names (:meth:`GenerativeModel.monitors`, e.g. a game's
    duality gaps, a language model's held-out bits per character), built from
    :data:`dgm.eval.MONITORS`. A monitor that reads held-out data (``needs_test``) gets ``test()``,
    the test split, as its option ``test``."""
    from dgm.eval import MONITORS, build_monitor
    from dgm.models.base import capabilities

    wanted = dict(model.monitors())
    if "modes" in data.spec.extras and "sample" in capabilities(model):
        wanted.setdefault("mode_coverage", {})
    built = []
    for name, options in wanted.items():
        if getattr(MONITORS.get(name), "needs_test", False):
            if test is None:
                continue
            options = {**options, "test": test()}
        built.append(build_monitor(name, options))
    return built


def read_config(run_dir: str | Path) -> tuple[RunConfig, DataSpec]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DgmError(f"run directory {run_dir} does not exist: pass the --out folder of 'dgm train'")
    raw = ckpt.load_json(run_dir / ckpt.CONFIG)
    if not isinstance(raw, dict) or "model" not in raw or "spec" not in raw:
        raise DgmError(f"{run_dir / ckpt.CONFIG} is not a dgm run config: pass a folder written by 'dgm train'")
    try:
        spec = DataSpec.from_json(raw["spec"])
    except TypeError as e:
        raise DgmError(f"{run_dir / ckpt.CONFIG} has a damaged data spec ({e})") from None
    config = RunConfig.from_json(raw)
    # a run written by an older dgm: its model reads the old settings as this version means them
    config.model_config = model_class(config.model).migrate_config(
        config.model_config, spec, str(raw.get("dgm_version", __version__)))
    return config, spec


def load(run_dir: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a trained model from its run directory (EMA weights when the run kept them).

    Example:
        >>> model = dgm.load("runs/vae-digits")
        >>> x = model.sample(16)
    """
    run_dir = Path(run_dir)
    config, spec = read_config(run_dir)
    model = build_model(config, spec)
    weights = run_dir / (ckpt.EMA_WEIGHTS if ema and (run_dir / ckpt.EMA_WEIGHTS).exists() else ckpt.WEIGHTS)
    ckpt.load_state_dict_checked(model, ckpt.load_tensors(weights), weights)
    return model.to(device).eval()
