"""The command line end to end on a tiny run, and one clear line for every kind of bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dgm
from dgm.cli import main

TINY = ["--set", "model.latent_dim=4", "--set", "model.hidden=32", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_a_complete_run(run_dir):
    for name in ["config.json", "weights.safetensors", "trainer.json", "trainer.safetensors", "metrics.csv",
                 "report.html", "samples/epoch_002.png"]:
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "vae" and config["model_config"]["latent_dim"] == 4
    assert config["data"]["name"] == "digits" and config["spec"]["representation"] == "binary-dynamic"


def test_sample_eval_and_report(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "16", "-o", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 64
    assert main(["sample", str(run_dir), "-n", "5", "-o", str(tmp_path / "x.npz")]) == 0
    assert np.load(tmp_path / "x.npz")["x"].shape == (5, 1, 8, 8)
    capsys.readouterr()
    assert main(["sample", str(run_dir), "-n", "2", "-o", str(tmp_path / "x.txt")]) == 2  # images are not text
    assert "are not text: write them to a .png/.jpg picture or a .npz" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()
    assert main(["eval", str(run_dir), "--metrics", "nll,posterior_collapse", "--k", "20",
                 "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "bound (IWAE k=20)" in table and "active_units" in table
    results = json.loads((tmp_path / "e.json").read_text())
    nll = [r for r in results if r["metric"] == "nll" and r["unit"] == "nats"][0]
    assert 0 < nll["value"] < 64 * np.log(2) + 1e-9  # binarized 8x8: below the uniform model's 64 bits
    assert nll["split"] == "test, n=360"
    assert main(["eval", str(run_dir), "--metrics", "elbo", "--quiet"]) == 0  # a later evaluation adds to eval.json
    merged = {r["metric"] for r in json.loads((run_dir / "eval.json").read_text())}
    assert {"nll", "active_units", "neg_elbo"} <= merged
    html = (run_dir / "report.html").read_text()
    for section in ["Metrics", "Training curves", "Samples", "Reconstructions", "Latent interpolation",
                    "Configuration"]:
        assert f"<h2>{section}</h2>" in html
    assert "data:image/png;base64," in html and "src='http" not in html


def test_save_load_gives_identical_samples(run_dir):
    a, b = dgm.load(run_dir), dgm.load(run_dir)
    xa = a.sample(8, generator=torch.Generator().manual_seed(3))
    xb = b.sample(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    xc = a.sample(8, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(xa, xc)


def test_resume_extends_a_finished_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--quiet"]) == 0
    assert json.loads((copy / "trainer.json").read_text())["epoch"] == 3
    assert (copy / "samples" / "epoch_003.png").exists()


def test_list_names_models_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "vae" in out and "fashion-mnist" in out and "ring8" in out and "folder:PATH" in out


def test_yaml_config_and_set_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {latent_dim: 3, hidden: [16]}\ntrain: {epochs: 1, batch_size: 64}\n")
    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--config", str(cfg), "--set", "train.lr=0.01",
                 "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["latent_dim"] == 3 and config["model_config"]["hidden"] == [16]
    assert config["train"]["lr"] == 0.01 and config["train"]["batch_size"] == 64


# --- bad input: one line, exit code 2, no traceback -------------------------------------------------
def fails_with(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dgm: error:") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_missing_dataset(capsys, tmp_path, monkeypatch):
    import dgm.data.sources as sources

    monkeypatch.setenv("DGM_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "system")
    fails_with(capsys, ["train", "vae", "--data", "mnist", "--out", str(tmp_path / "r"), "--quiet"],
               str(tmp_path / "nowhere"), "mnist")


def test_unknown_model_and_dataset_suggest_the_nearest(capsys, tmp_path):
    fails_with(capsys, ["train", "vea", "--data", "digits"], "unknown model 'vea'", "'vae'")
    fails_with(capsys, ["train", "vae", "--data", "digts", "--out", str(tmp_path / "r")], "'digits'")


def test_unknown_and_bad_settings(capsys, tmp_path):
    fails_with(capsys, ["train", "vae", "--set", "latent_dims=4"], "latent_dims", "model.latent_dim")
    fails_with(capsys, ["train", "vae", "--set", "model.latent_dim=four"], "model.latent_dim must be an integer")
    fails_with(capsys, ["train", "vae", "--set", "model.likelihood=gauss"], "gaussian")
    fails_with(capsys, ["train", "vae", "--set", "nonsense"], "KEY=VALUE")


def test_folder_without_images_and_unsupported_size(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = fails_with(capsys, ["train", "vae", "--data", f"folder:{empty}", "--out", str(tmp_path / "a")])
    assert err == (f"dgm: error: no PNG/JPEG images (.png, .jpg, .jpeg) found under {empty}: "
                   "a train/test holdout needs at least 2"), err
    pictures = tmp_path / "pics"
    pictures.mkdir()
    for i in range(12):
        Image.fromarray(np.full((30, 30), i * 20, np.uint8)).save(pictures / f"{i}.png")
    fails_with(capsys, ["train", "vae", "--data", f"folder:{pictures}", "--set", "data.size=30",
                        "--set", "model.network=conv", "--out", str(tmp_path / "b"), "--quiet"], "30x30")


def test_corrupt_foreign_and_missing_runs(capsys, run_dir, tmp_path):
    import shutil

    fails_with(capsys, ["sample", str(tmp_path / "no-such-run")], "does not exist")
    fails_with(capsys, ["eval", str(tmp_path)], "not a dgm run directory")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    (corrupt / "weights.safetensors").write_bytes(b"\x00" * 100)
    fails_with(capsys, ["sample", str(corrupt)], "corrupt")
    foreign = tmp_path / "foreign"
    shutil.copytree(run_dir, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["model_config"]["latent_dim"] = 7
    (foreign / "config.json").write_text(json.dumps(config))
    fails_with(capsys, ["sample", str(foreign)], "do not fit")
    (foreign / "config.json").write_text("{not json")
    fails_with(capsys, ["sample", str(foreign)], "not valid JSON")
    fails_with(capsys, ["train", "vae", "--data", "digits", "--out", str(run_dir)], "already holds a run")


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "dgm.cli", "train", "vae", "--data", "fashion-mnst"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "fashion-mnist" in proc.stderr


def test_ctrl_c_saves_the_run_and_says_how_to_resume(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dgm.cli", "train", "vae", "--data", "digits", "--epochs",
                             "100000", "--out", str(out), *TINY], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (out / "trainer.json").exists() and time.time() < deadline:  # the first epoch is saved
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "resume with 'dgm train --resume" in err
    state = json.loads((out / "trainer.json").read_text())
    assert state["step"] >= 11  # at least one epoch (11 batches of 128 from 1437 digits)
    assert main(["train", "--resume", str(out), "--epochs", str(state["epoch"] + 1), "--quiet"]) == 0
