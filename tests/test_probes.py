"""Probe datasets and ``dgm probe`` (Zhao et al. 2018, arXiv:1811.03259): the feature extractors recover
the controlled feature exactly on rendered images, the datasets are deterministic, the app writes
the plot and the histograms for a tiny VAE run, and refuses a run on other data in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgm.cli import main
from dgm.data import load, probes
from dgm.errors import DgmError

TINY = ["--epochs", "1", "--quiet", "--set", "train.max_steps_per_epoch=2", "--set", "data.max_examples=64",
        "--set", "model.hidden=16", "--set", "model.latent_dim=3"]


def test_dots_are_counted_exactly_from_0_to_10():
    rng = np.random.default_rng(0)
    counts = np.repeat(np.arange(0, 11), 40)  # 40 random images of each count
    x = probes.render_dots(counts, rng)
    assert x.shape == (len(counts), 1, 32, 32) and x.dtype == np.uint8
    assert set(np.unique(x)) <= {0, 255}  # no anti-aliasing: a threshold cannot err
    assert np.array_equal(probes.count_dots(x / 255.0), counts)
    assert np.all((x > 0).sum(axis=(1, 2, 3)) == 13 * counts)  # the discs never overlap


def test_counting_ignores_specks_and_survives_mild_noise():
    image = np.zeros((1, 1, 32, 32))
    image[0, 0, 2:5, 2:5] = 1  # a 3x3 blob: a dot
    image[0, 0, 10, 10:12] = 1  # 2 pixels: a speck below MIN_AREA
    image[0, 0, 20:23, 20] = 0.9  # 3 pixels above the threshold: counted
    image[0, 0, 28, 28:31] = 0.4  # below the threshold: background
    assert probes.count_dots(image).tolist() == [2]
    assert probes.count_dots(image, min_area=1).tolist() == [3]
    assert probes.count_dots(image[:, 0]).tolist() == [2]  # (N, H, W) too
    x = probes.render_dots(np.arange(1, 9), np.random.default_rng(1)) / 255.0
    noisy = np.clip(x + np.random.default_rng(2).uniform(-0.3, 0.3, x.shape), 0, 1)
    assert probes.count_dots(noisy).tolist() == list(range(1, 9))


def test_combinations_are_counted_exactly():
    pairs = np.array([(a, b) for a in range(5) for b in range(5) if a + b <= 8] * 8)  # every mix up to 8 objects
    x = probes.render_combos(pairs, np.random.default_rng(4)) / 255.0
    assert np.array_equal(probes.count_kinds(x), pairs)
    assert np.array_equal(probes.combination_code(x), 10 * pairs[:, 0] + pairs[:, 1])
    combos = load("combos", "test")
    assert combos.spec.extras["probe"] == "combination"
    shares = probes.histogram(probes.combination_code(combos.raw.numpy() / 255.0), probes.PROBES["combination"])
    assert shares == {12: 0.5, 21: 0.5} and probes.PROBES["combination"].label(21) == "2d+1s"


@pytest.mark.parametrize("columns", [(16, 8, 8), (1, 30, 1), (32, 0, 0), (5, 11, 16)])
def test_colour_shares_are_recovered_exactly(columns):
    x = probes.render_colours(columns, 30, np.random.default_rng(3)) / 255.0
    assert np.array_equal(probes.colour_shares(x), np.tile(np.array(columns) / 32, (30, 1)))
    assert np.array_equal(probes.red_share_bins(x), np.full(30, columns[0]))
    # nearest palette colour: a dimmed, tinted red is still red
    tinted = x * 0.7 + 0.1
    assert np.array_equal(probes.red_share_bins(tinted), np.full(30, columns[0]))


def test_histogram_shares_with_the_overflow_bin():
    probe = probes.PROBES["numerosity"]
    shares = probes.histogram(np.array([3, 3, 2, 40]), probe)
    assert list(shares) == list(range(0, 9)) + [probe.top + 1]
    assert shares[3] == 0.5 and shares[2] == 0.25 and shares[probe.top + 1] == 0.25 and shares[0] == 0.0
    assert probe.label(probe.top + 1) == ">12" and probes.PROBES["colour-proportion"].label(16) == "16/32"


def test_probe_datasets_are_deterministic_and_controlled():
    a, b = load("dots3"), load("dots3")
    assert torch.equal(a.raw, b.raw) and a.raw.shape == (10_000, 1, 32, 32)
    test = load("dots3", "test")
    assert len(test) == 2_000 and not torch.equal(test.raw[:100], a.raw[:100])
    assert a.spec.extras["probe"] == "numerosity" and a.labels is None
    assert np.all(probes.count_dots(a.raw[:2000].numpy() / 255.0) == 3)
    two_or_four = probes.count_dots(load("dots2or4", "test").raw.numpy() / 255.0)
    assert np.bincount(two_or_four).tolist() == [0, 0, 1000, 0, 1000]
    colours = load("colours", "test")
    assert colours.raw.shape == (2_000, 3, 32, 32) and colours.spec.extras["probe"] == "colour-proportion"
    assert np.all(probes.red_share_bins(colours.raw.numpy() / 255.0) == 16)
    assert len({bytes(img) for img in colours.raw[:200].numpy()}) > 50  # the layout varies, the share does not


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    assert main(["train", "vae", "--data", "dots3", *TINY, "--out", str(root / "dots")]) == 0
    assert main(["train", "vae", "--data", "digits", *TINY, "--out", str(root / "digits")]) == 0
    return root


def test_probe_app_writes_the_plot_and_the_histograms(runs, tmp_path, capsys):
    out = tmp_path / "plot.png"
    assert main(["probe", str(runs / "dots"), "--num-samples", "30", "-o", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("number of dots in 30 samples: ") and line.endswith(f"-> {out}, plot.json")
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200
    result = json.loads((tmp_path / "plot.json").read_text())
    assert result["dataset"] == "dots3" and result["model"] == "vae" and result["num_samples"] == 30
    assert result["num_train"] == 64  # data.max_examples of the run
    train = dict(zip(result["values"], result["train"]))
    assert train[3] == 1.0 and sum(train.values()) == 1.0  # every training image has 3 dots
    assert abs(sum(result["samples"]) - 1.0) < 1e-9
    assert all(round(s * 30) == s * 30 or abs(round(s * 30) - s * 30) < 1e-9 for s in result["samples"])
    # the same seed gives the same samples, so the same histogram
    assert main(["probe", str(runs / "dots"), "--num-samples", "30", "-o", str(tmp_path / "again.png"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["samples"] == result["samples"]


def test_probe_app_refuses_other_data_in_one_line(runs, tmp_path, capsys):
    from dgm import run
    from dgm.apps.probe import probe_for

    assert main(["probe", str(runs / "digits"), "-o", str(tmp_path / "p.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    # the CLI's refusal for a model without what the app needs: here, a run on probe data
    assert err.startswith("dgm: error: model 'vae' cannot run 'probe': it needs sample, and a run on probe data "
                          "(dots3, dots2or4, colours or combos)") and "\n" not in err
    with pytest.raises(DgmError, match="the run's data 'digits' is not a probe dataset: train on dots3"):
        probe_for(run.load(runs / "digits").spec)  # the app's own check, for callers of probe_result
    assert not (tmp_path / "p.png").exists()
    assert main(["probe", str(runs / "dots"), "-o", str(tmp_path / "p.jpg"), "--quiet"]) == 2
    assert ".png" in capsys.readouterr().err


def test_report_figure_only_for_probe_data(runs):
    from dgm import run
    from dgm.apps import APPS, iter_apps

    iter_apps()
    app = APPS["probe"]
    generator = torch.Generator().manual_seed(0)
    model = run.load(runs / "dots")
    figures = app.report_figures(model, torch.zeros(0, 1, 32, 32), generator=generator)
    assert len(figures) == 2
    title, pictures, columns, caption = figures[0]
    assert title == "Probe: number of dots" and pictures.shape == (32, 1, 32, 32) and columns == 8
    counts = probes.count_dots(pictures.numpy())
    assert np.all(np.diff(np.minimum(counts, 13)) >= 0)  # sorted by the measured count
    title, chart, _, caption = figures[1]  # the bar plot: the same samples' counts against training's 3 dots
    assert isinstance(chart, Image.Image) and chart.width > 200
    assert "training images: " in caption and caption.count("%") >= 1
    assert "in 256 samples" in caption and "10000 training images" in caption
    digits = run.load(runs / "digits")
    assert app.report_figures(digits, torch.zeros(0, 1, 8, 8), generator=generator) == []
    assert app.supports(model) and not app.supports(digits) and app.supports(type(digits))
    report = (runs / "dots" / "report.html").read_text()
    assert "Probe: number of dots" in report
