"""The spine is open: a family with two phases, its own sampler with its own option and a capability
the protocol does not list, and an app that uses that capability, are defined here, in a test file,
with no edit under src/; the CLI trains the family, samples with its option, runs the app, and the
report shows the app's figure."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dgm.apps import APPS, App, register_app
from dgm.apps.options import output_path
from dgm.cli import main
from dgm.data.core import Batch, DataSpec
from dgm.models import MODELS, GenerativeModel, Loss, Phase, Progress, Sampler, capabilities, capability, register
from dgm.settings import PositiveFloat


@dataclass
class ToyConfig:
    """A Gaussian with a learned mean image and one learned scale, fitted in two phases."""

    init_scale: PositiveFloat = 1.0  # the scale before training


@dataclass
class NoisyOptions:
    temperature: PositiveFloat | None = field(default=None, metadata={"help": "scale of the noise (default 1)"})


class ToyGaussian(GenerativeModel):
    name = "test-toy"
    Config = ToyConfig
    description = "a toy: mean image and scale trained in two phases"
    samplers = (Sampler("mean", "the mean image, no noise"), Sampler("noisy", "mean + scale * noise", NoisyOptions))

    def __init__(self, config: ToyConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.mu = nn.Parameter(torch.zeros(spec.shape))
        self.log_scale = nn.Parameter(torch.full((), float(np.log(config.init_scale))))

    @classmethod
    def default_representation(cls, config: ToyConfig, spec: DataSpec) -> str:
        return "unit"

    def phases(self) -> list[Phase]:  # two players: the mean, then the scale
        return [Phase("mean", [self.mu], lr=0.05), Phase("scale", [self.log_scale], lr=0.05)]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        sigma = self.log_scale.exp()
        nll = (0.5 * ((batch.x - self.mu) / sigma) ** 2 + self.log_scale).flatten(1).sum(1).mean()
        return Loss(nll, {"scale": sigma.detach()})

    @property
    def default_sampler(self) -> str:
        return "noisy"

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None) -> Tensor:
        x = self.mu.expand(n, *self.spec.shape)
        if (sampler or self.default_sampler) == "mean":
            return x.clone()
        noise = torch.randn((n, *self.spec.shape), generator=generator)
        return x + (temperature or 1.0) * self.log_scale.exp() * noise

    @capability
    def shrink(self, x: Tensor, strength: float) -> Tensor:
        """Move images towards the mean image: the capability the toy app needs."""
        return (1 - strength) * x + strength * self.mu


class Shrink(App):
    name = "test-shrink"
    description = "move test images towards the model's mean image"
    requires = frozenset({"shrink"})

    def add_arguments(self, parser, model_class) -> None:  # noqa: ANN001
        parser.add_argument("--strength", type=float, default=0.5)
        parser.add_argument("-o", "--output", default="shrunk.npz")

    def run(self, model, args) -> str:  # noqa: ANN001
        from dgm import run

        config, _ = run.read_config(args.run)
        x = run.load_data(config, "test").tensors(4).x
        out = output_path(args.output)
        np.savez(out, x=model.shrink(x, args.strength).detach().numpy())
        return f"shrunk 4 test images -> {out}"

    def report_figures(self, model, examples, *, labels=None, generator=None):  # noqa: ANN001, ANN201
        with torch.inference_mode():
            rows = torch.cat([examples[:8], model.shrink(examples[:8], 0.5)])
        return [("Shrunk towards the mean", rows, 8, "top: test images; bottom: halfway to the model's mean image")]


@pytest.fixture(scope="module")
def toy():
    register(ToyGaussian)
    register_app(Shrink)
    yield
    MODELS.pop(ToyGaussian.name)
    APPS.pop(Shrink.name)


def test_a_family_and_an_app_defined_outside_src_work_through_the_cli_and_the_report(toy, tmp_path, capsys):
    assert capabilities(ToyGaussian) >= {"sample", "shrink"}
    run_dir = tmp_path / "toy"
    assert main(["train", "test-toy", "--data", "digits", "--epochs", "3", "--out", str(run_dir), "--quiet"]) == 0
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert {"mean/loss", "scale/loss"} <= set(rows[0])  # both phases trained and logged

    # the sampler's own option, from the CLI: --help lists it, and it scales the noise
    with pytest.raises(SystemExit):
        main(["sample", str(run_dir), "--help"])
    help_text = capsys.readouterr().out
    assert "--temperature" in help_text and "--sampler {mean,noisy}" in help_text and "--steps" not in help_text
    draws = {}
    for t in ("0.5", "2"):
        assert main(["sample", str(run_dir), "-n", "256", "--temperature", t, "-o", str(tmp_path / f"t{t}.npz")]) == 0
        draws[t] = np.load(tmp_path / f"t{t}.npz")["x"]
    spread = draws["2"].std(0).mean() / draws["0.5"].std(0).mean()
    assert 3.6 < spread < 4.4, spread  # the same noise scaled 4 times over
    assert main(["sample", str(run_dir), "-n", "2", "--sampler", "mean", "-o", str(tmp_path / "m.npz")]) == 0
    mean = np.load(tmp_path / "m.npz")["x"]
    assert np.array_equal(mean[0], mean[1])
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--sampler", "mean", "--temperature", "2"]) == 2  # not an option of 'mean'
    assert "option of the noisy sampler" in capsys.readouterr().err

    # the app, from the CLI
    assert main(["test-shrink", str(run_dir), "--strength", "1", "-o", str(tmp_path / "s.npz")]) == 0
    shrunk = np.load(tmp_path / "s.npz")["x"]
    assert np.allclose(shrunk, mean[:1].repeat(4, 0), atol=1e-6)  # strength 1: the mean image itself

    # ... and in the report
    html = (run_dir / "report.html").read_text()
    assert "<h2>Shrunk towards the mean</h2>" in html and "halfway to the model&#x27;s mean image" in html
    assert "Apps: dgm test-shrink." in html  # the report lists what the run's model can be used for
    assert json.loads((run_dir / "config.json").read_text())["model"] == "test-toy"


def test_an_app_refuses_a_model_without_its_capability(toy, tmp_path, capsys):
    run_dir = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--epochs", "1", "--out", str(run_dir), "--quiet",
                 "--set", "train.max_steps_per_epoch=2", "--set", "model.hidden=16"]) == 0
    capsys.readouterr()
    assert main(["test-shrink", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dgm: error: model 'vae' cannot run 'test-shrink': it needs shrink (test-toy can)", err
