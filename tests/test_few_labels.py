"""The spine of learning from few labels: labelled examples in every batch, ``--labels`` and its
record, models fitted in one call, the classification error and the classify app."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dgm import data
from dgm.cli import main
from dgm.data.core import UNLABELLED, Batch, Dataset, DataSpec
from dgm.eval import evaluate
from dgm.eval.probes import error_rate
from dgm.models.base import MODELS, GenerativeModel, Loss, Progress, capability, fits_in_closed_form, register
from dgm.train.trainer import TrainConfig, Trainer


# --- labelled examples in every batch -------------------------------------------------------------
def test_every_shuffled_batch_carries_the_labelled_examples_in_turn():
    part = data.load("digits").with_labelled(30, seed=0, per_batch=8)
    assert part.subset(600).labelled_per_batch == 8  # travels with subsets and representations
    labelled = set(torch.nonzero(part.labelled).flatten().tolist())
    g = torch.Generator().manual_seed(0)
    extra = []
    for batch in part.batches(64, shuffle=True, drop_last=True, generator=g):
        assert len(batch.x) == 64 + 8
        assert batch.labelled[64:].all() and (batch.y[64:] != UNLABELLED).all()
        extra += batch.y[64:].tolist()
    # the appended examples run through permutations of the labelled subset: each once per round
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(part), generator=g)
    index = torch.nonzero(part.labelled).flatten()
    stream = torch.cat([index[torch.randperm(30, generator=g)] for _ in range(-(-len(extra) // 30))])
    assert extra == part.labels[stream[:len(extra)]].tolist()
    assert set(stream[:30].tolist()) == labelled
    del order


def test_labelled_batches_resume_on_the_same_examples():
    part = data.load("digits").with_labelled(20, seed=1, per_batch=4).with_representation("binary-dynamic")
    whole = list(part.batches(100, shuffle=True, generator=torch.Generator().manual_seed(3)))
    tail = list(part.batches(100, shuffle=True, generator=torch.Generator().manual_seed(3), start=5))
    for a, b in zip(whole[5:], tail):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_no_labelled_examples_are_added_to_evaluation_batches_or_with_per_batch_zero():
    part = data.load("digits").with_labelled(30, seed=0, per_batch=8)
    assert all(len(b.x) <= 64 for b in part.batches(64))  # not shuffled: the split as it is
    none = data.load("digits").with_labelled(30, seed=0)
    assert all(len(b.x) == 64 for b in none.batches(64, shuffle=True, drop_last=True,
                                                      generator=torch.Generator().manual_seed(0)))


def test_per_batch_is_capped_at_the_labelled_count():
    assert data.load("digits").with_labelled(12, seed=0, per_batch=100).labelled_per_batch == 12


# --- --labels on the command line ---------------------------------------------------------------------
def test_labels_flag_records_the_subset_and_says_when_it_does_not_divide(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--labels", "25", "--epochs", "1", "--out", str(out),
                 "--set", "train.max_steps_per_epoch=2", "--set", "model.hidden=16", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "25 labels do not divide among 10 classes: classes 0-4 keep 3 each, the others 2" in err
    record = json.loads((out / "labels.json").read_text())
    assert record["count"] == 25 and record["per_class"] == [3] * 5 + [2] * 5
    assert record["labelled_per_batch"] == 25  # the default: a batch's worth, at most the subset
    expected = torch.nonzero(data.load("digits").with_labelled(25, seed=0).labelled).flatten().tolist()
    assert record["indices"] == expected  # the same draw as data.labelled with data.seed
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["labelled"] == 25


@pytest.mark.parametrize("argv, says", [
    (["--data", "digits", "--labels", "5000"], "--labels 5000 (data.labelled) is more than the 1437 labelled examples"),
    (["--data", "moons", "--labels", "10"], "has no labels to keep: drop --labels"),
    (["--data", "digits", "--labels", "5"], "leaves 5 of the 10 classes of 'digits' without a labelled example"),
])
def test_bad_labels_get_one_line(argv, says, tmp_path, capsys):
    assert main(["train", "vae", *argv, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


# --- models fitted in one call ----------------------------------------------------------------------
@dataclass
class MeanConfig:
    pass


class MeanModel(GenerativeModel):
    """A Gaussian with unit variance whose mean is fitted in closed form (the sample mean)."""

    name = "test-closed-form"
    Config = MeanConfig

    def __init__(self, config: MeanConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.mean = nn.Parameter(torch.zeros(spec.shape))
        self.calls = 0

    @classmethod
    def default_representation(cls, config: MeanConfig, spec: DataSpec) -> str:
        return "continuous"

    def fit(self, data: Dataset, *, generator: torch.Generator, progress: bool = False) -> dict[str, float]:
        self.calls += 1
        x = data.present(torch.arange(len(data)), generator)
        with torch.no_grad():
            self.mean.copy_(x.mean(0))
        return {"train_log_likelihood": float(self.log_prob(x).mean().detach())}

    def log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * ((x - self.mean) ** 2).sum(-1) - 0.5 * x.shape[-1] * np.log(2 * np.pi)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        return Loss(-self.log_prob(batch.x).mean())

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + torch.randn(n, *self.spec.shape, generator=generator)


def test_a_model_fitted_in_one_call_is_fitted_once_logged_saved_and_not_refitted(tmp_path):
    moons = data.load("moons")
    model = MeanModel(MeanConfig(), moons.spec)
    assert fits_in_closed_form(model) and not fits_in_closed_form(MODELS["vae"])
    trainer = Trainer(model, moons, TrainConfig(epochs=5, progress=False, sample_every=0), run_dir=tmp_path)
    rows = trainer.fit()
    assert model.calls == 1 and trainer.config.epochs == 1
    torch.testing.assert_close(model.mean.detach(), moons.raw.mean(0))
    assert rows[-1]["train_log_likelihood"] == pytest.approx(float(model.log_prob(moons.raw).mean().detach()), rel=1e-5)
    assert (tmp_path / "weights.safetensors").exists()
    again = MeanModel(MeanConfig(), moons.spec)
    resumed = Trainer(again, moons, TrainConfig(epochs=5, progress=False, sample_every=0), run_dir=tmp_path)
    resumed.fit(resume=True)
    assert again.calls == 0 and torch.equal(again.mean, model.mean)  # loaded, not fitted again


# --- the classification error -----------------------------------------------------------------------
def test_error_rate_counts_mistakes_overall_and_per_class():
    error, per_class = error_rate(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2]), 4)
    assert error == pytest.approx(40.0)
    assert per_class[:3] == pytest.approx([0.0, 0.0, 200 / 3]) and np.isnan(per_class[3])


class Rule(GenerativeModel):
    """Classifies an example by a fixed rule of its pixels (no training): the ink total, mod 10."""

    name = "test-rule"
    Config = MeanConfig

    def __init__(self, config: MeanConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.w = nn.Parameter(torch.zeros(1))

    @staticmethod
    def rule(x: Tensor) -> Tensor:
        return (x.flatten(1).sum(-1) * 16).round().long() % 10

    @capability
    @torch.inference_mode()
    def classify(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(self.rule(x), 10).float()


def test_classification_error_metric_equals_the_count_of_wrong_predictions():
    test = data.load("digits", "test").with_representation("unit")
    [result] = evaluate(Rule(MeanConfig(), test.spec), test, ["classification_error"], progress=False)
    wrong = Rule.rule(test.tensors().x) != test.labels
    assert result.value == pytest.approx(100 * float(wrong.float().mean())) and result.unit == "%"
    for c in range(10):
        assert result.details["per_class"][c] == pytest.approx(100 * float(wrong[test.labels == c].float().mean()))


# --- the classify app -------------------------------------------------------------------------------
def test_classify_app_probes_an_encoder_on_the_run_labels_and_records_the_error(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--labels", "50", "--epochs", "40", "--out", str(out),
                 "--set", "model.latent_dim=8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["classify", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "logistic regression on E[z|x] of 50 labelled examples" in line
    [result] = [r for r in json.loads((out / "eval.json").read_text()) if r["metric"] == "classification_error"]
    assert 0 <= result["value"] < 50  # far better than chance (90%) with 50 labels on digits
    # the probe by hand on the same codes gives the same number
    from dgm import load
    from dgm.eval.probes import labelled_probe_error
    from dgm.run import load_data, read_config

    model, (config, _) = load(out), read_config(out)
    train = load_data(config, "train")
    train = train.known_labels()
    test = load_data(config, "test")
    torch.manual_seed(0)  # the app's --seed: the binarization of the training examples
    with torch.inference_mode():
        expected = labelled_probe_error(model.encode(train.tensors().x), train.labels,
                                        model.encode(test.tensors().x), test.labels)
    assert result["value"] == pytest.approx(expected, abs=1e-9)
    # another number of labels than the run's is refused; a classifier is not there to ask for
    assert main(["classify", str(out), "--labels", "20", "--quiet"]) == 2
    assert main(["classify", str(out), "--via", "classifier", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "drop --labels" in err[0] and "use --via probe" in err[1]


def test_classify_app_refuses_a_model_that_can_neither_classify_nor_encode(tmp_path, capsys):
    out = tmp_path / "gan"
    assert main(["train", "gan", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet",
                 "--set", "train.max_steps_per_epoch=1", "--set", "model.hidden=8"]) == 0
    capsys.readouterr()
    assert main(["classify", str(out)]) == 2
    assert "needs classify or conditional_elbo or conditional_iwae_bound or conditional_log_prob or encode" in capsys.readouterr().err


def test_one_command_compares_a_model_classifier_and_a_probe_on_the_same_labels(tmp_path, capsys):
    """M2's own q(y|x) and a BiGAN's encoder with a probe, each trained with the same 30 labels:
    `dgm classify` scores both, and `dgm compare` ranks them on the one classification_error."""
    for model, settings in (("m2", ["--set", "model.hidden=32", "--set", "model.latent_dim=4"]),
                            ("bigan", ["--set", "model.hidden=32"])):
        out = str(tmp_path / model)
        assert main(["train", model, "--data", "digits", "--labels", "30", "--epochs", "1", "--out", out, "--quiet",
                     "--set", "train.max_steps_per_epoch=3", *settings]) == 0
        assert main(["classify", out, "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "argmax q(y|x), 30 labels" in lines[0] and "logistic regression on E[z|x] of 30 labelled" in lines[1]
    assert main(["compare", str(tmp_path / "m2"), str(tmp_path / "bigan")]) == 0
    table = capsys.readouterr().out
    assert "classification_error" in table and "m2" in table and "bigan" in table
