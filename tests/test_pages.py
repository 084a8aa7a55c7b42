"""The pages dgm writes, loaded in a real browser (headless Chromium driven by Playwright): the run
report and the comparison page of ``dgm compare --html`` load without console errors, show every
section and decode every image. Also the report's figures that need no browser: the nearest
training images (memorisation) and the class-conditional grid.

The browser tests skip where Chromium (Debian's ``chromium``, installed by ``.ci/run``) or the
``playwright`` package (the ``test`` extra) is absent; ``playwright install`` is not needed.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dgm.cli import main
from dgm.report.html import CLASS_GRID_COLUMNS, CLASS_GRID_ROWS, class_grid, nearest_training

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: sections of the report of an evaluated VAE on digits, in page order
VAE_SECTIONS = ["Metrics", "Training curves", "Samples", "Nearest training images (pixel space)", "Reconstructions",
                "Latent interpolation", "Latent traversals", "Compression (rate-distortion)",
                "Rate-distortion against PNG, WebP and JPEG", "Samples during training", "Configuration"]
#: sections of the report of a class-conditional GAN on digits
CGAN_SECTIONS = ["Training curves", "Samples", "Samples by class", "Nearest training images (pixel space)",
                 "Samples during training", "Configuration"]


# --- figures, without a browser --------------------------------------------------------------------
def test_nearest_training_finds_a_copied_training_image_at_distance_zero_and_sorts_like_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 1, 8, 8, generator=g)
    samples = torch.cat([train[[3, 17]], torch.rand(2, 1, 8, 8, generator=g)])  # two copies, two new images
    d, index = nearest_training(samples, train, k=4)
    assert d.shape == index.shape == (4, 4)
    assert index[:2, 0].tolist() == [3, 17] and d[:2, 0].tolist() == [0.0, 0.0]  # exactly 0: a copy
    brute = torch.cdist(samples.flatten(1).double(), train.flatten(1).double())  # (4, 50)
    expected = brute.sort(1)
    torch.testing.assert_close(d, expected.values[:, :4])
    assert torch.equal(index[2:], expected.indices[2:, :4])
    assert (d[2:, 0] > 0).all()
    assert nearest_training(samples, train[:2], k=5)[1].shape == (4, 2)  # fewer training images than k


def test_class_grid_asks_the_sampler_for_each_class_in_its_own_row():
    asked = []

    def sample(n, condition=None, *, generator=None):
        asked.append(condition.clone())
        return condition.float().view(n, 1, 1, 1).expand(n, 1, 4, 4)  # each picture shows its class

    model = SimpleNamespace(num_classes=3, device=torch.device("cpu"), sample=sample)
    pictures, rows = class_grid(model, generator=torch.Generator().manual_seed(0))
    assert rows == 3 and pictures.shape == (3 * CLASS_GRID_COLUMNS, 1, 4, 4)
    assert asked[0].tolist() == [c for c in range(3) for _ in range(CLASS_GRID_COLUMNS)]
    assert pictures.view(3, CLASS_GRID_COLUMNS, -1)[:, :, 0].tolist() == [[float(c)] * CLASS_GRID_COLUMNS
                                                                          for c in range(3)]
    model.num_classes = CLASS_GRID_ROWS + 5  # many classes: the first CLASS_GRID_ROWS rows
    assert class_grid(model, columns=2)[1] == CLASS_GRID_ROWS and asked[-1].max() == CLASS_GRID_ROWS - 1


# --- the pages -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny VAEs (one evaluated) and a tiny class-conditional GAN on digits, with their reports."""
    root = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DGM_TINY", "1")
        for name, model, extra in (("vae_a", "vae", []), ("vae_b", "vae", ["--set", "model.beta=2"]),
                                   ("cgan", "cgan", [])):
            assert main(["train", model, "--data", "digits", "--epochs", "1", "--out", str(root / name),
                         "--quiet", *extra]) == 0
        assert main(["eval", str(root / "vae_a"), "--metrics", "nll", "--max-examples", "8", "--quiet"]) == 0
        assert main(["compare", str(root / "vae_*"), "--html", str(root / "compare.html")]) == 0
    return {"root": root, **{name: root / name for name in ("vae_a", "vae_b", "cgan")}}


def test_the_report_shows_the_class_grid_and_the_memorisation_grid_with_captions(runs):
    page = (runs["cgan"] / "report.html").read_text()
    shown = re.findall(r"<h2>([^<]*)</h2><figure><img[^>]*><figcaption class='caption'>([^<]*)</figcaption>", page)
    captions = dict(shown)
    assert captions["Samples by class"].startswith(f"each row: {CLASS_GRID_COLUMNS} samples given one class")
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in captions["Samples by class"]
    assert re.search(r"nearest of the first \d+ training images", captions["Nearest training images (pixel space)"])


def test_the_compare_page_overlays_the_shared_curves_and_shows_each_runs_samples(runs):
    page = (runs["root"] / "compare.html").read_text()
    assert "<h2>Leaderboard</h2>" in page and "<h2>Training curves</h2>" in page and "<h2>Samples</h2>" in page
    assert "alt='loss'" in page and "alt='kl'" in page  # logged by both VAEs
    assert "alt='lr'" not in page  # a setting, not a curve
    assert "<h3>vae_a: vae on digits</h3>" in page and "<h3>vae_b: vae on digits</h3>" in page
    assert "not evaluated yet (run 'dgm eval RUN'): " in page and "vae_b" in page.split("not evaluated yet")[1]
    assert "src='http" not in page and "src='figures/" not in page  # self-contained
    assert "<h2>Probes and rate-distortion</h2>" in page  # the charts of the runs' reports, one per run
    assert page.count("Rate-distortion against PNG, WebP and JPEG</h3>") == 2


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (apt-get install chromium) for the page tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        # the system's chromium (playwright's own download is not needed); no sandbox: CI runs as root
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def load(browser, path: Path) -> dict:
    """Open ``path`` and return its errors, its section headings and the state of its images."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url[:80]}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    state = page.evaluate("""() => ({
        headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
        images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                       inline: i.src.startsWith('data:image/png;base64,')})),
    })""")
    page.close()
    return {"errors": errors, **state}


def assert_loads(state: dict, sections: list[str]) -> None:
    assert state["errors"] == []
    assert [h for h in state["headings"] if h in sections] == sections, state["headings"]
    assert state["images"], "no image on the page"
    broken = [i["alt"] for i in state["images"] if not (i["complete"] and i["width"] > 0 and i["inline"])]
    assert broken == [], f"images not decoded or not inlined: {broken}"


def test_the_report_of_a_vae_loads_in_chromium_with_every_section_and_image(runs, browser):
    state = load(browser, runs["vae_a"] / "report.html")
    assert_loads(state, VAE_SECTIONS)


def test_the_report_of_a_class_conditional_gan_loads_in_chromium(runs, browser):
    assert_loads(load(browser, runs["cgan"] / "report.html"), CGAN_SECTIONS)


def test_the_compare_page_loads_in_chromium_with_the_table_curves_and_samples(runs, browser):
    state = load(browser, runs["root"] / "compare.html")
    assert_loads(state, ["Leaderboard", "Training curves", "Samples", "Probes and rate-distortion"])
    alts = [i["alt"] for i in state["images"]]
    assert "loss" in alts and "samples of vae_a" in alts and "samples of vae_b" in alts
    assert alts.count("Rate-distortion against PNG, WebP and JPEG") == 2


def test_a_broken_page_is_caught(browser, tmp_path):  # the checks above can fail
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><h2>Samples</h2><img src='data:image/png;base64,AAAA' alt='x'>"
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    state = load(browser, bad)
    assert any("boom" in e for e in state["errors"]) and any("page error" in e for e in state["errors"])
    assert state["images"][0]["width"] == 0
    with pytest.raises(AssertionError):
        assert_loads(state, ["Samples"])
