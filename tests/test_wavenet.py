"""WaveNet and audio data: mu-law, the receptive field and causality by autograd, exact incremental
generation and crops, a pmf that sums to one, WAV input and its refusals, spoken-digits, the CLI."""
from __future__ import annotations

import io
import math
import shutil
import wave

import numpy as np
import pytest
import torch

from dgm.data import audio
from dgm.data.core import Batch, Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, create

SPEC = DataSpec("tones", (48,), "levels", levels=256, num_classes=3, kind="audio", extras={"sample_rate": 8000})
SMALL = {"residual_channels": 6, "gate_channels": 5, "skip_channels": 7, "dilation_depth": 3, "stacks": 2}


def tones(n: int = 24, length: int = 48) -> Dataset:
    """Sines of 3 pitches (the labels) with random phases, as mu-law clips."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    t = torch.arange(length)
    x = audio.mu_law_encode(0.6 * torch.sin(2 * math.pi * (y[:, None] + 1) * t / 16 + phase)).to(torch.uint8)
    spec = DataSpec("tones", (length,), "levels", levels=256, num_classes=3, kind="audio", extras={"sample_rate": 8000})
    return Dataset(x, y, spec, train=True)


def wav_file(path, rate: int = 8000, channels: int = 1, seconds: float = 0.3) -> None:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.repeat(x[:, None], channels, 1).tobytes())


# --- mu-law ---------------------------------------------------------------------------------------------
def test_mu_law_round_trip():
    codes = torch.arange(256)
    assert torch.equal(audio.mu_law_encode(audio.mu_law_decode(codes)), codes)  # decode -> encode: identity
    x = torch.linspace(-1, 1, 100_001, dtype=torch.float64)
    back = audio.mu_law_decode(audio.mu_law_encode(x)).double()
    companded = lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / math.log(256)  # noqa: E731
    # encode -> decode: within half a quantisation step of the companded value (steps are 2/255 wide)
    assert (companded(back) - companded(x)).abs().max() <= 1 / 255 + 1e-6
    assert audio.mu_law_encode(torch.zeros(1)).item() == audio.SILENCE
    assert (back - x).abs().max() < 0.032  # the loudest step, at full scale: (256^(1/255) - 1) 256/255 / 2 ~ 0.011 * 2.9
    assert (back - x)[x.abs() < 0.01].abs().max() < 3e-4  # fine steps near silence


# --- the network: receptive field, causality, incremental generation ---------------------------------------
def test_receptive_field_and_causality_by_autograd():
    torch.manual_seed(0)
    model = create("wavenet", SPEC, **SMALL).double()
    R = model.receptive_field
    assert R == 2 + 2 * (1 + 2 + 4) == 16
    x = torch.randint(256, (1, 48))
    seen = {}

    def keep(module, inputs, output):  # noqa: ANN001
        output.retain_grad()
        seen["embedding"] = output

    model.network.embedding.register_forward_hook(keep)
    logits = model.network(model.history(x))  # (1, 256, 48): position t predicts x_t
    for t in (0, 5, 20, 47):
        model.zero_grad()
        seen["embedding"].grad = None
        logits[0, :, t].sum().backward(retain_graph=True)
        grad = seen["embedding"].grad[0].abs().sum(1)  # (R + 47,): history position j holds x_{j - R}
        reached = set((torch.nonzero(grad).flatten() - R).tolist())
        assert reached == set(range(t - R, t)), t  # exactly the R codes before x_t (the start symbols < 0)


def test_incremental_generation_gives_the_full_pass_logits():
    torch.manual_seed(1)
    model = create("wavenet", SPEC, **SMALL, conditional=True, condition_dim=4).double()
    x, y = torch.randint(256, (3, 48)), torch.tensor([0, 2, 1])
    full = model.network(model.history(x), model.condition(y))  # (3, 256, 48)
    logits, queues = model.network.start(model.before.expand(3, -1), model.condition(y))
    steps = [logits] + [model.network.step(x[:, t], queues) for t in range(47)]
    torch.testing.assert_close(torch.stack(steps, -1), full, rtol=0, atol=1e-12)


def test_a_crop_scores_exactly_the_whole_clips_conditionals():
    torch.manual_seed(2)
    model = create("wavenet", SPEC, **SMALL, crop=10).double()
    x = torch.randint(256, (4, 48))
    per_sample = -model.code_log_probs(x)  # (4, 48) from whole clips
    loss = model.loss(Batch(x), "model", Progress(generator=torch.Generator().manual_seed(5))).loss
    start = torch.randint(48 - 10 + 1, (4,), generator=torch.Generator().manual_seed(5))
    expected = torch.stack([per_sample[i, s:s + 10] for i, s in enumerate(start.tolist())]).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


def test_log_prob_is_a_pmf_over_every_clip():
    """Every one of the 16^3 clips of three samples of 16 levels: exp(log p) sums to one, conditional or not."""
    spec = DataSpec("triples", (3,), "levels", levels=16, num_classes=2, kind="audio", extras={"sample_rate": 8000})
    grid = torch.cartesian_prod(*[torch.arange(16)] * 3)  # (4096, 3)
    for conditional in (False, True):
        torch.manual_seed(3)
        model = create("wavenet", spec, residual_channels=3, gate_channels=3, skip_channels=3, dilation_depth=2,
                       stacks=1, conditional=conditional, condition_dim=2).eval()
        with torch.no_grad():
            total = model.log_prob(grid).double().logsumexp(0)
        assert abs(total.item()) < 1e-4, conditional


def test_training_lowers_the_loss_and_samples_are_codes():
    data = tones()
    torch.manual_seed(0)
    model = create("wavenet", data.spec, **SMALL, conditional=True, condition_dim=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    batch = data.tensors()
    losses = []
    for _ in range(10):
        out = model.loss(batch, "model", Progress())
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    x = model.sample(4, condition=torch.tensor([0, 1, 2, 0]), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 48) and x.dtype == torch.long and 0 <= x.min() and x.max() < 256
    with pytest.raises(DgmError, match="classes 0..2"):
        model.sample(2, condition=torch.tensor(5))


def test_wavenet_refuses_other_data_in_one_line():
    from conftest import image_dataset

    with pytest.raises(DgmError, match="models audio.*spoken-digits"):
        create("wavenet", image_dataset(n=8).spec)
    with pytest.raises(DgmError, match="model.stacks must be >= 1"):
        create("wavenet", SPEC, stacks=0)


# --- audio data -------------------------------------------------------------------------------------------
def test_wav_folder_is_cut_into_clips(tmp_path):
    from dgm import data

    for i in range(3):
        wav_file(tmp_path / f"{i}.wav", seconds=0.3)
    train = data.load(f"wav:{tmp_path}", size=400)
    test = data.load(f"wav:{tmp_path}", "test", size=400)
    assert train.spec.kind == "audio" and train.spec.shape == (400,) and train.spec.representation == "levels"
    assert train.spec.extras["sample_rate"] == 8000
    assert len(train) + len(test) == 3 * 6  # 2400 samples a file: 6 clips of 400
    x = audio.waveform(train.raw[:1], train.spec)
    assert x.abs().max() == pytest.approx(0.5, abs=0.02)
    picture = audio.spectrogram_picture(train.raw[:4], train.spec)
    assert picture.size[1] >= 2 * (audio.SPECTROGRAM_WINDOW // 2 + 1)  # every frequency bin, twice as large
    wav = audio.samples_wav(train.raw[:2], train.spec)
    with wave.open(io.BytesIO(wav)) as f:
        assert (f.getnchannels(), f.getframerate(), f.getnframes()) == (1, 8000, 2 * 400 + 2000)


@pytest.mark.parametrize("rate, channels, fragments", [
    (44100, 1, ["44100 Hz", "8000 Hz or 16000 Hz", "sox"]),
    (8000, 2, ["2 channels", "mono", "-c 1"]),
])
def test_wrong_rate_or_channels_is_one_line_and_exit_2(tmp_path, capsys, rate, channels, fragments):
    from dgm import data
    from dgm.cli import main

    wav_file(tmp_path / "bad.wav", rate=rate, channels=channels)
    with pytest.raises(DgmError) as e:
        data.load(f"wav:{tmp_path / 'bad.wav'}")
    assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments)
    assert main(["train", "wavenet", "--data", f"wav:{tmp_path / 'bad.wav'}", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dgm: error:") and "\n" not in err and "Traceback" not in err
    assert all(f in err for f in fragments), err


def test_not_a_wav_file_is_one_line(tmp_path):
    from dgm import data

    (tmp_path / "x.wav").write_bytes(b"not audio at all")
    with pytest.raises(DgmError, match="cannot read .* as a WAV file"):
        data.load(f"wav:{tmp_path}")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_spoken_digits_are_synthesised_once_and_split_by_combination(tmp_path, monkeypatch):
    from dgm import data

    monkeypatch.setenv("DGM_DATA", str(tmp_path))
    monkeypatch.setattr(audio, "WORDS", ["zero", "one"])
    monkeypatch.setattr(audio, "VOICES", ["en", "en+f3"])
    monkeypatch.setattr(audio, "SPEEDS", [200, 250])
    monkeypatch.setattr(audio, "PITCHES", [50])
    audio._corpus.cache_clear()
    train, test = data.load("spoken-digits"), data.load("spoken-digits", "test")
    assert train.spec.kind == "audio" and train.spec.shape == (audio.CLIP_SAMPLES,)
    assert (len(train), len(test)) == (6, 2)  # combinations (v + s + p) mod 5 == 0: (0, 0, 0) only
    assert train.spec.class_names == ["zero", "one"] and sorted(test.labels.tolist()) == [0, 1]
    spoken = (train.raw != audio.SILENCE).float().mean(1)
    assert (spoken > 0.2).all()  # a word, not silence
    assert len(list((tmp_path / "spoken-digits").glob("corpus-*.npz"))) == 1
    audio._corpus.cache_clear()
    run = audio.subprocess.run

    def version_only(command, **options):  # noqa: ANN001, ANN003
        assert "--version" in command, "synthesised again instead of reading the cache"
        return run(command, **options)

    monkeypatch.setattr(audio.subprocess, "run", version_only)
    assert torch.equal(data.load("spoken-digits").raw, train.raw)
    with pytest.raises(DgmError, match="channels"):
        data.load("spoken-digits", channels=1)
    audio._corpus.cache_clear()


def test_cli_trains_samples_wav_and_reports_audio(tmp_path, capsys):
    from dgm.cli import main

    folder = tmp_path / "wavs"
    folder.mkdir()
    for i in range(2):
        wav_file(folder / f"{i}.wav", seconds=0.2)
    out = tmp_path / "run"
    settings = ["--set", "data.size=100", "--set", "model.dilation_depth=2", "--set", "model.stacks=1",
                "--set", "model.residual_channels=4", "--set", "model.gate_channels=4",
                "--set", "model.skip_channels=4", "--set", "train.num_samples=4", "--set", "train.batch_size=8"]
    assert main(["train", "wavenet", "--data", f"wav:{folder}", "--epochs", "1", "--out", str(out), "--quiet",
                 *settings]) == 0
    assert (out / "samples" / "epoch_001.wav").exists() and (out / "samples" / "epoch_001.png").exists()
    html = (out / "report.html").read_text()
    assert "data:audio/wav;base64," in html and "<h2>Test clips</h2>" in html and "receptive field 5 samples" in html
    assert main(["sample", str(out), "-n", "3", "-o", str(tmp_path / "s.wav"), "--temperature", "0.9"]) == 0
    with wave.open(str(tmp_path / "s.wav")) as f:
        assert f.getnframes() == 3 * 100 + 2 * 2000
    assert main(["eval", str(out), "--metrics", "nll", "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    import json

    bits = [r for r in json.loads((tmp_path / "e.json").read_text()) if r["unit"] == "bits/sample"][0]["value"]
    assert 0 < bits < 9  # bits per audio sample, near the uniform model's 8 after one tiny epoch
