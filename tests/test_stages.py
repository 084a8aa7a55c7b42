"""Training in stages: a toy two-stage model (fit a mean, then a scale given the frozen mean), each
stage with its own optimiser, lr and cosine schedule over its own steps, resumed mid-stage."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import vector_dataset
from dgm.data.core import Batch, Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, Stage
from dgm.train import checkpoint as ckpt
from dgm.train.trainer import TrainConfig, Trainer, TrainingInterrupted, read_csv

STEPS = 4  # steps per epoch: 256 examples in batches of 64
MEAN_EPOCHS, SCALE_EPOCHS = 2, 3


@dataclass
class MeanThenScaleConfig:
    staged: bool = True  # False: one stage, one phase over both parameters


class MeanThenScale(GenerativeModel):
    """x ~ N(mu, sigma^2). Stage "mean" fits mu by least squares; stage "scale" fits log sigma by
    maximum likelihood given mu, which it must leave as stage "mean" left it."""

    name = "test-mean-then-scale"
    Config = MeanThenScaleConfig

    def __init__(self, config: MeanThenScaleConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.mu = nn.Parameter(torch.zeros(spec.shape))
        self.log_sigma = nn.Parameter(torch.zeros(spec.shape))
        self.calls: list[tuple[str, Progress, float, bool]] = []  # (phase, progress, mu, mu trainable)

    def stages(self) -> list[Stage]:
        if not self.config.staged:
            return super().stages()
        return [Stage("mean", [Phase("mean", [self.mu])], epochs=MEAN_EPOCHS, lr=0.4, schedule="cosine",
                      warmup_steps=2),
                Stage("scale", [Phase("scale", [self.log_sigma])], epochs=SCALE_EPOCHS, lr=0.05,
                      schedule="cosine")]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        self.calls.append((phase, progress, self.mu.item(), self.mu.requires_grad))
        mean = (batch.x - self.mu).pow(2).mean()
        nll = (self.log_sigma + 0.5 * ((batch.x - self.mu) / self.log_sigma.exp()).pow(2)).mean()
        return Loss({"mean": mean, "scale": nll, "model": mean + nll}[phase])

    def sample(self, n, condition=None, *, generator=None):
        return self.mu + self.log_sigma.exp() * torch.randn(n, *self.spec.shape, generator=generator)


def data() -> Dataset:
    x = vector_dataset(n=256, dim=1)
    return Dataset(x.raw * 0.5 + 1.5, None, x.spec, train=True)


def trainer(run_dir=None, *, staged: bool = True, **train) -> Trainer:
    torch.manual_seed(0)
    d = data()
    model = MeanThenScale(MeanThenScaleConfig(staged=staged), d.spec)
    config = TrainConfig(**{"epochs": MEAN_EPOCHS + SCALE_EPOCHS, "batch_size": 64, "log_every": 1,
                            "progress": False, "device": "cpu", "sample_every": 0, **train})
    return Trainer(model, d, config, run_dir=run_dir)


def cosine(base: float, step: int, steps: int, warmup: int = 0) -> float:
    """The rate of the ``step``-th step (0-based) of a stage of ``steps`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


def test_stages_run_in_turn_each_on_its_own_schedule_leaving_the_others_frozen():
    t = trainer()
    rows = t.fit()
    model = t.model
    n1, n2 = MEAN_EPOCHS * STEPS, SCALE_EPOCHS * STEPS
    assert [c[0] for c in model.calls] == ["mean"] * n1 + ["scale"] * n2
    # Progress names the stage and counts its own steps
    assert [(p.stage, p.stage_step, p.stage_steps) for _, p, _, _ in model.calls] == \
        [("mean", i, n1) for i in range(n1)] + [("scale", j, n2) for j in range(n2)]
    assert [p.step for _, p, _, _ in model.calls] == list(range(n1 + n2))
    # one row per step (log_every=1): a stage's rows carry its phase's columns only
    assert [r["step"] for r in rows] == list(range(1, n1 + n2 + 1))
    assert all(set(r) == {"step", "epoch", "mean/loss", "mean/lr"} for r in rows[:n1])
    assert all(set(r) == {"step", "epoch", "scale/loss", "scale/lr"} for r in rows[n1:])
    # the lr logged follows each stage's cosine from the stage's own start, with its own warm-up
    for i, r in enumerate(rows[:n1]):
        assert r["mean/lr"] == pytest.approx(cosine(0.4, i, n1, warmup=2), abs=1e-12)
    for j, r in enumerate(rows[n1:]):
        assert r["scale/lr"] == pytest.approx(cosine(0.05, j, n2), abs=1e-12)
    assert rows[n1]["scale/lr"] == 0.05  # a fresh start, not the end of the first stage's cosine
    # stage 2 leaves mu as stage 1 left it, and does not even compute its gradient
    mu_after_stage_1 = model.calls[n1][2]
    assert all(mu == mu_after_stage_1 and not trainable for _, _, mu, trainable in model.calls[n1:])
    assert all(trainable for _, _, _, trainable in model.calls[:n1])
    assert model.mu.item() == mu_after_stage_1 and model.mu.requires_grad  # fit gives the flags back
    assert abs(mu_after_stage_1 - 1.5) < 0.3 and model.log_sigma.item() < 0  # sigma moves towards 0.5
    # the optimisers are the last stage's, fresh for it: one per phase
    assert list(t.optimizers) == ["scale"]


@pytest.mark.parametrize("how, at_call", [
    ("stop", 11),  # Ctrl-C in stage 2, mid-epoch: saved at that step
    ("kill", 9),  # killed at stage 2's first step: the checkpoint at the stage boundary
    ("kill", 15),  # killed in stage 2's second epoch: its first epoch's checkpoint, rows after it dropped
])
def test_a_run_stopped_in_stage_2_resumes_in_stage_2_on_the_same_curve(tmp_path, how, at_call):
    full = trainer(tmp_path / "full")
    full.fit()

    cut = trainer(tmp_path / "cut")
    original = cut.model.loss
    calls = {"n": 0}

    def loss_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            if how == "kill":
                raise RuntimeError("killed")
            cut.request_stop()
        return original(*args, **kwargs)

    cut.model.loss = loss_then_stop
    with pytest.raises(TrainingInterrupted if how == "stop" else RuntimeError):
        cut.fit()
    state = ckpt.load_json(tmp_path / "cut" / ckpt.TRAINER_STATE)
    assert state["stage"] == ("scale" if at_call > MEAN_EPOCHS * STEPS else "mean")
    assert list(state["optimizers"]) == [state["stage"]]

    resumed = trainer(tmp_path / "cut")
    resumed.fit(resume=True)
    assert resumed.model.calls[0][1].stage == "scale" and resumed.model.calls[0][1].step == state["step"]
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()
    for name in (ckpt.WEIGHTS, ckpt.TRAINER_TENSORS):
        a, b = ckpt.load_tensors(tmp_path / "full" / name), ckpt.load_tensors(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_train_epochs_against_the_stages_budgets():
    assert trainer().config.epochs == 5  # given as the sum
    assert trainer(epochs=10).config.epochs == 5  # the default takes the sum
    with pytest.raises(DgmError, match=r"trains mean \(2 epochs\), then scale \(3 epochs\): 5 epochs in all; "
                                       r"set train.epochs=5 or drop it"):
        trainer(epochs=7)
    # a last stage without a budget trains for what the others leave of train.epochs
    d = data()
    model = MeanThenScale(MeanThenScaleConfig(), d.spec)
    model.stages = lambda: [Stage("mean", [Phase("mean", [model.mu])], epochs=2),
                            Stage("scale", [Phase("scale", [model.log_sigma])])]
    t = Trainer(model, d, TrainConfig(device="cpu", epochs=6, batch_size=64, progress=False))
    assert t.stage_epochs() == [(0, 2), (2, 4)] and [t.stage_at(e) for e in range(7)] == [0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(DgmError, match=r"trains mean \(2 epochs\) before stage 'scale': "
                                       r"set train.epochs above 2 to leave epochs for it"):
        Trainer(model, d, TrainConfig(device="cpu", epochs=2))


def test_stages_the_trainer_cannot_run_are_refused():
    d = data()
    model = MeanThenScale(MeanThenScaleConfig(), d.spec)
    config = TrainConfig(device="cpu", progress=False)
    for stages, message in [
        ([Stage("a", [Phase("x", [model.mu])], epochs=1), Stage("b", [Phase("x", [model.log_sigma])], epochs=1)],
         "give each phase its own name"),
        ([Stage("a", [Phase("x", [model.mu])]), Stage("b", [Phase("y", [model.log_sigma])], epochs=1)],
         "only the last stage may train for the rest of train.epochs"),
        ([Stage("a", [])], "declares a stage without phases"),
        ([Stage("a", [Phase("x", [model.mu])], epochs=0)], "a budget below 1 epoch"),
    ]:
        model.stages = lambda stages=stages: stages
        with pytest.raises(DgmError, match=message):
            Trainer(model, d, config)
    # train.schedule set by hand while every stage sets its own would be ignored
    model.stages = MeanThenScale.stages.__get__(model)
    with pytest.raises(DgmError, match=r"sets the schedule of each of its stages \(mean, scale\), so "
                                       r"train.schedule would not be used: drop train.schedule"):
        Trainer(model, d, TrainConfig(device="cpu", epochs=5, schedule="cosine"))
    Trainer(model, d, TrainConfig(device="cpu", epochs=5, warmup_steps=3))  # the second stage takes it


def test_a_one_stage_checkpoint_written_before_stages_still_resumes(tmp_path):
    """trainer.json of a one-stage run before stages existed has no "stage": it resumes as before."""
    straight = trainer(tmp_path / "straight", staged=False, epochs=3)
    straight.fit()
    run = tmp_path / "run"
    trainer(run, staged=False, epochs=2).fit()
    state = ckpt.load_json(run / ckpt.TRAINER_STATE)
    assert state.pop("stage") == "model"
    ckpt.save_json(state, run / ckpt.TRAINER_STATE)
    trainer(run, staged=False, epochs=3).fit(resume=True)
    assert (run / "metrics.csv").read_text() == (tmp_path / "straight" / "metrics.csv").read_text()
    assert set(read_csv(run / "metrics.csv")[0]) == {"step", "epoch", "loss", "lr"}  # one phase: plain names
    for key, value in ckpt.load_tensors(tmp_path / "straight" / ckpt.WEIGHTS).items():
        assert torch.equal(value, ckpt.load_tensors(run / ckpt.WEIGHTS)[key])
