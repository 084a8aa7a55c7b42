"""Token sequences and point sets through the evaluator, the trainer's grids, the report and the
refusals of the families that cannot use them (issue 13).

Two toy families live here, registered under names starting with ``test-``: a categorical over the
256 bytes (uniform at initialisation: exactly 8 bits per token) and an isotropic Gaussian over the
points of a set (standard normal at initialisation: a closed form per point). Both take the mask of
the real tokens or points as ``log_prob(x, mask=...)``, as the evaluator passes it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from dgm.cli import main
from dgm.data import load
from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import decode_tokens, real_mask, sample_picture
from dgm.eval import evaluate
from dgm.models import MODELS, GenerativeModel, Loss, Progress, register

LINES = ["hello world", "the quick brown fox", "jumps over", "the lazy dog", "ünïcödé bytes", "a",
         "twelve bytes", "tokens and masks", "padding is not data", "eight bits"] * 3


@dataclass
class NoSettings:
    pass


class ByteCategorical(GenerativeModel):
    """Independent bytes from one learned categorical; a sequence's length uniform on 1..L."""

    name = "test-bytes"
    Config = NoSettings
    description = "toy: independent bytes"

    def __init__(self, config: NoSettings, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.logits = nn.Parameter(torch.zeros(spec.vocab_size))  # uniform at initialisation

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        log_p = self.logits.double().log_softmax(-1)[x.long()]  # (B, L), in float64: an exact 8 bits
        return (log_p * mask).sum(1)  # the real tokens only

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        return Loss(-self.log_prob(batch.x, batch.mask).sum() / batch.mask.sum())

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        L = self.spec.shape[0]
        probs = self.logits.softmax(-1).expand(n * L, -1)
        x = torch.multinomial(probs, 1, generator=generator).view(n, L)
        lengths = torch.randint(1, L + 1, (n, 1), generator=generator, device=x.device)
        return torch.where(torch.arange(L, device=x.device) < lengths, x.clamp(min=1), 0)  # padding 0


class PointGaussian(GenerativeModel):
    """The points of a set drawn independently from N(mu, sigma^2 I); standard normal at initialisation."""

    name = "test-point-gaussian"
    Config = NoSettings
    description = "toy: independent Gaussian points"

    def __init__(self, config: NoSettings, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.mu = nn.Parameter(torch.zeros(spec.shape[-1]))
        self.log_sigma = nn.Parameter(torch.zeros(spec.shape[-1]))

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        z = (x - self.mu) / self.log_sigma.exp()
        per_point = (-0.5 * z ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B, N)
        return (per_point * mask).sum(1)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        return Loss(-self.log_prob(batch.x, batch.mask).sum() / batch.mask.sum())

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        N, D = self.spec.shape
        x = self.mu + self.log_sigma.exp() * torch.randn(n, N, D, generator=generator, device=self.mu.device)
        lengths = torch.randint(1, N + 1, (n, 1, 1), generator=generator, device=x.device)
        return torch.where(torch.arange(N, device=x.device)[:, None] < lengths, x, 0.0)  # padding at the origin


@pytest.fixture(scope="module")
def toys():
    for cls in (ByteCategorical, PointGaussian):
        register(cls)
    yield
    for cls in (ByteCategorical, PointGaussian):
        MODELS.pop(cls.name)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def by_unit(results) -> dict[str, object]:
    return {r.unit: r for r in results}


# --- the evaluator ------------------------------------------------------------------------------------
def test_a_uniform_byte_model_gives_exactly_8_bits_per_token(toys, text_file):
    test = load(f"text:{text_file}", "test")
    model = ByteCategorical(NoSettings(), test.spec)
    results = by_unit(evaluate(model, test, ["nll"], progress=False))
    bits = results["bits/token"]
    assert bits.value == pytest.approx(8.0, abs=1e-12)
    assert bits.details["stderr"] == pytest.approx(0.0, abs=1e-12)
    real = int(test.lengths.sum())
    assert f"per scored token ({real} in {len(test)} sequences, padding left out)" in bits.qualifier
    assert bits.qualifier.startswith("exact")
    # per sequence: its real tokens times ln 256, not the padded length
    assert results["nats"].value == pytest.approx(test.lengths.double().mean().item() * math.log(256), rel=1e-9)
    assert "bits/dim" not in results


def test_bits_per_token_weight_sequences_by_their_real_tokens(toys, text_file):
    test = load(f"text:{text_file}", "test")
    model = ByteCategorical(NoSettings(), test.spec)
    with torch.no_grad():
        model.logits.normal_(generator=torch.Generator().manual_seed(0))
    log_p = model.logits.log_softmax(-1)
    batch = test.tensors()
    expected = -sum(log_p[batch.x[i, :n]].sum().item() for i, n in enumerate(test.lengths.tolist())) \
        / (int(test.lengths.sum()) * math.log(2))
    results = by_unit(evaluate(model, test, ["nll"], progress=False, batch_size=2))
    assert results["bits/token"].value == pytest.approx(expected, rel=1e-6)


def test_a_standard_normal_on_point_sets_gives_its_closed_form_per_point(toys):
    test = load("shapes2d", "test").subset(300)
    model = PointGaussian(NoSettings(), test.spec)
    results = by_unit(evaluate(model, test, ["nll"], progress=False))
    batch = test.tensors()
    real = batch.x[batch.mask].double()  # (points, 2): the padding left out
    per_point = (0.5 * (real ** 2).sum(-1) + math.log(2 * math.pi)).mean().item()  # -log N(x; 0, I), D = 2
    assert results["nats/point"].value == pytest.approx(per_point, rel=1e-6)
    assert results["bits/dim"].value == pytest.approx(per_point / (2 * math.log(2)), rel=1e-6)
    assert results["bits/point"].value == pytest.approx(per_point / math.log(2), rel=1e-6)
    assert "no dequantization term" in results["bits/dim"].qualifier
    assert f"({len(real)} in 300 sets, padding left out)" in results["nats/point"].qualifier


# --- pictures -----------------------------------------------------------------------------------------
def test_sampled_tokens_decode_up_to_the_first_padding_token():
    x = torch.tensor([[104, 105, 0, 120], [0, 0, 0, 0], [0xC3, 0xBC, 7, 65]])
    assert decode_tokens(x) == ["hi", "", "ü\ufffdA"]
    spec = DataSpec("t", (4,), "levels", 256, kind="tokens")
    assert real_mask(x, spec).tolist() == [[True, True, False, False], [False] * 4, [True] * 4]
    picture = sample_picture(x, spec)
    assert picture.width > 20 and picture.height > 20


def test_point_set_pictures_leave_the_padding_out():
    spec = DataSpec("p", (3, 2), "continuous", None, kind="points")
    x = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], [[0.5, 0.0], [1.0, 1.0], [float("nan"), 0.0]]])
    assert real_mask(x, spec).tolist() == [[True, False, False], [True, True, False]]
    picture = sample_picture(x, spec)
    assert picture.width > 50


# --- training, grids and the report through the CLI ---------------------------------------------------
def test_a_token_model_trains_and_reports_its_samples_as_text(toys, text_file, tmp_path, capsys):
    run_dir = tmp_path / "bytes"
    assert main(["train", "test-bytes", "--data", f"text:{text_file}", "--epochs", "1", "--out", str(run_dir),
                 "--quiet"]) == 0
    assert (run_dir / "samples" / "epoch_001.png").exists()  # the epoch-end grid: lines of text
    assert main(["eval", str(run_dir), "--metrics", "nll", "--quiet"]) == 0
    units = {r["unit"] for r in json.loads((run_dir / "eval.json").read_text())}
    assert {"nats", "bits/token"} <= units
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "bits/token" in page and "<pre> 1  " in page and "decoded as UTF-8" in page
    assert "Samples during training" in page
    # the cached figures keep the text
    assert main(["report", str(run_dir)]) == 0
    assert "<pre> 1  " in (run_dir / "report.html").read_text()


def test_a_point_set_model_trains_and_reports_a_scatter_per_set(toys, tmp_path, capsys):
    run_dir = tmp_path / "points"
    assert main(["train", "test-point-gaussian", "--data", "shapes2d", "--epochs", "1", "--out", str(run_dir),
                 "--set", "train.max_steps_per_epoch=3", "--quiet"]) == 0
    assert (run_dir / "samples" / "epoch_001.png").exists()
    assert main(["eval", str(run_dir), "--metrics", "nll", "--max-examples", "200", "--quiet"]) == 0
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "nats/point" in page and "one small scatter plot per set" in page


# --- refusals -----------------------------------------------------------------------------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("dgm: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("model, settings", [
    ("cgan", []), ("acgan", []), ("ddpm", ["--set", "model.conditional=true"]),
])
def test_models_that_read_every_label_refuse_partly_labelled_data(model, settings, tmp_path, capsys):
    args = ["train", model, "--data", "digits", "--set", "data.labelled=100", "--epochs", "1",
            "--set", "train.max_steps_per_epoch=1", "--out", str(tmp_path / model), "--quiet", *settings]
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "partly labelled" in line and "fully labelled data" in line and "semi-supervised" in line


def test_unconditional_models_train_on_partly_labelled_data(tmp_path, capsys):
    assert main(["train", "gan", "--data", "digits", "--set", "data.labelled=100", "--epochs", "1",
                 "--set", "train.max_steps_per_epoch=1", "--set", "train.sample_every=0",
                 "--out", str(tmp_path / "gan"), "--quiet"]) == 0


@pytest.mark.parametrize("model", ["vae", "gan", "ddpm", "infogan"])
@pytest.mark.parametrize("data", ["shapes2d", "text"])
def test_fixed_size_families_refuse_tokens_and_points(model, data, text_file, tmp_path, capsys):
    name = f"text:{text_file}" if data == "text" else data
    assert main(["train", model, "--data", name, "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert f"cannot train on {'tokens' if data == 'text' else 'points'}" in line and "padding" in line
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
