"""README.md is executed: every command it shows runs, in order, from an empty folder, with
``DGM_TINY=1`` (tiny epochs, steps and examples), so a documented path cannot drift from the code.

The Quickstart's two commands (a fresh virtual environment each) are what ``.ci/run`` executes;
here we check that CI runs them as the README writes them.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dgm.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[tuple[str, str]]:
    """``(heading, code)`` of every fenced block in ``language``, in order."""
    out, heading = [], ""
    for part in re.split(r"(^```\w*\n.*?^```$)", README, flags=re.S | re.M):
        if part.startswith("```"):
            lang, code = part.split("\n", 1)
            if lang[3:] == language:
                out.append((heading, code.rsplit("```", 1)[0]))
        else:
            headings = re.findall(r"^## (.+)$", part, flags=re.M)
            heading = headings[-1] if headings else heading
    return out


def commands(code: str) -> list[str]:
    """Shell lines with continuations joined and comments dropped."""
    lines = code.replace("\\\n", " ").splitlines()
    return [line for line in lines if shlex.split(line, comments=True)]


def test_ci_runs_the_quickstart_as_written():
    (_, quickstart), *_ = blocks("bash")
    ci = [shlex.join(shlex.split(line, comments=True)) for line in commands((ROOT / ".ci" / "run").read_text())]
    for line in commands(quickstart):
        command = shlex.join(shlex.split(line, comments=True))
        assert any(c.startswith(command) for c in ci), command


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists() and not os.environ.get("DGM_DATA"),
                    reason="the README's examples train on Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGM_TINY", "1")
    shell = [c for heading, code in blocks("bash") if heading != "Quickstart" for c in commands(code)]
    assert len(shell) >= 20
    for line in shell:
        argv = shlex.split(line, comments=True)
        if argv[0] == "dgm":
            code = main(argv[1:] + (["--quiet"] if argv[1] in ("train", "eval", "demo", "sample", "restore") else []))
            assert code == 0, (line, capsys.readouterr().err[-2000:])
        elif argv[0] == "torchrun":  # the venv's, whether or not its bin/ is on PATH
            subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:], "--quiet"], check=True,
                           cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
        else:
            subprocess.run(["bash", "-c", line], check=True, cwd=tmp_path)
    for heading, code in blocks("python"):
        exec(compile(code, f"README.md ({heading})", "exec"), {})
    for made in ["runs/vae/report.html", "grid.png", "sneakers.png", "ddim.png", "ddpm.png", "guided.png",
                 "inpainted.png", "upscaled.png", "threes.png", "completed.png", "cached.png", "langevin.png", "filled.png",
                 "glow.png", "sets.png", "runs/checkerboard/report.html", "boots.png", "classes.png",
                 "runs/m2/labels.json", "runs/ppca/report.html", "vq.png",
                 "runs/ladder/report.html", "runs/tc/report.html", "runs/idvae/report.html",
                 "lines.txt", "runs/lstm/report.html",
                 "board.csv", "board.png", "demo/report.html",
                 "runs/api-vae/report.html", "runs/sl-gan/report.html", "runs/ddc-hm/report.html",
                 "runs/left-sprites/report.html", "runs/voxels/report.html",
                 "probe.png", "probe.json", "runs/conv-draw/report.html", "runs/dplc/report.html", "board.html",
                 "batch.dgm", "batch-0000.png", "batch-0099.png", "rd.png", "top.dgm",
                 "runs/vae-ddp/report.html"]:
        assert (tmp_path / made).exists(), made
