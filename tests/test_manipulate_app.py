"""``dgm manipulate`` through the CLI on tiny CSVAE and CVAE runs: a row per class asked for, pictures
or test examples as input, the source class where the model needs it, one line for each bad input,
and the report's figure."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dgm.cli import main

TINY = ["--data", "digits", "--epochs", "1", "--quiet", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.max_examples=64", "--set", "model.hidden=16", "--set", "model.latent_dim=3"]
SIDE, SCALE, CLASSES = 8, 8, 10  # digits: 8x8 pictures drawn 8 times larger, 10 classes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("manipulate")
    assert main(["train", "csvae", *TINY, "--set", "model.adversary_hidden=8", "--out", str(root / "csvae")]) == 0
    assert main(["train", "cvae", *TINY, "--out", str(root / "cvae")]) == 0
    return root


def columns(path) -> int:  # noqa: ANN001
    """Pictures in the one row of the grid at ``path`` (1-pixel gaps, scaled)."""
    with Image.open(path) as im:
        assert im.height == (SIDE + 2) * SCALE
        return (im.width // SCALE - 1) // (SIDE + 1)


def test_a_test_example_in_every_class_and_in_one(runs, tmp_path, capsys):
    out = tmp_path / "all.png"
    assert main(["manipulate", str(runs / "csvae"), "--input", "test:7", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"10 classes of test example 7 -> {out}"
    assert columns(out) == 1 + CLASSES  # the example, then it in each class
    one = tmp_path / "3.png"
    assert main(["manipulate", str(runs / "csvae"), "--input", "test:7", "--to", "3", "-o", str(one)]) == 0
    assert "1 class of test example 7" in capsys.readouterr().out
    assert columns(one) == 2
    assert main(["manipulate", str(runs / "csvae"), "--to", "3", "-o", str(tmp_path / "3.npz")]) == 0
    x = np.load(tmp_path / "3.npz")["x"]
    assert x.shape == (2, 1, SIDE, SIDE)


def test_a_picture_and_the_source_class_a_model_may_need(runs, tmp_path, capsys):
    picture = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.linspace(0, 255, SIDE, dtype=np.uint8), (SIDE, 1))).save(picture)
    out = tmp_path / "out.png"
    assert main(["manipulate", str(runs / "csvae"), "--input", str(picture), "-o", str(out)]) == 0  # needs no source
    assert columns(out) == 1 + CLASSES
    capsys.readouterr()
    assert main(["manipulate", str(runs / "cvae"), "--input", str(picture), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dgm: error: model 'cvae' encodes an example with its class") and "--source" in err
    assert "\n" not in err
    assert main(["manipulate", str(runs / "cvae"), "--input", str(picture), "--source", "4", "-o", str(out)]) == 0
    assert main(["manipulate", str(runs / "cvae"), "--input", "test:2", "-o", str(out)]) == 0  # the test label


@pytest.mark.parametrize("flags, says", [
    (["--to", "12"], "--to takes a class of this model, 0..9, got '12'"),
    (["--to", "seven"], "--to takes a class"),
    (["--source", "-1"], "--source takes a class"),
    (["--input", "test:99999"], "--input test:K takes the index of a test example"),
    (["--input", "test:x"], "--input test:K takes the index of a test example"),
    (["--input", "missing.png"], "picture missing.png does not exist"),
    (["--input", "NOT_A_PICTURE"], "cannot read picture"),
    (["--input", "WRONG_SIZE"], "the model makes 8x8 images"),
])
def test_bad_input_is_one_line(runs, tmp_path, capsys, flags, says):
    (tmp_path / "text.png").write_text("not a picture")
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    flags = [{"NOT_A_PICTURE": str(tmp_path / "text.png"), "WRONG_SIZE": str(tmp_path / "small.png")}.get(f, f)
             for f in flags]
    capsys.readouterr()
    assert main(["manipulate", str(runs / "csvae"), *flags, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.startswith("dgm: error:") and "\n" not in err, err


def test_the_report_shows_the_manipulation_of_test_examples(runs):
    for name in ("csvae", "cvae"):  # the CVAE encodes with each example's test label
        html = (runs / name / "report.html").read_text()
        assert "<h2>Attribute manipulation</h2>" in html and "with its class set to each class in turn" in html
        assert "dgm manipulate" in html


def test_without_labels_a_model_that_needs_the_source_draws_no_manipulation(runs):
    from dgm import load
    from dgm.apps.manipulate import Manipulate
    from dgm.run import load_data, read_config

    model = load(runs / "cvae")
    batch = load_data(read_config(runs / "cvae")[0], "test").tensors(8)
    assert Manipulate().report_figures(model, batch.x) == []
    [(_, grid, columns, _)] = Manipulate().report_figures(model, batch.x, labels=batch.y)
    assert columns == model.num_classes + 1 and len(grid) == 8 * columns
