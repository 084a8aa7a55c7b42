"""One training loop for every family.

The trainer knows nothing about the model it trains beyond the protocol of
:class:`~dgm.models.base.GenerativeModel`: it asks for the model's stages (one, holding its phases,
unless the model trains in stages), and for each stage in turn builds fresh optimisers, one per
phase, and within each epoch cycles through the active phases, ``phase.steps`` optimiser steps each,
every step on a fresh batch::

    for stage in stages:                           # e.g. a VQ-VAE, then a prior over its codes
      for epoch in stage's epochs:                 # the learning-rate schedule runs over the stage
        for i, batch in enumerate(data.batches(...)):
            phase = cycle[stage_step % len(cycle)]  # e.g. [critic] * 5 + [generator], across epochs
            loss = model.loss(batch, phase.name, progress)
            step(phase.optimizer, loss)
            sums += loss.detach()                  # on the device: no host sync in the loop
            if i % log_every == 0:
                check_finite(); write_row(sums)    # the one read of the device per interval

Nothing in a step reads a value back to the host (``.item()``, ``float(tensor)``, a Python ``if``
on a tensor): on a GPU that would wait for every kernel queued so far, each step. Losses and
metrics are summed on the device and read at the logging interval; whether a loss went NaN or
infinite is summed there too and checked at the logging interval and before every checkpoint, so a
diverged run stops within ``train.log_every`` steps and never overwrites its last good checkpoint.

Extensions (mode-coverage logging, duality gaps, ...) attach as callbacks, not as edits here.
"""
from __future__ import annotations

import csv
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

from dgm.data.core import Dataset
from dgm.errors import DgmError
from dgm.models.base import (GenerativeModel, NoiseShard, Phase, Progress, Stage, capabilities, fits_in_closed_form,
                             noise_shard)
from dgm.train import checkpoint as ckpt
from dgm.train import distributed
from dgm.settings import Decay, check, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from dgm.train.ema import EMA

#: the training noise generator is seeded with ``train.seed`` plus this, so that its stream differs
#: from the data order's (seeded with ``train.seed``)
NOISE_SEED_OFFSET = 0x5EED

@dataclass
class TrainConfig:
    """Settings of the training loop (``--set train.KEY=VALUE``)."""

    # passes over the training split, in all. A model trained in stages with a budget each: their sum
    # (the default 10 takes it; another value that disagrees is refused); whose last stage sets no
    # budget: that stage trains for what the others leave of this
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128  # examples per optimiser step
    # Adam learning rate of the phases that do not set their own (a GAN's players set theirs: then a
    # value other than this default counts as set by hand and is refused, naming the model's settings)
    lr: PositiveFloat = 1e-3
    betas: tuple[Decay, Decay] = (0.9, 0.999)  # Adam betas of the phases without their own (refused as lr is)
    weight_decay: NonNegativeFloat = 0.0  # decoupled weight decay (AdamW)
    schedule: Literal["constant", "cosine"] = "constant"  # learning-rate schedule after warm-up, over each stage
    warmup_steps: NonNegativeInt = 0  # linear learning-rate warm-up from 0 at each stage's start, in optimiser steps
    grad_clip: PositiveFloat | None = None  # clip the global gradient norm of each phase to this value
    ema: Decay | None = None  # EMA decay of the weights, used to sample (e.g. 0.999); None: the model's default (ddpm 0.999, others none); 0: off
    seed: NonNegativeInt = 0  # seeds weights, data order and all noise: a run is reproducible from config.json
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast of the forward pass (AMX CPUs, GPUs)
    # layout of the conv weights and activations: auto takes the model's (channels_last for the conv VAE and
    # DCGAN, where it is faster; contiguous NCHW for the others)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # collectives when started by torchrun: gloo on CPUs, NCCL on GPUs
    max_steps_per_epoch: PositiveInt | None = None  # cut epochs short (quick runs, tests)
    log_every: PositiveInt = 10  # optimiser steps between rows of metrics.csv
    sample_every: NonNegativeInt = 1  # epochs between sample grids in samples/ (0: never)
    num_samples: PositiveInt = 64  # images in each sample grid
    checkpoint_minutes: NonNegativeFloat = 5.0  # minutes between checkpoints inside long epochs (0: only at epoch ends)
    progress: bool = True  # show a progress bar with the live loss


class Callback(Protocol):
    """Hooks into the loop; implement any of them (every method is optional)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float] | None: ...


class TrainingDiverged(DgmError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    every_process = True  # the processes count non-finite losses together (agreed at each log row)


class TrainingInterrupted(DgmError):
    """Ctrl-C during training; the state at the last completed step was saved."""

    exit_code = 130  # as a shell reports a process ended by SIGINT
    every_process = True  # data-parallel processes stop together (agreed at a log row): rank 0 says so


@dataclass
class _Position:
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches consumed in the current epoch
    step: int = 0  # optimiser steps so far
    data_rng: Tensor | None = None  # state of the data generator at the start of the epoch
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DgmError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DgmError(f"device {name!r} asked for, but no CUDA GPU is available: use --set train.device=cpu")
    return device


def memory_format(model: GenerativeModel, setting: str) -> torch.memory_format:
    """The layout ``train.memory_format`` names for ``model`` (``auto``: the model's own)."""
    if setting == "channels_last" and any(p.dim() == 5 for p in model.parameters()):
        raise DgmError(f"train.memory_format=channels_last is for 2-D convolutions, and model {model.name!r} has "
                       "3-D ones (5-D weights): use --set train.memory_format=auto")
    return {"auto": model.memory_format(), "contiguous": torch.contiguous_format,
            "channels_last": torch.channels_last}[setting]


def like(value: Tensor, reference: Tensor | None) -> Tensor:
    """``value`` in the memory layout of ``reference`` (a tensor read back contiguous from a
    checkpoint, for a parameter that trains in channels_last): element-wise kernels that take
    flat buffers, as the fused optimiser step does, need matching strides."""
    if reference is None or value.shape != reference.shape or value.stride() == reference.stride():
        return value
    return torch.empty_like(reference, dtype=value.dtype).copy_(value)


class Trainer:
    """Trains ``model`` on ``data`` with ``config``, writing checkpoints and logs to ``run_dir``.

    Args:
        model: any registered model.
        data: the training split, in the representation the model trains on.
        config: the loop's settings.
        run_dir: where checkpoints, ``metrics.csv`` and ``samples/`` go; ``None`` keeps nothing.
        callbacks: objects with an ``on_epoch_end(trainer, epoch)`` returning extra metrics to log.
        world: this process among the processes of a data-parallel run (:mod:`dgm.train.distributed`,
            already connected); by default the only one. Only rank 0 writes to ``run_dir``.
        device: the device to train on (a data-parallel process's own GPU); default ``config.device``.
    """

    def __init__(self, model: GenerativeModel, data: Dataset, config: TrainConfig, *,
                 run_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
                 world: distributed.World = distributed.SINGLE, device: torch.device | None = None) -> None:
        self.config = check(config, "train")
        self.world = world
        self.device = device if device is not None else resolve_device(config.device)
        self.model = model.to(self.device, memory_format=memory_format(model, self.config.memory_format))
        self.data = data.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and world.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = list(callbacks)
        if len(self.data) == 0:
            raise DgmError(f"the training split of {data.spec.name!r} is empty: give the data at least one example")
        if len(self.data) < self.config.batch_size:  # a small folder trains on the whole split per step
            note(f"the training split has {len(self.data)} examples, fewer than a batch of "
                 f"{self.config.batch_size}: training on batches of {len(self.data)}")
            self.config = replace(self.config, batch_size=len(self.data))
        config = self.config
        # the labelled examples each batch carries at its end (partially labelled data)
        self._labelled_extra = data.labelled_per_batch if data.labelled is not None else 0
        self._local_batch = distributed.check_batch(world, config.batch_size, self._labelled_extra)
        self.stages: list[Stage] = model.stages()
        self.phases: list[Phase] = [p for s in self.stages for p in s.phases]  # of every stage
        self._stage_of = {p.name: s for s in self.stages for p in s.phases}
        self._check_stages()
        if fits_in_closed_form(model) and self.config.epochs != 1:  # one fit, whatever train.epochs says
            self.config = replace(self.config, epochs=1)
        self._refuse_unused_settings()
        config = self.config  # with the epochs the stages resolved
        # a stage freezes the others' parameters while it trains; fit() gives these flags back
        self._requires_grad = {id(p): (p, p.requires_grad) for p in self._staged_parameters()}
        self.stage_index = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # the current stage's, by phase
        self._enter_stage(0)
        self.ema = EMA(model, config.ema) if config.ema else None
        self.data_rng = torch.Generator(device="cpu").manual_seed(config.seed)
        # the noise the model draws in ``loss`` (Progress.generator), on its device: the run owns it,
        # so nothing else that touches torch's global RNG (a callback, a metric) changes the curve
        self.noise_rng = torch.Generator(device=self.device).manual_seed(config.seed + NOISE_SEED_OFFSET)
        self.position = _Position()
        # the current log interval, kept on the device: sums of each logged value, (), float32
        self._log_sums: dict[str, Tensor] = {}
        self._log_counts: dict[str, int] = {}  # optimiser steps of each phase in the interval
        self._nonfinite: dict[str, Tensor] = {}  # per phase: count of NaN/inf losses, (), int64
        self._checked_step = 0  # every loss up to this step is known to be finite
        self._postfix = ""  # the progress bar's text: the losses of the last logged row
        self._saved_at = self.clock()  # when the last checkpoint was written (clock seconds)
        # data-parallel: what the processes agreed on at the last log row (see _agree)
        self._agreed, self._stop_agreed, self._save_agreed = False, False, False

    #: seconds on a monotonic clock, read once per step for time-interval checkpoints (tests replace it)
    clock: Callable[[], float] = staticmethod(time.monotonic)

    # --- schedule ---------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        n = self.data.num_batches(self.config.batch_size, drop_last=True)
        return min(n, self.config.max_steps_per_epoch or n)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def stage(self) -> Stage:
        """The stage being trained."""
        return self.stages[self.stage_index]

    def stage_epochs(self) -> list[tuple[int, int]]:
        """``(first epoch, epochs)`` of each stage in the run (a last stage without a budget takes
        the rest of ``train.epochs``)."""
        spans, first = [], 0
        for stage in self.stages:
            epochs = stage.epochs if stage.epochs is not None else self.config.epochs - first
            spans.append((first, epochs))
            first += epochs
        return spans

    def stage_at(self, epoch: int) -> int:
        """The index of the stage that trains ``epoch`` (the last stage from the run's end on)."""
        for index, (first, epochs) in enumerate(self.stage_epochs()):
            if epoch < first + epochs:
                return index
        return len(self.stages) - 1

    def _check_stages(self) -> None:
        """Stages the trainer can run, and ``train.epochs`` resolved against their budgets."""
        model, stages = self.model.name, self.stages
        if not stages or any(not s.phases for s in stages):
            raise DgmError(f"model {model!r} declares a stage without phases: every stage trains at least one phase")
        names = [p.name for p in self.phases]
        if len(set(names)) < len(names):
            raise DgmError(f"model {model!r} names phases {names} across its stages: give each phase its own name")
        if any(s.epochs is not None and s.epochs < 1 for s in stages):
            raise DgmError(f"model {model!r} gives a stage a budget below 1 epoch: every stage trains at least one")
        if any(s.epochs is None for s in stages[:-1]):
            raise DgmError(f"model {model!r} leaves the budget of a stage before its last unset: "
                           f"only the last stage may train for the rest of train.epochs")
        fixed = sum(s.epochs or 0 for s in stages)
        budgets = ", then ".join(f"{s.name} ({s.epochs} epochs)" for s in stages if s.epochs is not None)
        if stages[-1].epochs is None:
            if self.config.epochs <= fixed:
                raise DgmError(f"model {model!r} trains {budgets} before stage {stages[-1].name!r}: "
                               f"set train.epochs above {fixed} to leave epochs for it")
        elif self.config.epochs != fixed:
            if self.config.epochs != TrainConfig().epochs:  # set by hand: it would not be the budget
                raise DgmError(f"model {model!r} trains {budgets}: {fixed} epochs in all; "
                               f"set train.epochs={fixed} or drop it")
            self.config = replace(self.config, epochs=fixed)

    def _staged_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of every stage's phases (a one-stage model freezes nothing)."""
        if len(self.stages) == 1:
            return []
        return list({id(p): p for phase in self.phases for p in phase.parameters}.values())

    def _enter_stage(self, index: int) -> None:
        """Start (or resume) stage ``index``: fresh optimisers for its phases."""
        self.stage_index = index
        # fused: one kernel for the whole update instead of a few per tensor; on 2 CPU cores it takes
        # a 12 M-parameter step from 15 ms to 5 ms (a third of a bf16 flow's training step)
        fused = self.device.type in ("cpu", "cuda")
        self.optimizers = {p.name: torch.optim.AdamW(
            p.parameters, lr=self.phase_lr(p), betas=p.betas or self.config.betas,
            weight_decay=self.config.weight_decay, fused=fused) for p in self.stage.phases}

    def _freeze_other_stages(self) -> None:
        """While a stage trains, the parameters only other stages train get no gradients (no
        compute, no memory spent on them); :meth:`fit` gives the flags back when it ends."""
        own = {id(p) for phase in self.stage.phases for p in phase.parameters}
        for p in self._staged_parameters():
            p.requires_grad_(id(p) in own and self._requires_grad[id(p)][1])

    def _restore_requires_grad(self) -> None:
        for p, flag in self._requires_grad.values():
            p.requires_grad_(flag)

    def phase_lr(self, phase: Phase) -> float:
        """The base learning rate of ``phase``: its own, else its stage's, else ``train.lr`` (before
        the schedule)."""
        return phase.lr or self._stage_of[phase.name].lr or self.config.lr

    def _refuse_unused_settings(self) -> None:
        """``train.lr`` / ``train.betas`` / ``train.schedule`` / ``train.warmup_steps`` set (i.e. not
        the default) for a model whose phases (or stages) all set their own would be silently
        ignored: say which of the model's settings to use instead."""
        defaults = TrainConfig()
        for key in ("lr", "betas", "schedule", "warmup_steps"):
            if key in ("lr", "betas"):
                who, unset = "phases", [p.name for p in self.phases if getattr(p, key) is None
                                        and (key == "betas" or self._stage_of[p.name].lr is None)]
                named = [p.name for p in self.phases]
            else:
                who, unset = "stages", [s.name for s in self.stages if getattr(s, key) is None]
                named = [s.name for s in self.stages]
            if getattr(self.config, key) == getattr(defaults, key) or unset:
                continue
            own = [f"model.{f.name}=..." for f in fields(self.model.config)
                   if f.name == key or f.name.startswith(key + "_")] if is_dataclass(self.model.config) else []
            raise DgmError(
                f"model {self.model.name!r} sets the {key} of each of its {who} "
                f"({', '.join(named)}), so train.{key} would not be used: "
                + (f"use --set {' / '.join(own)} instead" if own else f"drop train.{key}"))

    def lr_factor(self, step: int) -> float:
        """The schedule's factor at run step ``step``, within the stage that trains it: linear
        warm-up from the stage's start, then constant or cosine down to 0 at the stage's end."""
        index = self.stage_at(step // max(1, self.steps_per_epoch))
        stage, (first, epochs) = self.stages[index], self.stage_epochs()[index]
        warmup = stage.warmup_steps if stage.warmup_steps is not None else self.config.warmup_steps
        schedule = stage.schedule or self.config.schedule
        step -= first * self.steps_per_epoch  # within the stage
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            t = (step - warmup) / max(1, epochs * self.steps_per_epoch - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    def cycle(self, epoch: int) -> list[Phase]:
        """The order of phases within one round of this epoch (e.g. five critic steps, one generator)."""
        first = self.stage_epochs()[self.stage_index][0]
        active = [p for p in self.stage.phases if p.active(epoch - first)]
        if not active:
            raise DgmError(f"no training phase of model {self.model.name!r} is active in epoch {epoch}"
                           + (f" (stage {self.stage.name!r})" if len(self.stages) > 1 else ""))
        return [p for p in active for _ in range(p.steps)]

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> list[dict[str, float]]:
        """Train to ``config.epochs`` (continuing from the run directory's checkpoint if ``resume``).

        Returns the logged rows (also in ``metrics.csv``).
        """
        if resume:
            self.load_checkpoint()
        elif self.position.step == 0:  # a fresh run: the model learns its vocabulary first
            self.model.prepare(self.data)
        if fits_in_closed_form(self.model):
            if self.world.active:
                raise distributed.WorldError(f"model {self.model.name!r} is fitted in closed form in one process: "
                               "train it without torchrun")
            return self._fit_closed_form()
        distributed.broadcast_state(self.model, self.world)  # every process starts from rank 0's weights
        self._checked_step = self.position.step  # a checkpoint holds finite losses only
        self._saved_at = self.clock()
        c, pos = self.config, self.position
        bar = None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.precision == "bf16")
        previous_handler = self._catch_interrupts()
        try:
            while pos.epoch < c.epochs:
                if self.stage_at(pos.epoch) != self.stage_index:  # (entered at the last epoch's end as a rule)
                    self._enter_stage(self.stage_at(pos.epoch))
                self._freeze_other_stages()
                first, epochs = self.stage_epochs()[self.stage_index]
                if pos.batch == 0:
                    pos.data_rng = self.data_rng.get_state()
                else:  # resuming inside an epoch: replay its order from the saved generator state
                    self.data_rng.set_state(pos.data_rng)
                cycle = self.cycle(pos.epoch)
                batches = self.data.batches(c.batch_size, shuffle=True, drop_last=True,
                                            generator=self.data_rng, start=pos.batch)
                bar = self._progress_bar(pos.epoch)
                self.model.train()
                shard = NoiseShard(self.world.rank, self.world.size, self._local_batch + self._labelled_extra
                                   // self.world.size) if self.world.active else None
                for batch in batches:
                    if pos.batch >= self.steps_per_epoch:
                        break
                    batch = distributed.shard(batch, self.world, self._labelled_extra)
                    stage_step = pos.step - first * self.steps_per_epoch
                    # the round runs on across epochs: an epoch shorter than a round (a small split,
                    # five critic steps and a generator step) still reaches every phase
                    phase = cycle[stage_step % len(cycle)]
                    try:
                        with autocast, noise_shard(shard):
                            out = self.model.loss(batch, phase.name, Progress(
                                pos.step, pos.epoch, self.total_steps, self.stage.name,
                                stage_step, epochs * self.steps_per_epoch,
                                self.noise_rng))
                        self._step(phase, out.loss)
                    except Exception:
                        self._check_finite()  # an error on weights an unchecked NaN step spoiled is that NaN
                        raise
                    pos.batch += 1
                    pos.step += 1
                    self._accumulate(phase, out)
                    if bar is not None:
                        bar.update(1)
                    if pos.step % c.log_every == 0:
                        self._log_row()  # checks that the losses are finite before writing the row
                        if bar is not None:
                            bar.set_postfix_str(self._postfix, refresh=False)
                    if self.world.active:  # the processes stop and save together, as agreed at the log row
                        due, stop = self._save_agreed, self._stop_agreed
                        self._save_agreed = False
                    else:
                        due, stop = self._checkpoint_due(), self.stop_requested
                    if pos.batch < self.steps_per_epoch and due:
                        self.save_checkpoint()  # inside a long epoch; the epoch's end saves anyway
                    if stop:
                        raise KeyboardInterrupt
                if bar is not None:
                    bar.close()
                self._end_epoch()
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            self.save_checkpoint()
            raise TrainingInterrupted(
                f"interrupted at step {pos.step} (epoch {pos.epoch + 1}); the state was saved: "
                f"resume with 'dgm train --resume {self.run_dir}'" if self.run_dir else
                f"interrupted at step {pos.step}") from None
        finally:
            self._restore_requires_grad()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return pos.history

    def _fit_closed_form(self) -> list[dict[str, float]]:
        """Fit a model that is fitted in one call (:meth:`GenerativeModel.fit`: PPCA, factor analysis,
        a mixture by EM) on the whole split, in place of the loop: one row of its numbers, the sample
        grid and the checkpoint, as at an epoch's end (the run has one epoch: see ``__init__``)."""
        pos = self.position
        if pos.epoch >= 1:  # resumed after the fit: nothing left to do
            return pos.history
        self.model.train()
        try:
            numbers = self.model.fit(self.data, generator=self.data_rng, progress=self.config.progress)
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted while fitting {self.model.name!r}; nothing was saved: "
                                      f"run the command again") from None
        self._end_epoch({k: float(v) for k, v in numbers.items()})
        return pos.history

    def request_stop(self) -> None:
        """Stop after the current optimiser step, save, and raise :class:`TrainingInterrupted`."""
        self.stop_requested = True

    def _catch_interrupts(self):  # noqa: ANN202
        """The first Ctrl-C asks the loop to stop at the next step boundary (so the saved state is
        exactly that of a completed step); a second one interrupts at once."""
        self.stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):  # noqa: ANN001, ANN202
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        return signal.signal(signal.SIGINT, handler)

    def _step(self, phase: Phase, loss: Tensor) -> None:
        optimizer = self.optimizers[phase.name]
        for group in optimizer.param_groups:  # the rate used here is the one logged for the phase
            group["lr"] = self.phase_lr(phase) * self.lr_factor(self.position.step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(phase.parameters, self.world)  # the gradient of the global batch's mean
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(phase.parameters, self.config.grad_clip)
        optimizer.step()
        if phase.after_step is not None:
            phase.after_step()
        if self.ema is not None:
            self.ema.update(self.model, self.position.step)

    def _checkpoint_due(self) -> bool:
        minutes = self.config.checkpoint_minutes
        return self.run_dir is not None and minutes > 0 and self.clock() - self._saved_at >= 60 * minutes

    def _check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if a loss since the last check was NaN or infinite.

        One read of the device; called at each log row, before every checkpoint and on an error,
        so a diverged step is never saved (its NaN weights stay in memory only).
        """
        pos = self.position
        counts = torch.stack(list(self._nonfinite.values())).tolist() if self._nonfinite else []
        diverged = [name for name, count in zip(self._nonfinite, counts) if count]
        if not diverged:
            self._checked_step = pos.step
            return
        phase = diverged[0]
        total = self._log_sums.get(self._metric_names(phase, ["loss"])[0])  # holds the bad loss
        value = float(total) if total is not None else math.nan
        kind = "NaN" if math.isnan(value) else "infinite" if math.isinf(value) else "NaN or infinite"
        kept = "no checkpoint was written yet"
        if self.run_dir and (self.run_dir / ckpt.TRAINER_STATE).exists():  # perhaps mid-epoch, perhaps older
            saved = ckpt.load_json(self.run_dir / ckpt.TRAINER_STATE)
            kept = f"the last good checkpoint (epoch {saved['epoch']}, step {saved['step']}) is kept in {self.run_dir}"
        raise TrainingDiverged(
            f"the {phase} loss became {kind} between step {self._checked_step} and step {pos.step} "
            f"(epoch {pos.epoch + 1}; checked every train.log_every={self.config.log_every} steps); {kept}: "
            f"lower --set train.lr, set --set train.grad_clip=1.0, or try --set train.precision=fp32")

    # --- logging ----------------------------------------------------------------------------------
    def _metric_names(self, phase: str, names: Sequence[str]) -> list[str]:
        # one phase: "loss", "kl", "lr"; several players: "critic/loss", "generator/loss", "critic/lr"
        return list(names) if len(self.phases) == 1 else [f"{phase}/{n}" for n in names]

    def _accumulate(self, phase: Phase, out) -> None:  # noqa: ANN001 (a Loss)
        """Add the step's loss and metrics to the interval's sums, on the device: nothing is read."""
        loss = out.loss.detach()
        values = {"loss": loss, **{k: v.detach() for k, v in out.metrics.items()}}
        for name, value in zip(self._metric_names(phase.name, list(values)), values.values()):
            value = value.float().mean()
            self._log_sums[name] = self._log_sums[name] + value if name in self._log_sums else value
        bad = torch.isfinite(loss).logical_not().sum()
        self._nonfinite[phase.name] = self._nonfinite[phase.name] + bad if phase.name in self._nonfinite else bad
        self._log_counts[phase.name] = self._log_counts.get(phase.name, 0) + 1
        self._agreed = False

    def _agree(self) -> None:
        """Data-parallel: make the processes agree at a log row, in one all-reduce: the interval's sums
        become their mean over the processes, the counts of non-finite losses their total (so all
        stop on a divergence together), and whether to stop (Ctrl-C in any process) and to save
        (rank 0's clock) is decided for all."""
        names, phases = list(self._log_sums), list(self._nonfinite)
        flags = [float(self.stop_requested), float(self.world.writes and self._checkpoint_due())]
        parts = [torch.stack([self._log_sums[n].float() for n in names])] if names else []
        parts += [torch.stack([self._nonfinite[p].float() for p in phases])] if phases else []
        vector = torch.cat([*parts, torch.tensor(flags, device=self.device)])
        total = distributed.average(vector, self.world) * self.world.size
        for i, name in enumerate(names):
            self._log_sums[name] = total[i] / self.world.size
        for i, phase in enumerate(phases):
            self._nonfinite[phase] = total[len(names) + i].round().long()
        stop, save = total[-2:].tolist()
        self._stop_agreed, self._save_agreed, self._agreed = stop > 0, save > 0, True

    def _read_sums(self) -> dict[str, float]:
        """The interval's sums, read from the device at once."""
        totals = torch.stack(list(self._log_sums.values())).tolist() if self._log_sums else []
        return dict(zip(self._log_sums, totals))

    def _log_row(self, extra: dict[str, float] | None = None) -> None:
        if self.world.active and not self._agreed:
            self._agree()
        self._check_finite()  # a row is never written from a NaN interval
        pos = self.position
        row: dict[str, float] = {"step": pos.step, "epoch": pos.epoch + pos.batch / max(1, self.steps_per_epoch)}
        for name, total in self._read_sums().items():
            phase = name.split("/", 1)[0] if len(self.phases) > 1 else self.phases[0].name
            row[name] = total / self._log_counts[phase]
        for phase, optimizer in self.optimizers.items():  # the rate of each phase's last step
            if self._log_counts.get(phase):
                row[self._metric_names(phase, ["lr"])[0]] = optimizer.param_groups[0]["lr"]
        row.update(extra or {})
        self._log_sums, self._log_counts = {}, {}
        self._postfix = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.split("/")[-1] == "loss")
        pos.history.append(row)
        if self.run_dir is not None and self.world.writes:
            append_csv(self.run_dir / "metrics.csv", pos.history)
            self._tensorboard(row)

    def _tensorboard(self, row: dict[str, float]) -> None:
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(row["step"]))

    def _progress_bar(self, epoch: int):  # noqa: ANN202
        if not self.config.progress:
            return None
        from tqdm.auto import tqdm

        stage = f"{self.stage.name}: " if len(self.stages) > 1 else ""
        bar = tqdm(total=self.steps_per_epoch, initial=self.position.batch, leave=False,
                   desc=f"{stage}epoch {epoch + 1}/{self.config.epochs}", unit="step", dynamic_ncols=True)
        if self._postfix:
            bar.set_postfix_str(self._postfix, refresh=False)
        return bar

    def _end_epoch(self, numbers: dict[str, float] | None = None) -> None:
        """End the epoch: callbacks, the last row (with ``numbers``, e.g. a fit's), samples, the checkpoint."""
        if self.world.active:
            if not self._agreed:
                self._agree()  # the epoch's last (short) interval
            distributed.broadcast_state(self.model, self.world, buffers_only=True)  # rank 0's running statistics
        self._check_finite()  # before the callbacks sample from the weights
        pos = self.position
        extra = dict(numbers or {})
        for callback in self.callbacks:
            hook = getattr(callback, "on_epoch_end", None)
            extra.update((hook(self, pos.epoch) if hook else None) or {})
        if self._log_counts or extra:
            self._log_row(extra)
        if self.run_dir is not None and self.world.writes and self.config.sample_every \
                and "sample" in capabilities(self.model) and (pos.epoch + 1) % self.config.sample_every == 0:
            self.save_sample_grid(self.run_dir / "samples" / f"epoch_{pos.epoch + 1:03d}.png")
        pos.epoch += 1
        pos.batch = 0
        if pos.epoch < self.config.epochs and self.stage_at(pos.epoch) != self.stage_index:
            self._enter_stage(self.stage_at(pos.epoch))  # so the checkpoint holds the next stage's optimisers
        self.save_checkpoint()

    @torch.inference_mode()
    def save_sample_grid(self, path: Path) -> None:
        from dgm.data.pictures import sample_picture, sample_sound
        from dgm.io.images import save

        x = self.evaluation_samples(self.config.num_samples, seed=self.config.seed, progress=self.config.progress)
        reference = self.data.tensors(2000).x if not self.data.spec.is_image else None
        save(sample_picture(x, self.data.spec, reference), path)
        sound = sample_sound(x, self.data.spec)  # audio: the first samples as a WAV file beside the picture
        if sound is not None:
            path.with_suffix(".wav").write_bytes(sound)

    @torch.inference_mode()
    def evaluation_samples(self, n: int, *, seed: int, progress: bool = False) -> Tensor:
        """``n`` samples drawn with ``seed`` from the weights used for sampling (EMA when kept), in
        eval mode, from their own generator: the training noise (:attr:`noise_rng`) is left as it was."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with self.evaluation_weights() as model:
            model.eval()
            x = model.preview_sample(n, generator=generator, progress=progress)
            model.train()
        return x

    def evaluation_weights(self):  # noqa: ANN201
        """Context in which the model carries the weights used for sampling (EMA when kept)."""
        from contextlib import nullcontext

        return self.ema.applied(self.model) if self.ema is not None else nullcontext(self.model)

    # --- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.run_dir is None:
            return
        self._check_finite()  # never a checkpoint after a NaN step: the last good one stays
        if not self.world.writes:  # rank 0 writes the run's checkpoint: the state is the same everywhere
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pos = self.position
        tensors: dict[str, Tensor] = {"rng/noise": self.noise_rng.get_state(),
                                      "rng/data": self.data_rng.get_state(),
                                      # torch's global RNG serves only modules that take no generator (nn.Dropout)
                                      "rng/torch": torch.get_rng_state()}
        if self.device.type == "cuda":  # dropout on a GPU draws from the device's global generator
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        if pos.data_rng is not None:
            tensors["rng/data_epoch_start"] = pos.data_rng
        optim_meta = {}
        for name, optimizer in self.optimizers.items():
            t, meta = ckpt.flatten_optimizer(name, optimizer.state_dict())
            tensors.update(t)
            optim_meta[name] = meta
        files: dict[str, dict[str, Tensor]] = {ckpt.WEIGHTS: self.model.state_dict(), ckpt.TRAINER_TENSORS: tensors}
        if self.ema is not None:
            files[ckpt.EMA_WEIGHTS] = self.ema.shadow
        # a log interval cut by the checkpoint: its float32 sums, exactly, and its step counts
        log_sums = {**self._read_sums(), **{f"_count/{p}": n for p, n in self._log_counts.items()}}
        state = {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step, "stage": self.stage.name,
                 "optimizers": optim_meta, "log_sums": log_sums, "config": asdict(self.config)}
        # all files or none: a crash while saving leaves the previous checkpoint whole
        ckpt.save_checkpoint(self.run_dir, files, state)
        self._saved_at = self.clock()

    def load_checkpoint(self) -> None:
        assert self.run_dir is not None, "resuming needs a run directory"
        if self.world.writes:  # a save cut short by a kill is finished (or dropped) by the process that writes
            ckpt.complete_pending(self.run_dir)
        distributed.barrier(self.world)  # ... before any process reads the checkpoint
        state = ckpt.load_json(self.run_dir / ckpt.TRAINER_STATE)
        tensors = ckpt.load_tensors(self.run_dir / ckpt.TRAINER_TENSORS)
        ckpt.load_state_dict_checked(self.model, ckpt.load_tensors(self.run_dir / ckpt.WEIGHTS, self.device),
                                     self.run_dir / ckpt.WEIGHTS)
        if self.ema is not None and (self.run_dir / ckpt.EMA_WEIGHTS).exists():
            self.ema.shadow = {k: like(v, self.ema.shadow.get(k))
                               for k, v in ckpt.load_tensors(self.run_dir / ckpt.EMA_WEIGHTS, self.device).items()}
        # the stage whose optimisers the checkpoint holds (a checkpoint from before stages: the one)
        stage = state.get("stage", self.stages[0].name)
        index = next((i for i, s in enumerate(self.stages) if s.name == stage), None)
        if index is None or index != self.stage_at(state["epoch"]):
            raise DgmError(f"the checkpoint in {self.run_dir} is in stage {stage!r} at epoch {state['epoch']}, "
                           f"which the model's stages ({', '.join(s.name for s in self.stages)}) do not match: "
                           f"it was written by another model")
        self._enter_stage(index)
        for name, optimizer in self.optimizers.items():
            if name not in state["optimizers"]:
                raise DgmError(f"the checkpoint in {self.run_dir} has no optimiser for phase {name!r}: "
                               f"it was written by another model")
            optimizer.load_state_dict(ckpt.unflatten_optimizer(name, tensors, state["optimizers"][name]))
            for param, param_state in optimizer.state.items():  # saved contiguous; the fused step needs
                for key, value in param_state.items():       # each moment in its parameter's layout
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        param_state[key] = like(value, param)
        torch.set_rng_state(tensors["rng/torch"])
        if self.device.type == "cuda" and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        self.data_rng.set_state(tensors["rng/data"])
        if "rng/noise" in tensors:
            self.noise_rng.set_state(tensors["rng/noise"])
        else:  # written before the run owned its noise generator (it drew from the global RNG):
            # go on from a freshly seeded one; the curve then differs from an uninterrupted run in its noise alone
            self.noise_rng.manual_seed(self.config.seed + NOISE_SEED_OFFSET)
            note(f"the checkpoint in {self.run_dir} predates per-run noise generators: the training noise "
                 f"restarts from train.seed, so the curve differs from an uninterrupted run in its noise")
        pos = self.position
        pos.epoch, pos.batch, pos.step = state["epoch"], state["batch"], state["step"]
        pos.data_rng = tensors.get("rng/data_epoch_start")
        # a log interval cut by the interrupt goes on where it was, with the same float32 sums
        sums = state["log_sums"]
        self._log_counts = {k.split("/", 1)[1]: int(v) for k, v in sums.items() if k.startswith("_count/")}
        self._log_sums = {k: torch.tensor(v, dtype=torch.float32, device=self.device)
                          for k, v in sums.items() if not k.startswith("_count/")}
        # continue the same curve: keep the rows logged up to the checkpoint, drop any logged after it
        pos.history = [r for r in read_csv(self.run_dir / "metrics.csv") if r["step"] <= pos.step]
        if pos.history and self.world.writes:
            write_csv(self.run_dir / "metrics.csv", pos.history)


def note(message: str) -> None:
    """Tell the user something worth knowing that is not an error (one line on stderr, between
    progress bars)."""
    from tqdm.auto import tqdm

    tqdm.write(f"dgm: note: {message}", file=sys.stderr)


def append_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Append the last of ``rows`` to the CSV at ``path``; rewrite it whole when the row brings a
    new column (columns may appear over time, e.g. metrics logged only at the end of an epoch)."""
    if path.exists() and len(rows) > 1:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if set(rows[-1]) <= set(header):
            with path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header, restval="").writerow(rows[-1])
            return
    write_csv(path, rows)


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Write ``rows`` (the header covers the columns of every row)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics CSV, as written (integers such as the step stay integers, so a resumed
    run rewrites its earlier rows unchanged)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)

