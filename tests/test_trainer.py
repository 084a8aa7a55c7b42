"""The one trainer: a two-phase model through the unchanged loop, resume, NaN stop, checkpoints."""
from __future__ import annotations

import os
import sys
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
        fake = self.draw(len(batch.x), progress.generator)  # differentiable in mu (sample() is not: it runs without autograd)
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
    # the cycle is critic, critic, generator, running on across epochs (8 batches per epoch)
    phases = [c[0] for c in model.calls]
    assert phases == (["critic", "critic", "generator"] * 107)[:320]
    # each phase moves only its own parameters: between a critic call and the next call mu is fixed,
    # between a generator call and the next call w is fixed
    for (phase, mu, w), (_, mu_next, w_next) in zip(model.calls, model.calls[1:]):
        if phase == "critic":
            assert mu_next == mu
        else:
            assert w_next == w
    # and the game reaches its equilibrium
    assert abs(model.mu.item() - 1.5) < 0.1


def test_an_epoch_shorter_than_a_round_still_reaches_every_phase():
    """Two batches an epoch and a round of five critic steps and a generator step: the round runs on
    across epochs, so the generator trains (it restarted each epoch before, and never did)."""
    data = shifted_vectors(n=128)
    model = MeanGame(MeanGameConfig(critic_steps=5), data.spec)
    Trainer(model, data, TrainConfig(epochs=6, batch_size=64, progress=False, device="cpu")).fit()
    assert [c[0] for c in model.calls] == (["critic"] * 5 + ["generator"]) * 2


def test_phase_epochs_switch_stages():
    data = shifted_vectors()
    model = MeanGame(MeanGameConfig(), data.spec)
    model.phases = lambda: [Phase("critic", [model.w], epochs=(0, 0)), Phase("generator", [model.mu], epochs=(1, 1))]
    Trainer(model, data, TrainConfig(epochs=2, batch_size=64, progress=False, device="cpu")).fit()
    phases = [c[0] for c in model.calls]
    assert phases == ["critic"] * 8 + ["generator"] * 8


def vae_trainer(run_dir, data=None, epochs=3, network="mlp", **train):
    from dgm.models import create

    data = data if data is not None else image_dataset(n=200, representation="binary-dynamic")
    torch.manual_seed(0)
    model = create("vae", data.spec, latent_dim=4, hidden=(32,), likelihood="bernoulli", network=network, width=8)
    config = TrainConfig(**{"epochs": epochs, "batch_size": 32, "progress": False, "log_every": 2, "ema": 0.9,
                            "device": "cpu", "sample_every": 0, **train})
    return Trainer(model, data, config, run_dir=run_dir)


# conv: its weights train in channels_last, read back contiguous from the checkpoint (the optimiser's
# moments must be put back in their parameters' layout for the fused step)
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_interrupted_run_resumes_on_the_same_loss_curve(tmp_path, network):
    full = vae_trainer(tmp_path / "full", network=network)
    full.fit()
    if network == "conv":
        kernels = [w for w in full.model.parameters() if w.dim() == 4]
        assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels)
        assert not all(w.is_contiguous() for w in kernels)

    cut = vae_trainer(tmp_path / "cut", network=network)
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

    resumed = vae_trainer(tmp_path / "cut", network=network)  # a fresh process would build everything anew
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


def test_channels_last_trains_the_same_run_as_contiguous(tmp_path):
    """train.memory_format changes the layout, not the arithmetic: the conv VAE's curve and weights
    agree to float tolerance in both layouts (auto is channels_last for it, contiguous for the MLP)."""
    runs = {f: vae_trainer(tmp_path / f, network="conv", epochs=1, memory_format=f) for f in ("contiguous", "channels_last")}
    for t in runs.values():
        t.fit()
    a, b = (read_csv(tmp_path / f / "metrics.csv") for f in runs)
    assert len(a) == len(b) > 1
    for ra, rb in zip(a, b):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), (key, ra["step"])
    weights = {f: t.model.state_dict() for f, t in runs.items()}
    for k in weights["contiguous"]:
        torch.testing.assert_close(weights["contiguous"][k], weights["channels_last"][k], rtol=1e-4, atol=1e-5)
    kernels = {f: [w for w in t.model.parameters() if w.dim() == 4] for f, t in runs.items()}
    assert all(w.is_contiguous() for w in kernels["contiguous"])
    assert not all(w.is_contiguous() for w in kernels["channels_last"])
    assert vae_trainer(tmp_path / "mlp", network="mlp").model.memory_format() == torch.contiguous_format


NOISY_MODELS = {  # a model per source of training noise: the run's generator must feed them all
    "vae": (lambda: image_dataset(n=96, representation="binary-dynamic"), dict(latent_dim=4, hidden=(16,))),
    "vae-iwae": (lambda: image_dataset(n=96, representation="binary-dynamic"), dict(latent_dim=4, hidden=(16,), iwae_k=3)),
    "acgan": (lambda: image_dataset(n=96, representation="signed", labels=True), dict(hidden=(16,))),
    "ali": (lambda: vector_dataset(n=96), dict(hidden=(16,), gradient_penalty=1.0)),
    "infogan": (lambda: vector_dataset(n=96), dict(hidden=(16,))),
    "ddpm": (lambda: image_dataset(n=96, representation="signed", labels=True),
             dict(timesteps=10, channel_mults=(1, 2), width=8, conditional=True)),
}


def noisy_run(name: str, run_dir, disturb: bool) -> list[dict[str, float]]:
    from dgm.models import create

    make_data, settings = NOISY_MODELS[name]
    data = make_data()
    torch.manual_seed(0)  # the initial weights
    model = create(name.split("-")[0], data.spec, **settings)
    if disturb:  # whatever else draws from torch's global RNG between steps leaves training alone
        original = model.loss

        def loss(*args, **kwargs):
            torch.rand(1000)
            out = original(*args, **kwargs)
            torch.manual_seed(123 + len(out.metrics))
            return out

        model.loss = loss
    config = TrainConfig(epochs=2, batch_size=32, progress=False, log_every=1, device="cpu", sample_every=0,
                         ema=0, seed=7)
    Trainer(model, data, config, run_dir=run_dir).fit()
    return read_csv(run_dir / "metrics.csv")


@pytest.mark.parametrize("name", list(NOISY_MODELS))
def test_training_noise_comes_from_the_run_not_the_global_rng(tmp_path, name):
    first = noisy_run(name, tmp_path / "a", disturb=False)
    assert noisy_run(name, tmp_path / "b", disturb=False) == first  # the same seed, the same curve
    assert noisy_run(name, tmp_path / "c", disturb=True) == first


def test_a_checkpoint_without_the_noise_generator_still_resumes(tmp_path, capsys):
    trainer = vae_trainer(tmp_path, epochs=1)
    trainer.fit()
    tensors = ckpt.load_tensors(tmp_path / ckpt.TRAINER_TENSORS)
    assert "rng/noise" in tensors
    del tensors["rng/noise"]  # as written before the run owned its noise generator
    ckpt.save_tensors(tensors, tmp_path / ckpt.TRAINER_TENSORS)
    resumed = vae_trainer(tmp_path, epochs=2)
    resumed.fit(resume=True)
    assert "predates per-run noise generators" in capsys.readouterr().err
    assert resumed.position.epoch == 2 and [r["step"] for r in read_csv(tmp_path / "metrics.csv")][-1] == 12


@pytest.mark.parametrize("caught_by", ["log row", "checkpoint", "error"])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, caught_by):
    """The loss goes NaN at step 7 (epoch 2; checkpoint after step 6). Nothing is read per step, so
    the NaN is found at the next log row (step 8), before a checkpoint due right after it (step 7),
    or when the spoiled weights make the next step fail: each time the run stops with the last good
    checkpoint untouched."""
    log_every = 2 if caught_by == "log row" else 100
    trainer = vae_trainer(tmp_path, epochs=3, log_every=log_every, checkpoint_minutes=1.0)
    # the clock jumps by an hour once step 7 ran: a time-interval checkpoint is then due
    trainer.clock = lambda: 3600.0 * (caught_by == "checkpoint" and trainer.position.step >= 7)
    original_loss = trainer.model.loss
    calls = {"n": 0}

    def nan_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8 and caught_by == "error":  # e.g. a distribution refusing NaN parameters
            raise ValueError("invalid parameters")
        out = original_loss(*args, **kwargs)
        if calls["n"] == 7:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.loss = nan_in_second_epoch
    last = {"log row": 8, "checkpoint": 7, "error": 7}[caught_by]
    with pytest.raises(TrainingDiverged, match=rf"NaN between step 6 and step {last} .*"
                                               r"last good checkpoint \(epoch 1, step 6\)") as caught:
        trainer.fit()
    if caught_by == "error":
        assert isinstance(caught.value.__context__, ValueError)
    state = ckpt.load_json(tmp_path / ckpt.TRAINER_STATE)
    assert state["epoch"] == 1 and state["step"] == 6
    weights = ckpt.load_tensors(tmp_path / ckpt.WEIGHTS)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not any(torch.isfinite(p).all() for p in trainer.model.parameters())  # spoiled, never saved
    assert all(r["step"] <= 6 for r in read_csv(tmp_path / "metrics.csv"))  # no row from the NaN interval


def test_the_loop_reads_nothing_back_from_the_device_per_step(monkeypatch):
    """No .item(), float(t), bool(t), .tolist() in the trainer per step (each waits for the GPU): the
    reads are per log row and per epoch, the same for 6 or 24 steps an epoch."""
    reads = []
    for method in ("item", "tolist", "__float__", "__bool__", "__int__", "__index__"):
        def spy(self, *args, _original=getattr(torch.Tensor, method), _method=method, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith(os.path.join("train", "trainer.py")):
                reads.append((_method, sys._getframe(1).f_code.co_name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    counts = {}
    for n in (200, 800):  # 6 and 24 steps an epoch
        reads.clear()
        trainer = vae_trainer(None, data=image_dataset(n=n, representation="binary-dynamic"), epochs=2,
                              log_every=1000)
        trainer.fit()
        counts[n] = sorted(reads)
    assert counts[200] == counts[800] and len(counts[200]) <= 10, counts


def test_metrics_log_the_learning_rate_each_phase_used():
    """``lr`` is the rate of the phase's last step in the interval (warm-up included); with several
    phases, one ``PHASE/lr`` column each, from the phase's own rate."""
    trainer = vae_trainer(None, epochs=1, warmup_steps=4)  # log_every=2; step s used lr * min(1, s / 4)
    rows = trainer.fit()
    assert [(r["step"], r["lr"]) for r in rows] == [(2, 0.5e-3), (4, 1e-3), (6, 1e-3)]

    data = shifted_vectors()
    model = MeanGame(MeanGameConfig(critic_steps=2), data.spec)
    model.phases = lambda: [Phase("critic", [model.w], steps=2, lr=0.05), Phase("generator", [model.mu], lr=0.02)]
    rows = Trainer(model, data, TrainConfig(epochs=1, batch_size=64, log_every=3, progress=False,
                                            device="cpu")).fit()
    # 8 steps: rows at 3 and 6 (both players stepped), and at the epoch's end (7, 8: critic steps only)
    assert [{k: v for k, v in r.items() if k.endswith("lr")} for r in rows] == [
        {"critic/lr": 0.05, "generator/lr": 0.02}, {"critic/lr": 0.05, "generator/lr": 0.02}, {"critic/lr": 0.05}]


def test_train_lr_and_betas_that_no_phase_would_use_are_refused():
    from dgm.models import create

    data = vector_dataset(n=256)
    gan = create("gan", data.spec, hidden=(8,), latent_dim=2)
    for setting, message in [({"lr": 2e-4}, r"sets the lr of each of its phases \(critic, generator\), so "
                                             r"train.lr would not be used: use --set model.lr_critic=\.\.\. / "
                                             r"model.lr_generator=\.\.\. instead"),
                             ({"betas": (0.5, 0.9)}, r"train.betas would not be used: use --set model.betas=")]:
        with pytest.raises(DgmError, match=message):
            Trainer(gan, data, TrainConfig(device="cpu", progress=False, **setting))
    Trainer(gan, data, TrainConfig(device="cpu", progress=False))  # the defaults are not "set"
    # a model whose phases take the trainer's betas: train.betas is used, so it may be set
    game = MeanGame(MeanGameConfig(), shifted_vectors().spec)
    Trainer(game, shifted_vectors(), TrainConfig(device="cpu", betas=(0.5, 0.9)))
    with pytest.raises(DgmError, match="drop train.lr"):  # its config names no rate to use instead
        Trainer(game, shifted_vectors(), TrainConfig(device="cpu", lr=0.1))


def test_run_train_leaves_the_given_config_as_it_was(tmp_path, monkeypatch):
    """run.train resolves the model's defaults, its EMA and the tiny caps into config.json, not into
    the caller's RunConfig."""
    import copy

    import dgm
    from dgm.run import RunConfig, read_config

    monkeypatch.setenv("DGM_TINY", "1")
    config = RunConfig("ddpm", {"timesteps": 10, "width": 8, "channel_mults": (1,)},
                       dgm.DataConfig("digits"), TrainConfig(epochs=1, progress=False, device="cpu"))
    given = copy.deepcopy(config)
    _, run_dir = dgm.train(config, tmp_path / "run")
    assert config == given
    written, _ = read_config(run_dir)
    assert written.train.ema == 0.999 and written.train.max_steps_per_epoch == 2
    assert written.data.max_examples == 256 and written.model_config["timesteps"] == 10
    assert set(written.model_config) > set(config.model_config)  # the model's defaults, resolved


def record_gradients(trainer):
    """Per optimiser step: the raw gradients that backward left (before any clipping) and the ones the
    optimiser steps with, read by hooks (the trainer is not touched)."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    raw, stepped = {}, []

    def keep_raw(p):
        raw[p] = p.grad.detach().clone()

    def at_step(optimizer, args, kwargs):
        live = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        stepped.append([(raw.pop(p), p.grad.detach().clone()) for p in live])

    for p in params:
        p.register_post_accumulate_grad_hook(keep_raw)
    for optimizer in trainer.optimizers.values():
        optimizer.register_step_pre_hook(at_step)
    return stepped


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_gradient_clipping_scales_the_global_norm_to_grad_clip(tmp_path, clip):
    trainer = vae_trainer(None, epochs=1, grad_clip=clip)
    steps = record_gradients(trainer)
    trainer.fit()
    assert len(steps) == trainer.total_steps
    for pairs in steps:
        raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(r) for r, _ in pairs]))
        clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in pairs]))
        # clip_grad_norm_ by hand: g * min(1, clip / (||g|| + 1e-6)) over all the phase's gradients
        scale = min(1.0, clip / (raw_norm.item() + 1e-6))
        if clip == 1e-3:
            assert raw_norm > 10 * clip  # the case under test: clipping must act
            assert clipped_norm.item() == pytest.approx(clip, rel=1e-4)
        else:
            assert scale == 1.0 and torch.equal(clipped_norm, raw_norm)
        for r, g in pairs:
            torch.testing.assert_close(g, r * scale, rtol=1e-5, atol=1e-12)


def test_ema_and_cosine_schedule(tmp_path):
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


def test_a_crash_while_saving_leaves_one_whole_checkpoint(tmp_path, monkeypatch):
    """The files of a checkpoint are replaced together: a crash before the swap keeps the old set, a
    crash during it is finished by the next resume; new weights never meet an old position."""
    trainer = vae_trainer(tmp_path, epochs=1)
    trainer.fit()
    names = [ckpt.WEIGHTS, ckpt.EMA_WEIGHTS, ckpt.TRAINER_TENSORS, ckpt.TRAINER_STATE]
    old = {name: (tmp_path / name).read_bytes() for name in names}
    trainer.position.step = 99
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    atomic_write = ckpt.atomic_write
    monkeypatch.setattr(ckpt, "atomic_write", crash)  # dies before the staged files are listed
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    assert {name: (tmp_path / name).read_bytes() for name in names} == old
    monkeypatch.setattr(ckpt, "atomic_write", atomic_write)
    monkeypatch.setattr(ckpt, "complete_pending", lambda run_dir: None)  # dies once they are listed
    trainer.save_checkpoint()
    assert {name: (tmp_path / name).read_bytes() for name in names} == old and (tmp_path / ckpt.PENDING).exists()
    monkeypatch.undo()
    resumed = vae_trainer(tmp_path, epochs=1)
    resumed.load_checkpoint()
    assert resumed.position.step == 99 and not (tmp_path / ckpt.PENDING).exists()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    trainer = vae_trainer(tmp_path, epochs=1)
    trainer.fit()
    (tmp_path / ckpt.WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(DgmError, match="corrupt"):
        ckpt.load_tensors(tmp_path / ckpt.WEIGHTS)
    other = MeanGame(MeanGameConfig(), DataSpec("v", (1,), "continuous", levels=None))
    with pytest.raises(DgmError, match="do not fit"):
        ckpt.load_state_dict_checked(other, trainer.model.state_dict(), tmp_path / ckpt.WEIGHTS)


def test_a_split_smaller_than_a_batch_trains_on_whole_split_batches(capsys):
    trainer = vae_trainer(None, data=image_dataset(n=10, representation="binary-dynamic"), epochs=2)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "10 examples, fewer than a batch of 32: training on batches of 10" in note
    assert trainer.config.batch_size == 10 and trainer.steps_per_epoch == 1
    sizes = []
    original_loss = trainer.model.loss
    trainer.model.loss = lambda batch, *a: sizes.append(len(batch.x)) or original_loss(batch, *a)
    trainer.fit()
    assert sizes == [10, 10]
    assert capsys.readouterr().err == ""  # said once, not per epoch
    empty = image_dataset(n=10, representation="binary-dynamic").subset(0)
    with pytest.raises(DgmError, match="empty"):
        vae_trainer(None, data=empty)


def test_checkpoints_on_a_time_interval_inside_epochs(tmp_path):
    """checkpoint_minutes: a checkpoint mid-epoch once that much time passed since the last one (and at
    every epoch end); 0 saves at epoch ends only. The clock is read, never waited on."""
    for minutes, expected in [(1.0, [(0, 3, 3), (1, 0, 6), (1, 3, 9), (2, 0, 12)]),
                              (0.0, [(1, 0, 6), (2, 0, 12)])]:
        trainer = vae_trainer(tmp_path / str(minutes), epochs=2, checkpoint_minutes=minutes)
        trainer.clock = lambda: 25.0 * trainer.position.step  # 25 s per step: 60 s pass every 3rd step
        saves = []
        save = trainer.save_checkpoint
        trainer.save_checkpoint = lambda: saves.append(
            (trainer.position.epoch, trainer.position.batch, trainer.position.step)) or save()
        trainer.fit()
        assert saves == expected, minutes


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


# --- runs through the CLI: resume, config.json and the checkpoint agree -----------------------------
RUN = ["--data", "digits", "--set", "data.max_examples=192", "--batch-size", "32", "--set", "model.hidden=32",
       "--set", "model.latent_dim=4", "--set", "train.log_every=2", "--set", "train.checkpoint_minutes=1", "--quiet"]
RUN_FILES = ["config.json", "metrics.csv", "report.html", ckpt.TRAINER_STATE, ckpt.WEIGHTS, ckpt.TRAINER_TENSORS]


def cli(*argv):
    from dgm.cli import main

    return main([str(a) for a in argv])


def assert_same_weights(a, b):
    wa, wb = ckpt.load_tensors(a / ckpt.WEIGHTS), ckpt.load_tensors(b / ckpt.WEIGHTS)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_resume_from_a_mid_epoch_checkpoint_after_a_hard_kill_continues_the_same_curve(tmp_path, monkeypatch):
    """Run A trains 3 epochs (6 steps each). Run B writes a time-interval checkpoint at step 7 (epoch 2,
    batch 1), logs rows at steps 8 and 10, and dies at step 11 with an error that saves nothing (as a
    killed process); resumed, it must give A's metrics.csv exactly and A's weights bit for bit."""
    from dgm.models.vae import VAE
    from dgm.train.trainer import Trainer

    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", "vae", *RUN, "--epochs", 3, "--out", a) == 0

    calls = {"n": 0}
    original_loss = VAE.loss

    def loss_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("killed")
        return original_loss(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "loss", loss_then_die)
    # the clock jumps by an hour once the 7th step has run: exactly one mid-epoch checkpoint, after step 7
    monkeypatch.setattr(Trainer, "clock", staticmethod(lambda: 3600.0 * (calls["n"] >= 7)))
    with pytest.raises(RuntimeError, match="killed"):
        cli("train", "vae", *RUN, "--epochs", 3, "--out", b)
    state = ckpt.load_json(b / ckpt.TRAINER_STATE)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 7)
    assert [r["step"] for r in read_csv(b / "metrics.csv")][-2:] == [8, 10]  # logged after the checkpoint

    monkeypatch.undo()
    resumed = {"n": 0}
    monkeypatch.setattr(VAE, "loss", lambda self, *a, **k: resumed.__setitem__("n", resumed["n"] + 1)
                        or original_loss(self, *a, **k))
    assert cli("train", "--resume", b, "--quiet") == 0
    assert resumed["n"] == 18 - 7  # it went on from step 7, not from the epoch's start
    assert (b / "metrics.csv").read_text() == (a / "metrics.csv").read_text()
    assert (b / "config.json").read_text() == (a / "config.json").read_text()
    assert_same_weights(a, b)


def test_resume_to_epochs_already_trained_says_so_and_leaves_the_run_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "vae", *RUN, "--epochs", 2, "--out", run) == 0
    before = {name: (run / name).read_bytes() for name in RUN_FILES}
    capsys.readouterr()
    for argv in (["--epochs", 2], ["--epochs", 1], []):
        assert cli("train", "--resume", run, *argv) == 2
        err = capsys.readouterr().err
        assert err == f"dgm: error: {run} has already trained 2 epochs; pass --epochs above 2 to train further\n"
    assert cli("train", "--resume", run, "--epochs", 3, "--set", "train.lr=0.1") == 2
    assert "drop --set (only --epochs and --quiet go with --resume)" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in RUN_FILES} == before


def test_a_resumed_run_keeps_its_rows_and_config_json_follows_the_checkpoint(tmp_path):
    """2 epochs, then --resume --epochs 3: the first rows are kept as they were, config.json states
    the new target, and the whole is the same run as 3 epochs straight."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli("train", "vae", *RUN, "--epochs", 2, "--out", run) == 0
    first = read_csv(run / "metrics.csv")
    assert cli("train", "--resume", run, "--epochs", 3, "--quiet") == 0
    rows = read_csv(run / "metrics.csv")
    assert rows[:len(first)] == first and rows[-1]["step"] == 18
    config = ckpt.load_json(run / "config.json")
    assert config["train"]["epochs"] == 3 == ckpt.load_json(run / ckpt.TRAINER_STATE)["epoch"]
    assert "Training curves" in (run / "report.html").read_text()
    assert cli("train", "vae", *RUN, "--epochs", 3, "--out", straight) == 0
    assert (run / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    assert_same_weights(run, straight)


def test_channels_last_for_a_3d_conv_net_is_refused_with_one_line():
    from dgm.data import load
    from dgm.models import create

    data = load("voxels", "test", representation="binary-static").subset(8)
    model = create("voxel-vae", data.spec)
    with pytest.raises(DgmError, match="memory_format=auto"):
        Trainer(model, data, TrainConfig(epochs=1, memory_format="channels_last", progress=False, device="cpu"))
