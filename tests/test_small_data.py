"""Small data: a folder of a few dozen pictures of a size and channel count no bundled dataset has
trains, samples and evaluates through the CLI; a split smaller than a batch trains on batches of the
whole split (said once, not an error); sizes a network cannot take end in one line saying which work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgm.cli import main


def picture_folder(root: Path, n: int, size: int, mode: str, classes: int) -> Path:
    """``n`` blobs of ``size x size`` pixels (PIL ``mode`` "RGB" or "L"), one sub-folder per class."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        c = i % classes
        centre = rng.integers(2, size - 2, 2)
        blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 8.0)
        pixels = np.stack([blob * (c == 0), blob * (c == 1), 0.5 * blob], -1) if mode == "RGB" else blob
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 * pixels).astype(np.uint8), mode).save(folder / f"{i:02d}.png")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("dgm: error: ") and err.count("\n") == 1, err
    return err


TINY = {  # a minute of CPU at most, all three together
    "vae": ["--set", "model.hidden=32", "--set", "model.latent_dim=4"],
    "gan": ["--set", "model.width=8", "--set", "model.latent_dim=8"],
    "ddpm": ["--set", "model.timesteps=20", "--set", "model.width=8"],
}


@pytest.mark.parametrize("model", ["vae", "gan", "ddpm"])
def test_a_folder_smaller_than_a_batch_trains_samples_and_evaluates(capsys, tmp_path, model):
    """30 RGB 20x20 pictures in 3 classes: 27 train, 3 test (the 90/10 holdout), the default batch is 128."""
    folder = picture_folder(tmp_path / "pictures", 30, 20, "RGB", classes=3)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", model, "--data", f"folder:{folder}", "--set", "data.size=20",
                       "--epochs", 2, *TINY[model], "--out", out, "--quiet")
    assert code == 0, err
    assert err == "dgm: note: the training split has 27 examples, fewer than a batch of 128: training on batches of 27\n"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["batch_size"] == 27  # config.json says what the run did
    assert config["spec"]["shape"] == [3, 20, 20] and config["spec"]["num_classes"] == 3
    assert (out / "report.html").exists() and (out / "samples" / "epoch_002.png").exists()

    code, _, err = run(capsys, "sample", out, "-n", 5, "-o", tmp_path / "x.npz", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "x.npz")["x"].shape == (5, 3, 20, 20)

    code, table, err = run(capsys, "eval", out, "--metrics", "nll", "--k", 4, "--quiet")
    if model == "gan":  # an implicit model: the one metric asked for does not exist for it, in one line
        assert "has no likelihood" in one_line_error(code, err)
    else:
        assert code == 0, err
        assert "test, n=3" in table and "bits/dim" in table


def test_one_class_grey_folder_and_sizes_the_conv_nets_cannot_take(capsys, tmp_path):
    folder = picture_folder(tmp_path / "grey", 30, 12, "L", classes=1)
    data = ["--data", f"folder:{folder}", "--epochs", 1, "--quiet"]
    code, _, err = run(capsys, "train", "vae", *data, "--set", "data.size=12", "--set", "model.network=conv",
                       *TINY["vae"], "--out", tmp_path / "vae")
    assert code == 0, err
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["spec"]["shape"] == [1, 12, 12] and config["spec"]["class_names"] == ["class0"]
    code, _, err = run(capsys, "eval", tmp_path / "vae", "--metrics", "linear_probe", "--quiet")
    assert "at least two classes" in one_line_error(code, err)

    code, _, err = run(capsys, "train", "gan", *data, "--set", "data.size=18", *TINY["gan"], "--out", tmp_path / "gan")
    assert "18x18 is not supported" in one_line_error(code, err) and "20x20" in err and "12x12" in err
    code, _, err = run(capsys, "train", "ddpm", *data, "--set", "data.size=7", *TINY["ddpm"], "--out", tmp_path / "ddpm")
    assert "7x7 does not allow" in one_line_error(code, err) and "model.channel_mults" in err


def test_one_training_example(capsys, tmp_path):
    """Two pictures: one to train on (batches of one), one to test on; one picture cannot be split."""
    folder = picture_folder(tmp_path / "two", 2, 20, "RGB", classes=1)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "vae", "--data", f"folder:{folder}", "--set", "data.size=20",
                       "--epochs", 2, *TINY["vae"], "--out", out, "--quiet")
    assert code == 0, err
    assert "training on batches of 1" in err
    code, _, err = run(capsys, "sample", out, "-n", 3, "-o", tmp_path / "x.png", "--quiet")
    assert code == 0, err
    code, table, err = run(capsys, "eval", out, "--metrics", "nll", "--k", 4, "--quiet")
    assert code == 0 and "test, n=1" in table, err

    (folder / "class0" / "01.png").unlink()
    code, _, err = run(capsys, "train", "vae", "--data", f"folder:{folder}", "--out", tmp_path / "one", "--quiet")
    assert "only one image found" in one_line_error(code, err)
