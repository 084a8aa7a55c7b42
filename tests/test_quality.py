"""Sample-quality, mode-coverage, probe and likelihood metrics through dgm.evaluate, on models whose
answers are known: a model that replays the test set, one that samples the true toy mixture, a
uniform model over 256 levels, an identity encoder."""
from __future__ import annotations

import json
import math

import pytest
import torch

import dgm
from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError
from dgm.eval.features import card, feature_extractor, load_domain_net
from dgm.models.base import GenerativeModel


class Fixed(GenerativeModel):
    """A model with nothing to learn (one dummy parameter, so it has a device)."""

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(None, spec)
        self.dummy = torch.nn.Parameter(torch.zeros(1))


class Replay(Fixed):
    """'Samples' are the examples of a fixed dataset, in order (a perfect model of that set)."""

    name = "replay"

    def __init__(self, data: Dataset) -> None:
        super().__init__(data.spec)
        self.examples = data.tensors().x

    def sample(self, n, condition=None, *, generator=None):
        index = torch.arange(n) % len(self.examples)
        return self.examples[index]


class Mixture(Fixed):
    """Samples the toy's true Gaussian mixture."""

    name = "mixture"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.modes = torch.tensor(spec.extras["modes"])

    def sample(self, n, condition=None, *, generator=None):
        which = torch.randint(len(self.modes), (n,), generator=generator)
        return self.modes[which] + self.spec.extras["mode_std"] * torch.randn(n, 2, generator=generator)


class Uniform(Fixed):
    """p(x) = 256^-D over 8-bit images: exactly 8 bits per dimension."""

    name = "uniform"

    def log_prob(self, x):
        return torch.full((len(x),), -self.spec.dim * math.log(256), dtype=torch.float64)


class Identity(Fixed):
    """encode(x) = the pixels."""

    name = "identity"

    def encode(self, x):
        return x.flatten(1).float()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_CACHE", str(tmp_path / "cache"))


def by_metric(results):
    return {r.metric: r for r in results}


def test_a_model_that_replays_the_test_set_scores_perfectly():
    test = dgm.data.load("digits", "test")
    results = by_metric(dgm.evaluate(Replay(test), test, ["fid", "kid", "precision_recall", "is"],
                                     num_samples=len(test), progress=False))
    assert results["fid"].value == pytest.approx(0.0, abs=1e-6)
    # identical sets: the unbiased MMD^2 is (2/m^2) (sum_{i!=j} k_ij / (m-1) - sum_i k_ii) <= 0 for a PSD kernel
    assert -0.1 < results["kid"].value <= 0
    assert results["precision"].value == 1.0 and results["recall"].value == 1.0
    assert "FID[digits-net, 360 samples vs test, n=360]" == results["fid"].qualifier
    assert 5 < results["is"].value <= 10  # 10 balanced classes; 36 images a split, label-smoothed net


def test_samples_from_another_distribution_score_worse():
    test = dgm.data.load("digits", "test")
    train = dgm.data.load("digits", "train")
    noise = Dataset(torch.randint(0, 17, (500, 1, 8, 8), dtype=torch.uint8), None, test.spec, train=False)
    good = by_metric(dgm.evaluate(Replay(train), test, ["fid", "precision_recall"], num_samples=1000, progress=False))
    bad = by_metric(dgm.evaluate(Replay(noise), test, ["fid", "precision_recall"], num_samples=500, progress=False))
    assert good["fid"].value < 5 < bad["fid"].value
    assert good["precision"].value > 0.8 > bad["precision"].value


def test_mode_coverage_of_the_true_mixture():
    test = dgm.data.load("ring8", "test")
    results = by_metric(dgm.evaluate(Mixture(test.spec), test, ["mode_coverage"], progress=False))
    assert results["modes_captured"].value == 8
    assert results["high_quality"].value > 98  # 3 sd in 2-D holds 98.9% of a Gaussian
    assert results["reverse_kl"].value < 0.01
    with pytest.raises(DgmError, match="known modes"):
        dgm.evaluate(Mixture(test.spec), dgm.data.load("moons", "test"), ["mode_coverage"], progress=False)


def test_uniform_model_over_256_levels_is_8_bits_per_dim():
    spec = DataSpec("u", (1, 4, 4), "levels", levels=256)
    data = Dataset(torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8), None, spec, train=False)
    results = dgm.evaluate(Uniform(spec), data, ["nll"], progress=False)
    bpd = [r for r in results if r.unit == "bits/dim"][0]
    assert bpd.value == 8.0 and bpd.qualifier.startswith("exact")


def test_probes_on_raw_pixels():
    train, test = dgm.data.load("digits", "train"), dgm.data.load("digits", "test")
    results = by_metric(dgm.evaluate(Identity(test.spec), test, ["linear_probe", "knn"], train=train, progress=False))
    assert results["linear_probe"].value > 90 and results["knn"].value > 90


def test_shipped_feature_nets_reach_their_recorded_accuracy():
    for name, dataset in [("digits-net", "digits"), ("fmnist-net", "fashion-mnist")]:
        try:
            info, test = card(name), dgm.data.load(dataset, "test")
        except DgmError as e:
            pytest.skip(str(e))
        net = load_domain_net(name)
        batch = test.tensors()
        with torch.no_grad():
            accuracy = (net(batch.x).argmax(-1) == batch.y).double().mean().item()
        assert accuracy == pytest.approx(info.test_accuracy, abs=1e-4)
        weights = load_domain_net.__globals__["WEIGHTS_DIR"] / f"{name}.safetensors"
        assert weights.stat().st_size < 2 * 2**20


def test_wrong_image_size_and_missing_inception_are_clear_errors(monkeypatch):
    with pytest.raises(DgmError, match="takes 1x28x28 images, not 1x8x8"):
        feature_extractor("fmnist-net", DataSpec("d", (1, 8, 8), "unit", levels=17))
    monkeypatch.delenv("DGM_INCEPTION_WEIGHTS", raising=False)
    test = dgm.data.load("digits", "test")
    with pytest.raises(DgmError, match="DGM_INCEPTION_WEIGHTS"):
        dgm.evaluate(Replay(test), test, ["fid"], feature_net="inception", num_samples=10, progress=False)
    with pytest.raises(DgmError, match="need image data"):
        toy = dgm.data.load("ring8", "test")
        dgm.evaluate(Mixture(toy.spec), toy, ["fid"], progress=False)


def test_reference_features_are_cached(tmp_path):
    test = dgm.data.load("digits", "test")
    first = dgm.evaluate(Replay(test), test, ["fid"], num_samples=100, progress=False)
    files = list((tmp_path / "cache").glob("digits-net-*.safetensors"))
    assert len(files) == 1
    second = dgm.evaluate(Replay(test), test, ["fid"], num_samples=100, progress=False)
    assert first[0].value == second[0].value


def test_compare_table_marks_missing_metrics_and_bounds(tmp_path, capsys):
    from dgm.cli import main

    for name, results in [("a", [{"metric": "nll", "value": 90.0, "unit": "nats", "qualifier": "bound (IWAE k=1000)",
                                  "split": "test", "details": {}}]),
                          ("b", [{"metric": "fid", "value": 3.5, "unit": "", "qualifier": "FID[digits-net]",
                                  "split": "test", "details": {}}])]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model": name, "data": {"name": "digits"}}))
        (tmp_path / name / "eval.json").write_text(json.dumps(results))
    assert main(["compare", str(tmp_path / "*"), "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "| ≤ 90 | – |" in out and "| – | 3.5 |" in out
    assert "bound (IWAE k=1000)" in out
    assert (tmp_path / "p.png").exists() and "nll [nats]" in (tmp_path / "t.csv").read_text()
    assert main(["compare", str(tmp_path / "nothing-*")]) == 2


# --- what a long evaluation says before and while it runs ---------------------------------------------
def slow_metric(seconds_per_probe: float):
    """A metric whose work is 2400 probes of 8 examples, each taking ``seconds_per_probe``."""
    import time

    from dgm.eval.core import Metric, Plan, Result, Work

    def plan(model, ctx):
        return Plan("a slow pass over the data", [Work("slow pass", 8 * 2400, lambda n: time.sleep(seconds_per_probe))],
                    "--max-examples N")

    def compute(model, ctx):
        n = sum(len(x) for x in ctx.batches(4, desc="the slow pass"))
        return [Result("slow", float(n))]

    return Metric("slow", (), (), compute, "a slow test metric", default=False, plan=plan)


def test_a_slow_metric_is_announced_with_an_estimate_and_a_progress_bar(monkeypatch, capsys):
    from dgm.eval.core import METRICS

    monkeypatch.setitem(METRICS, "slow", slow_metric(0.05))
    test = dgm.data.load("digits", "test").subset(12)
    capsys.readouterr()
    assert dgm.evaluate(Replay(test), test, ["slow"], progress=True)[0].value == 12
    err = capsys.readouterr().err
    # 2400 x 0.05 s = 120 s: the estimate, then the advice on making it cheaper, on one line
    assert "dgm: slow: a slow pass over the data: about 2 min (cheaper: --max-examples N)\n" in err, err
    assert "the slow pass:   0%|" in err and "0/3" in err  # the bar over 12 examples in batches of 4
    assert dgm.evaluate(Replay(test), test, ["slow"], progress=False)[0].value == 12
    assert capsys.readouterr().err == ""


def test_estimates_and_progress_bars_of_the_builtin_metrics_leave_the_results_unchanged(capsys):
    from tests.conftest import image_dataset

    train = image_dataset(n=64, representation="binary-dynamic")
    test = image_dataset(n=40, representation="binary-dynamic", seed=1, train=False)
    vae = dgm.create("vae", test.spec, latent_dim=2, hidden=(16,))
    metrics = ["nll", "elbo", "fid", "is", "memorization"]
    loud = dgm.evaluate(vae, test, metrics, train=train, k=4, num_samples=50, progress=True)
    err = capsys.readouterr().err
    quiet = dgm.evaluate(vae, test, metrics, train=train, k=4, num_samples=50, progress=False)
    assert capsys.readouterr().err == ""
    assert [r.value for r in loud] == [r.value for r in quiet]  # the timing probes draw their own noise
    for line in ["dgm: nll: IWAE bound, k=4, on 40 examples: ", "dgm: elbo: ELBO, 1 sample, on 40 examples: ",
                 "dgm: fid: 50 samples and their digits-net features vs test data: ",
                 "dgm: memorization: 50 samples and their digits-net features vs train and test data, then their "
                 "nearest training neighbours: "]:
        assert line in err, err
    assert "shares the samples, sample features of the metrics above" in err  # is: counted once, with fid
    for bar in ["IWAE k=4", "sampling 50", "features of samples (digits-net)", "features of test data (digits-net)",
                "features of train data (digits-net)", "nearest neighbours of samples"]:
        assert bar in err, bar


def test_the_duality_gap_shows_progress_only_when_asked(capsys):
    from dgm.eval.duality import duality_gap
    from tests.conftest import vector_dataset

    data = vector_dataset(n=64)
    gan = dgm.create("gan", data.spec, hidden=(8,), latent_dim=2)
    duality_gap(gan, data, steps=4, inner_steps=2, batch_size=16, eval_size=32, progress=False)
    assert capsys.readouterr().err == ""
    duality_gap(gan, data, steps=4, inner_steps=2, batch_size=16, eval_size=32, progress=True)
    err = capsys.readouterr().err
    assert "duality gap:   0%|" in err and "0/18" in err  # 4 + 4 + 2 x (2 + 1) + 2 x 2 optimiser steps
