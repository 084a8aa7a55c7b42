"""The run report (dgm.report.html) and the leaderboard (dgm.report.compare): captions, rendering,
the cache of pictures drawn from the model, progress, and the CSV and plot of ``dgm compare``."""
from __future__ import annotations

import csv
import inspect
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch

import dgm
from dgm.cli import main
from dgm.models.base import GenerativeModel
from tests.conftest import image_dataset, vector_dataset

TINY_DDPM = ["--set", "train.max_steps_per_epoch=2", "--set", "model.timesteps=20", "--set", "model.width=8",
             "--set", "model.sample_steps=5", "--set", "model.preview_steps=5", "--quiet"]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "ddpm"
    assert main(["train", "ddpm", "--data", "digits", "--epochs", "1", "--out", str(out), *TINY_DDPM]) == 0
    return out


def figures(page: str) -> list[tuple[str, str, str]]:
    """(section title, img attributes, caption) of every figure of a report that opens a section."""
    return re.findall(r"<h2>([^<]*)</h2><figure><img([^>]*)><figcaption class='caption'>([^<]*)</figcaption>", page)


def test_report_collapses_the_config_captions_every_figure_and_pixelates_only_image_grids(ddpm_run):
    page = (ddpm_run / "report.html").read_text()
    assert re.search(r"<h2>Configuration</h2><details><summary>config\.json \(\d+ lines\)</summary><pre>", page)
    assert page.count("<figure>") == len(re.findall(r"<figcaption class='caption'>[^<]+</figcaption>", page))
    shown = {title: attributes for title, attributes, _ in figures(page)}
    assert {"Training curves", "Samples", "Restoration: inpainting (the central square generated)",
            "Restoration: 2x super-resolution"} <= set(shown)
    assert "class='pixelated'" not in shown["Training curves"]  # a plot is smoothed as usual
    for title in ("Samples", "Restoration: 2x super-resolution"):
        assert "class='pixelated'" in shown[title]
    assert "img { image-rendering: pixelated" not in page and "img.pixelated { image-rendering: pixelated; }" in page
    assert "src='http" not in page and "src='figures/" not in page  # one self-contained file


def test_eval_reuses_the_pictures_of_unchanged_weights_and_redraw_draws_them_again(ddpm_run, monkeypatch):
    from dgm.models.diffusion import DDPM

    calls = []
    restore = DDPM.restore

    def counting(self, *args, **kwargs):
        calls.append(1)
        return restore(self, *args, **kwargs)

    monkeypatch.setattr(DDPM, "restore", counting)
    before = (ddpm_run / "figures" / "figure_00.png").read_bytes()
    assert main(["eval", str(ddpm_run), "--metrics", "nll", "--max-examples", "8", "--quiet"]) == 0
    assert calls == []  # the restorations of these weights were drawn after training
    page = (ddpm_run / "report.html").read_text()
    assert "<h2>Restoration: inpainting (the central square generated)</h2>" in page and "<h2>Metrics</h2>" in page
    assert main(["report", str(ddpm_run), "--quiet"]) == 0
    assert calls == []
    assert main(["report", str(ddpm_run), "--redraw", "--quiet"]) == 0
    assert len(calls) == 3  # completion of the bottom half, inpainting, 2x super-resolution of the grey digits
    assert (ddpm_run / "figures" / "figure_00.png").read_bytes() == before  # seeded: the same pictures
    weights = ddpm_run / "ema.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # new weights
    assert main(["report", str(ddpm_run), "--quiet"]) == 0
    assert len(calls) == 6  # the three restorations drawn again
    index = json.loads((ddpm_run / "figures" / "figures.json").read_text())
    assert index["stamp"]["weights"]["ema.safetensors"]["mtime_ns"] == weights.stat().st_mtime_ns


def test_writing_the_report_shows_progress_only_when_asked(ddpm_run, capsys):
    capsys.readouterr()
    assert main(["report", str(ddpm_run), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["report", str(ddpm_run), "--redraw"]) == 0
    err = capsys.readouterr().err
    from dgm import run
    from dgm.apps import apps_for

    # curves, diagnostics, samples, the nearest training images, each app's figures (restore, ...), own
    assert re.search(rf"report figures:\s+0%\|\s+\| 0/{5 + len(apps_for(run.load(ddpm_run)))}", err), err


class Watched(GenerativeModel):
    """A 2-D model with a training monitor that describes what it logs."""

    name = "watched"

    def __init__(self, spec) -> None:
        super().__init__(None, spec)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def sample(self, n, condition=None, *, generator=None):
        return torch.randn(n, 2, generator=generator)

    def monitors(self):
        return {"test-watch": {}}


def test_logged_diagnostics_are_captioned_by_the_monitor_that_logged_them(tmp_path):
    from dgm.eval import MONITORS, register_monitor

    @register_monitor("test-watch")
    class Monitor:
        logs = {"watch/spread": "the spread the test monitor watches"}

    from dgm.report import write_report

    test = vector_dataset(n=100, train=False)
    (tmp_path / "config.json").write_text(json.dumps({"model": "watched", "train": {"seed": 0}}))
    (tmp_path / "metrics.csv").write_text("step,epoch,loss,watch/spread\n1,0,2.0,\n2,0,1.5,\n2,0,,0.3\n4,1,1.0,\n4,1,,0.2\n")
    page = write_report(tmp_path, Watched(test.spec), test).read_text()
    shown = {title: (attributes, caption) for title, attributes, caption in figures(page)}
    assert shown["Convergence diagnostics"][1] == ("estimated at the end of epochs during training: "
                                                   "watch/spread: the spread the test monitor watches")
    assert shown["Training curves"][1].endswith(": loss")  # the diagnostic is not plotted as a loss
    assert "(blue) over test examples (grey)" in shown["Samples"][1]
    assert all("pixelated" not in attributes for attributes, _ in shown.values())  # 2-D: plots only
    assert not (tmp_path / "figures").exists()  # no weights on disk: nothing to cache against
    MONITORS.pop("test-watch")


def test_figures_of_one_family_are_captioned_by_the_family_not_by_the_report():
    import dgm.report.html as report

    data = image_dataset(n=16, representation="signed")
    info = dgm.create("infogan", data.spec, latent_dim=4, width=4, categorical_codes=3, continuous_codes=1)
    own = info.eval().report_figures(generator=torch.Generator().manual_seed(0))
    assert [(len(f), f[2]) for f in own] == [(4, 3), (4, 10)]
    assert own[0][3] == ("8 rows of 3: each row keeps the noise z and the other codes fixed and varies "
                         "categorical code c1 along the columns")
    source = inspect.getsource(report)
    for family_word in ("dg/", "duality", "InfoGAN", "latent variables fixed", "modes/"):
        assert family_word not in source


# --- dgm compare ---------------------------------------------------------------------------------------
def write_run(folder: Path, model: str, results: list[dict]) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": model, "data": {"name": "digits"}}))
    (folder / "eval.json").write_text(json.dumps(results))


def result(metric: str, value: float, unit: str = "", qualifier: str = "", split: str = "test, n=360") -> dict:
    return {"metric": metric, "value": value, "unit": unit, "qualifier": qualifier, "split": split, "details": {}}


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    write_run(tmp_path / "vae", "vae", [result("nll", 90.5, "nats", "bound (IWAE k=1000), binary", "test, n=360"),
                                        result("fid", 0.0, qualifier="FID[digits-net]"),
                                        result("reverse_kl", float("nan"), "nats")])
    write_run(tmp_path / "gan", "gan", [result("fid", 3.5, qualifier="FID[digits-net]", split="test, n=100"),
                                        result("reverse_kl", 0.25, "nats")])
    return [tmp_path / "vae", tmp_path / "gan"]


def test_compare_csv_leaves_missing_values_empty(two_runs, tmp_path):
    assert main(["compare", *map(str, two_runs), "--csv", str(tmp_path / "t.csv")]) == 0
    rows = list(csv.reader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows[0] == ["run", "model", "data", "nll [nats]", "fid", "reverse_kl [nats]"]
    assert rows[1][3:] == ["90.5", "0.0", ""]  # the bound's value without its mark; NaN is missing
    assert rows[2][3:] == ["", "3.5", "0.25"]


def test_compare_plot_has_a_legend_labels_zero_and_states_n_and_the_bound(two_runs, tmp_path, monkeypatch):
    import matplotlib.figure

    drawn = []
    save = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        drawn.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    from dgm.report import compare

    path = compare.plot(compare.collect(two_runs), tmp_path / "plot.png")
    assert path.stat().st_size > 0
    (fig,) = drawn
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["vae", "gan"]
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"nll [nats]", "fid", "reverse_kl [nats]"}
    assert "bound (IWAE k=1000), binary" in panels["nll [nats]"].get_title()

    def labels(ax):
        return [t.get_text() for t in ax.texts]

    assert labels(panels["fid"]) == ["0", "3.5"]  # a zero is labelled, not an invisible bar
    assert labels(panels["nll [nats]"]) == ["≤ 90.5", "–"]  # a bound is marked, a missing value said so
    assert labels(panels["reverse_kl [nats]"]) == ["–", "0.25"]  # NaN: missing
    assert [t.get_text() for t in panels["fid"].get_xticklabels()] == ["n=360", "n=100"]


def test_a_two_dimensional_density_model_gets_data_density_and_samples(tmp_path):
    """A model with log_prob on 2-D data: the report draws its density on a grid beside the test
    points and its samples; the grid is the model's own log_prob (a standard normal here, whose
    density peaks at the origin)."""
    from dgm.report import write_report
    from dgm.report.html import density_figure

    test = vector_dataset(n=300, dim=2, train=False)

    class Gaussian2d(GenerativeModel):
        name = "test-gaussian-2d"
        calls = 0

        def __init__(self, spec) -> None:
            super().__init__(None, spec)
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def sample(self, n, condition=None, *, generator=None):
            return torch.randn(n, 2, generator=generator)

        def log_prob(self, x):
            Gaussian2d.calls += 1
            return -(x ** 2).sum(1) / 2 - torch.log(torch.tensor(2 * torch.pi))

    model = Gaussian2d(test.spec)
    (tmp_path / "config.json").write_text(json.dumps({"model": "test-gaussian-2d", "train": {"seed": 0}}))
    page = write_report(tmp_path, model, test).read_text()
    assert "<h2>Density</h2>" in page and "density exp(log p) on a 200x200 grid" in page
    assert Gaussian2d.calls > 0
    figure = density_figure(model, test, torch.Generator().manual_seed(0))
    assert figure.picture.width > 2 * figure.picture.height  # three panels side by side


def test_latent_traversal_moves_one_dimension_per_row_over_its_test_range_and_keeps_the_rest():
    from dgm.report.html import TRAVERSAL_STEPS, traversal

    class Identity:  # encode flattens, decode unflattens: every decoded pixel is a code value
        def encode(self, x):
            return x.flatten(1)

        def decode(self, z):
            return z.view(-1, 1, 2, 2)

    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(500, 4, generator=gen) * torch.tensor([0.1, 3.0, 1.0, 2.0])  # dim 0 barely moves
    x = torch.randn(1, 1, 2, 2, generator=gen)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dgm.report.html.TRAVERSAL_DIMS", 3)
        pictures, dims = traversal(Identity(), x, codes)
    assert dims == [1, 2, 3]  # the three that spread most, in order
    rows = pictures.flatten(1).view(3, TRAVERSAL_STEPS, 4)
    low, high = torch.quantile(codes, torch.tensor([0.02, 0.98]), dim=0)
    for row, d in enumerate(dims):
        torch.testing.assert_close(rows[row, :, d], torch.linspace(low[d].item(), high[d].item(), TRAVERSAL_STEPS))
        kept = [i for i in range(4) if i != d]
        assert torch.equal(rows[row][:, kept], x.flatten()[kept].expand(TRAVERSAL_STEPS, 3))


def test_a_text_model_report_shows_text_figures_and_held_out_bits_and_reuses_them(tmp_path):
    """A text run's report: samples and the model's own figures (a sentence VAE's interpolations) as
    text, the held-out bits per character of every epoch among the diagnostics; a second report
    reads the text figures back from the cache."""
    lines = ["the cat sat on the mat", "a dog ran far away", "birds sing in the morning", "rain falls on roofs"] * 6
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "svae"
    assert main(["train", "sentence-vae", "--data", f"text:{tmp_path / 'lines.txt'}", "--epochs", "2", "--out", str(run),
                 "--set", "model.latent_dim=4", "--set", "model.width=8", "--set", "model.hidden=16",
                 "--set", "train.batch_size=8", "--quiet"]) == 0
    for _ in range(2):  # drawn, then read back from RUN/figures
        page = (run / "report.html").read_text()
        texts = dict(re.findall(r"<h2>([^<]*)</h2><figure><pre>(.*?)</pre>", page, re.S))
        assert {"Samples", "Interpolations"} <= set(texts) and texts["Interpolations"].startswith("pair 1")
        shown = {title: caption for title, _, caption in figures(page)}
        assert "test/bits: held-out negative log-likelihood in bits per character" in shown["Convergence diagnostics"]
        assert main(["report", str(run)]) == 0
    index = json.loads((run / "figures" / "figures.json").read_text())
    assert any(entry["file"] is None and entry["title"] == "Interpolations" for entry in index["figures"])
