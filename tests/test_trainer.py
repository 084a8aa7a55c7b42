"""The one trainer: a two-phase model through the unchanged loop, resume, NaN stop, checkpoints."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import image_dataset, vector_dataset
from dgm.data.core import Batch, Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, register
from dgm.train import checkpoint as ckpt
from dgm.train.trainer import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, read_csv


@dataclass
class MeanGameConfig:
    critic_steps: int = 2  # critic steps per generator step


@register
class MeanGame(GenerativeModel):
    """A two-player game with the shape of a GAN: the generator emits x = mu + noise; the critic
    w maximises w (E[x_data] - E[x_gen]) - w^2 / 2 (so w* = the mean gap) and the generator minimises
    the critic's value. The equilibrium is mu = E[x_data]."""

    name = "test-mean-game"
    Config = MeanGameConfig

    def __init__(self, config: MeanGameConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.mu = nn.Parameter(torch.zeros(spec.shape))
        self.w = nn.Parameter(torch.zeros(spec.shape))
        self.calls: list[tuple[str, float, float]] = []  # (phase, mu, w) at each loss call

    def phases(self) -> list[Phase]:
        return [Phase("critic", [self.w], steps=self.config.critic_steps, lr=0.05),
                Phase("generator", [self.mu], lr=0.05)]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        self.calls.append((phase, self.mu.item(), self.w.item()))
        fake = self.draw(len(batch.x))  # differentiable in mu (sample() is not: it runs without autograd)
        gap = batch.x.mean(0) - fake.mean(0)
        value = (self.w * gap).sum() - 0.5 * self.w.pow(2).sum()
        return Loss(-value if phase == "critic" else value, {"gap": gap.abs().sum()})

    def draw(self, n, generator=None):
        return self.mu + 0.1 * torch.randn(n, *self.spec.shape, generator=generator, device=self.device)

    def sample(self, n, condition=None, *, generator=None):
        return self.draw(n, generator)


def shifted_vectors(n: int = 512, shift: float = 1.5) -> Dataset:
    data = vector_dataset(n=n, dim=1)
    return Dataset(data.raw * 0.1 + shift, None, data.spec, train=True)


def test_two_phase_model_trains_through_the_unchanged_trainer():
    data = shifted_vectors()
    model = MeanGame(MeanGameConfig(critic_steps=2), data.spec)
    Trainer(model, data, TrainConfig(epochs=40, batch_size=64, progress=False, device="cpu")).fit()
    # the cycle is critic, critic, generator, restarting each epoch (8 batches per epoch)
    phases = [c[0] for c in model.calls]
    epoch = ["critic", "critic", "generator"] * 2 + ["critic", "critic"]
    assert phases == epoch * 40
    # each phase moves only its own parameters: between a critic call and the next call mu is fixed,
    # between a generator call and the next call w is fixed
    for (phase, mu, w), (_, mu_next, w_next) in zip(model.calls, model.calls[1:]):
        if phase == "critic":
            assert mu_next == mu
        else:
            assert w_next == w
    # and the game reaches its equilibrium
    assert abs(model.mu.item() - 1.5) < 0.1


def test_phase_epochs_switch_stages():
    data = shifted_vectors()
    model = MeanGame(MeanGameConfig(), data.spec)
    model.phases = lambda: [Phase("critic", [model.w], epochs=(0, 0)), Phase("generator", [model.mu], epochs=(1, 1))]
    Trainer(model, data, TrainConfig(epochs=2, batch_size=64, progress=False, device="cpu")).fit()
    phases = [c[0] for c in model.calls]
    assert phases == ["critic"] * 8 + ["generator"] * 8


def vae_trainer(run_dir, data=None, epochs=3, **train):
    from dgm.models import create

    data = data or image_dataset(n=200, representation="binary-dynamic")
    torch.manual_seed(0)
    model = create("vae", data.spec, latent_dim=4, hidden=(32,), likelihood="bernoulli")
    config = TrainConfig(epochs=epochs, batch_size=32, progress=False, log_every=2, ema=0.9,
                         device="cpu", sample_every=0, **train)
    return Trainer(model, data, config, run_dir=run_dir)


def test_interrupted_run_resumes_on_the_same_loss_curve(tmp_path):
    full = vae_trainer(tmp_path / "full")
    full.fit()

    cut = vae_trainer(tmp_path / "cut")
    original_loss = cut.model.loss
    calls = {"n": 0}

    def loss_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # mid-epoch (6 steps per epoch), between two log rows
            cut.request_stop()
        return original_loss(*args, **kwargs)

    cut.model.loss = loss_then_stop
    with pytest.raises(TrainingInterrupted, match="resume"):
        cut.fit()
    assert cut.position.step == 9

    resumed = vae_trainer(tmp_path / "cut")  # a fresh process would build everything anew
    resumed.fit(resume=True)
    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(tmp_path / "cut" / "metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra["step"])
    wa = ckpt.load_tensors(tmp_path / "full" / ckpt.EMA_WEIGHTS)
    wb = ckpt.load_tensors(tmp_path / "cut" / ckpt.EMA_WEIGHTS)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = vae_trainer(tmp_path, epochs=3)
    original_loss = trainer.model.loss
    calls = {"n": 0}

    def nan_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        out = original_loss(*args, **kwargs)
        if calls["n"] == 8:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.loss = nan_in_second_epoch
    with pytest.raises(TrainingDiverged, match=r"nan at step 7 .*last good checkpoint \(epoch 1\)"):
        trainer.fit()
    state = ckpt.load_json(tmp_path / ckpt.TRAINER_STATE)
    assert state["epoch"] == 1 and state["step"] == 6
    weights = ckpt.load_tensors(tmp_path / ckpt.WEIGHTS)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_gradient_clipping_ema_and_cosine_schedule(tmp_path):
    trainer = vae_trainer(tmp_path, epochs=2, grad_clip=1e-3, schedule="cosine", warmup_steps=2)
    assert trainer.lr_factor(0) == pytest.approx(0.5)
    assert trainer.lr_factor(trainer.total_steps) == pytest.approx(0.0, abs=1e-9)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    # tiny clipped gradients with Adam still move weights by ~lr per step: check EMA lags behind them
    key = next(k for k in after if after[k].is_floating_point() and after[k].numel() > 1)
    ema_gap = (trainer.ema.shadow[key] - before[key]).abs().mean()
    own_gap = (after[key] - before[key]).abs().mean()
    assert 0 < ema_gap < own_gap


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    trainer = vae_trainer(tmp_path, epochs=1)
    trainer.fit()
    (tmp_path / ckpt.WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(DgmError, match="corrupt"):
        ckpt.load_tensors(tmp_path / ckpt.WEIGHTS)
    other = MeanGame(MeanGameConfig(), DataSpec("v", (1,), "continuous", levels=None))
    with pytest.raises(DgmError, match="do not fit"):
        ckpt.load_state_dict_checked(other, trainer.model.state_dict(), tmp_path / ckpt.WEIGHTS)


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(DgmError, match="fewer than one batch"):
        vae_trainer(None, data=image_dataset(n=10, representation="binary-dynamic"))


def test_ema_warms_up_so_a_short_run_forgets_its_initial_weights():
    from dgm.train.ema import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.999)
    expected = 0.0
    for step in range(20):
        with torch.no_grad():
            model.weight.fill_(1.0 + 0.01 * step)
        ema.update(model, step)
        d = min(0.999, (1 + step) / (10 + step))  # the recurrence, by hand
        expected = d * expected + (1 - d) * (1.0 + 0.01 * step)
    assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0  # without the warm-up it would still be 0.999^20 = 98% the initial 0
    assert ema.decay_at(10 ** 6) == 0.999
