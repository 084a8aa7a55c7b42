"""Every command, given each class of bad value, ends in exit status 2 and one line on stderr that
names what was wrong: never a traceback, never a run lost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgm.cli import main

TINY_DDPM = ["--set", "model.timesteps=20", "--set", "model.width=8", "--set", "model.channel_mults=1,2",
             "--set", "model.preview_steps=5", "--set", "model.sample_steps=5", "--quiet"]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A folder with a trained tiny ddpm run (it samples, evaluates and restores), a picture, a
    mask, a plain file (a path "through" it cannot be written) and a text file posing as .npz."""
    root = tmp_path_factory.mktemp("bad")
    assert main(["train", "ddpm", "--data", "digits", "--epochs", "1", "--out", str(root / "run"),
                 "--set", "train.max_steps_per_epoch=2", *TINY_DDPM]) == 0
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "img.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "mask.png")
    (root / "file").write_text("not a folder")
    (root / "table.npz").write_text("x,y\n1,2\n")
    return root


def cases(root: Path) -> dict[str, list[str]]:
    run, through_file = str(root / "run"), str(root / "file" / "out")
    train = ["train", "vae", "--data", "digits", "--out", str(root / "new"), "--quiet"]
    return {
        # train: non-positive counts, zero/negative rates, non-positive dimensions, bad types, bad files
        "train epochs 0": [*train, "--epochs", "0"],
        "train epochs negative": [*train, "--epochs", "-3"],
        "train batch size 0": [*train, "--batch-size", "0"],
        "train lr 0": [*train, "--set", "train.lr=0"],
        "train lr negative": [*train, "--set", "train.lr=-1e-3"],
        "train lr not a number": [*train, "--set", "train.lr=fast"],
        "train lr infinite": [*train, "--set", "train.lr=inf"],
        "train ema 1.5": [*train, "--set", "train.ema=1.5"],
        "train epochs via set": [*train, "--set", "train.epochs=0"],
        "train epochs fractional": [*train, "--set", "train.epochs=2.5"],
        "train latent dim 0": [*train, "--set", "model.latent_dim=0"],
        "train hidden negative": [*train, "--set", "model.hidden=64,-2"],
        "train beta negative": [*train, "--set", "model.beta=-1"],
        "train iwae k 0": [*train, "--set", "model.iwae_k=0"],
        "train max examples negative": [*train, "--set", "data.max_examples=-5"],
        "train channels 2": [*train, "--set", "data.channels=2"],
        "train empty value": [*train, "--set", "train.epochs="],
        "train unknown setting": [*train, "--set", "train.epoch=3"],
        "train ddpm timesteps 1": ["train", "ddpm", "--data", "digits", "--set", "model.timesteps=1",
                                   "--out", str(root / "new"), "--quiet"],
        "train gan critic steps 0": ["train", "gan", "--data", "ring8", "--set", "model.critic_steps=0",
                                     "--out", str(root / "new"), "--quiet"],
        "train npz of the wrong format": ["train", "vae", "--data", f"npz:{root / 'table.npz'}",
                                          "--out", str(root / "new"), "--quiet"],
        "train out through a file": ["train", "vae", "--data", "digits", "--epochs", "1",
                                     "--set", "train.max_steps_per_epoch=1", "--out", through_file, "--quiet"],
        "train config missing": [*train, "--config", str(root / "missing.yaml")],
        # sample
        "sample n 0": ["sample", run, "-n", "0"],
        "sample n negative": ["sample", run, "-n", "-4"],
        "sample steps 0": ["sample", run, "--sampler", "ddim", "--steps", "0"],
        "sample steps above T": ["sample", run, "--sampler", "ddim", "--steps", "500"],
        "sample eta negative": ["sample", run, "--eta", "-1"],
        "sample class on an unconditional model": ["sample", run, "--class", "3"],
        "sample output through a file": ["sample", run, "-n", "2", "--sampler", "ddim", "-o", through_file + ".png"],
        "sample output format": ["sample", run, "-n", "2", "--sampler", "ddim", "-o", str(root / "x.txt")],
        "sample missing run": ["sample", str(root / "nothing")],
        # eval
        "eval k 0": ["eval", run, "--k", "0"],
        "eval max examples negative": ["eval", run, "--max-examples", "-1"],
        "eval max examples 0": ["eval", run, "--max-examples", "0"],
        "eval num samples 0": ["eval", run, "--num-samples", "0"],
        "eval kid subset 0": ["eval", run, "--kid-subset-size", "0"],
        "eval unknown metric": ["eval", run, "--metrics", "fidd"],
        "eval json through a file": ["eval", run, "--metrics", "nll", "--max-examples", "2", "--quiet",
                                     "--json", through_file + ".json"],
        # restore
        "restore n 0": ["restore", run, "--task", "inpaint", "--input", str(root / "img.png"),
                        "--mask", str(root / "mask.png"), "-n", "0"],
        "restore resample 0": ["restore", run, "--task", "inpaint", "--input", str(root / "img.png"),
                               "--mask", str(root / "mask.png"), "--resample", "0"],
        "restore steps 0": ["restore", run, "--task", "inpaint", "--input", str(root / "img.png"),
                            "--mask", str(root / "mask.png"), "--steps", "0"],
        "restore missing input": ["restore", run, "--task", "inpaint", "--input", str(root / "none.png"),
                                  "--mask", str(root / "mask.png")],
        # compare, report, demo
        "compare no runs": ["compare", str(root / "nothing*")],
        "compare csv through a file": ["compare", run, "--csv", through_file + ".csv"],
        "report missing run": ["report", str(root / "nothing")],
        "demo out through a file": ["demo", "--out", through_file, "--quiet"],
    }


CASES = list(cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_bad_value_is_one_line_and_exit_2(place, case, capsys):
    argv = cases(place)[case]
    before = sorted(p.relative_to(place) for p in (place / "run").rglob("*"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects a flag's value before any command runs
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (case, code, err)
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, (case, err)
    assert sorted(p.relative_to(place) for p in (place / "run").rglob("*")) == before  # the run is untouched
