"""Audio: mu-law companded 8-bit samples, spoken words synthesised with espeak-ng, and WAV files.

Data of kind ``"audio"`` holds mono clips of a fixed number of samples ``(T,)``, each sample one of
256 mu-law codes (``levels``: the codes themselves, the natural representation), at the sample rate
in ``spec.extras["sample_rate"]``. Clips shorter than ``T`` are padded with silence (the code of 0).

mu-law companding (ITU-T G.711, the continuous form; WaveNet, van den Oord et al. 2016,
arXiv:1609.03499, section 2.2), with ``mu = 255``, for a sample ``x`` in [-1, 1]::

    F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)             in [-1, 1]
    code = round((F(x) + 1) / 2 * 255)                     in {0, ..., 255}
    F^-1(y) = sign(y) ((1 + mu)^|y| - 1) / mu,  y = 2 code / 255 - 1

so the quantisation steps are fine near silence and coarse in loud passages.

* ``spoken-digits``: the words "zero" .. "nine" (the label) spoken by Debian's espeak-ng
  (``apt-get install espeak-ng``) in :data:`VOICES` at every speed of :data:`SPEEDS` (words per
  minute) and pitch of :data:`PITCHES`: 960 clips. espeak-ng writes 22050 Hz mono 16-bit; each word is
  resampled to 8000 Hz (``scipy.signal.resample_poly``), cut from its first to its last sample above
  1% of full scale with 10 ms of margin, and placed at the start of a clip of ``size`` samples
  (default :data:`CLIP_SAMPLES`, half a second); a longer word is cut (their number is in
  ``extras["cut"]``). The test split holds the voice, speed and pitch *combinations* with ``(v + s
  + p) mod 5 == 0`` (indices into the three lists): 190 clips (770 train), each voice, speed and
  pitch also heard in training, never together. The synthesised words are cached in ``$DGM_DATA/spoken-digits`` (else
  ``~/.cache/dgm/spoken-digits``), keyed by the settings and espeak-ng's version.
* ``wav:PATH``: a WAV file or a folder of them (sorted by path): mono PCM (8, 16, 24 or 32 bit) or
  float, at 8000 or 16000 Hz (:data:`SAMPLE_RATES`), all at one rate. Each file is cut into clips of
  ``size`` samples (default half a second), the last one padded with silence; the split is the 90/10
  holdout of :mod:`dgm.data.files`. Audio of another rate or with several channels is refused in one
  line that says how to convert it (dgm does not resample your recordings behind your back).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgm.data.core import DataSpec
from dgm.data.files import holdout
from dgm.data.sources import Part, Request, search_dirs
from dgm.errors import DgmError

MU = 255  # the mu of mu-law: 256 codes
LEVELS = MU + 1
SAMPLE_RATE = 8000  # Hz, of spoken-digits
SAMPLE_RATES = (8000, 16000)  # the rates wav:PATH reads
CLIP_SECONDS = 0.5  # default clip length of both sources
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)
#: the code of silence (F(0) = 0 sits half-way: 127.5 rounds to 128)
SILENCE = 128

# --- mu-law -------------------------------------------------------------------------------------------


def mu_law_encode(x: Tensor, mu: int = MU) -> Tensor:
    """Codes ``{0, ..., mu}`` (int64) of samples ``x`` in [-1, 1] (clamped), by the companding law
    of the module docstring, each rounded to the nearest of ``mu + 1`` equally spaced levels of F."""
    x = x.double().clamp(-1, 1)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((f + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def mu_law_decode(code: Tensor, mu: int = MU) -> Tensor:
    """Samples in [-1, 1] (float32) of mu-law codes: the inverse law at the level's centre."""
    y = 2 * code.double() / mu - 1
    return (torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu).float()


def waveform(samples: Tensor, spec: DataSpec) -> Tensor:
    """Audio examples ``(N, T)`` in ``spec``'s representation as samples in [-1, 1] ``(N, T)`` float32."""
    code = samples.detach().cpu()
    if spec.representation != "levels":  # unit or signed: the code scaled to [0, 1] or [-1, 1]
        unit = (code.float() + 1) / 2 if spec.representation == "signed" else code.float()
        code = torch.round(unit.clamp(0, 1) * (LEVELS - 1))
    return mu_law_decode(code.long().clamp(0, LEVELS - 1))


# --- WAV files ----------------------------------------------------------------------------------------
def wav_bytes(samples: Tensor, rate: int, gap: float = 0.0) -> bytes:
    """A mono 16-bit PCM WAV file of ``samples`` in [-1, 1]: one clip ``(T,)``, or clips ``(N, T)``
    one after another with ``gap`` seconds of silence between them."""
    clips = samples.detach().float().cpu().reshape(-1, samples.shape[-1]).clamp(-1, 1)
    silence = torch.zeros(len(clips), int(round(gap * rate)))
    pcm = torch.cat([clips, silence], 1).flatten()
    if gap and len(clips):
        pcm = pcm[:pcm.numel() - silence.shape[1]]  # no gap after the last clip
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(rate))
        f.writeframes((pcm * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes())
    return out.getvalue()


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """The sample rate and the samples ``(T, channels)`` float32 in [-1, 1] of a WAV file.

    Raises:
        DgmError: the file cannot be read as WAV (not RIFF/WAVE, compressed, truncated).
    """
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError, EOFError) as e:  # scipy raises ValueError for what is not PCM/float WAV
        raise DgmError(f"cannot read {path} as a WAV file ({e}): dgm reads PCM or float WAV files") from e
    if data.ndim == 1:
        data = data[:, None]
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        x = (data.astype(np.float32) - 128) / 128
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        x = np.nan_to_num(data.astype(np.float32)).clip(-1, 1)
    return int(rate), x


def check_format(path: Path, rate: int, channels: int, allowed: tuple[int, ...] = SAMPLE_RATES) -> None:
    """Refuse audio with several channels or a rate not in ``allowed``, in one line with the fix."""
    if channels != 1:
        raise DgmError(f"{path} has {channels} channels; dgm reads mono audio: mix it down first, e.g. "
                       f"sox {path.name} -c 1 mono.wav (or ffmpeg -i {path.name} -ac 1 mono.wav)")
    if rate not in allowed:
        rates = " or ".join(f"{r} Hz" for r in allowed)
        raise DgmError(f"{path} is sampled at {rate} Hz; dgm reads {rates}: resample it first, e.g. "
                       f"sox {path.name} -r {allowed[0]} out.wav (or ffmpeg -i {path.name} -ar {allowed[0]} out.wav)")


def clips(signal: np.ndarray, size: int) -> np.ndarray:
    """A signal ``(T,)`` in [-1, 1] cut into mu-law clips ``(ceil(T / size), size)`` uint8, the last
    one padded with silence."""
    n = max(1, -(-len(signal) // size))
    padded = np.zeros(n * size, np.float32)
    padded[:len(signal)] = signal
    return mu_law_encode(torch.from_numpy(padded)).numpy().astype(np.uint8).reshape(n, size)


def _clip_size(req: Request, rate: int) -> int:
    if req.channels is not None:
        raise DgmError("data.channels applies to images; audio is mono: drop it")
    size = req.size if req.size is not None else int(rate * CLIP_SECONDS)
    if size < 2:
        raise DgmError(f"data.size is the number of samples per audio clip and must be >= 2, got {size}")
    return size


def load_wav(req: Request) -> Part:
    """``wav:PATH``: clips of ``size`` samples of a WAV file or of every ``.wav`` under a folder."""
    root = Path(req.path).expanduser()
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
        if not paths:
            raise DgmError(f"no .wav files found under {root}: wav:PATH reads a WAV file or a folder of them")
    elif root.is_file():
        paths = [root]
    else:
        raise DgmError(f"cannot read audio from {root}: no such file or folder")
    rates, pieces = {}, []
    for path in paths:
        rate, x = _read_checked(path.resolve(), *_stamp(path))
        rates[path] = rate
        if len(set(rates.values())) > 1:
            first = paths[0]
            raise DgmError(f"{path} is sampled at {rate} Hz and {first} at {rates[first]} Hz: the files of one "
                           f"dataset share one rate; resample them to one, e.g. sox IN.wav -r {rates[first]} OUT.wav")
        pieces.append(x)
    rate = rates[paths[0]]
    size = _clip_size(req, rate)
    x = np.concatenate([clips(p, size) for p in pieces])
    if len(x) < 2:
        raise DgmError(f"{root} holds {len(x)} clip of {size} samples; a train/test holdout needs at least 2: "
                       f"give more audio or lower data.size")
    return Part(x[holdout(len(x), req.split)], None, levels=LEVELS, kind="audio",
                extras={"sample_rate": rate, "mu": MU, "files": len(paths)})


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _read_checked(path: Path, mtime_ns: int, size: int) -> tuple[int, np.ndarray]:
    """The mono samples of a WAV file at an accepted rate (the time and size in the key catch edits)."""
    rate, x = read_wav(path)
    check_format(path, rate, x.shape[1])
    return rate, x[:, 0]


# --- spoken-digits ------------------------------------------------------------------------------------
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: espeak-ng voices: languages (accents) and voice variants (+f: female, +m: male)
VOICES = ["en", "en-us", "en-gb-scotland", "en-029", "en+f2", "en+f4", "en-us+m3", "en-us+f3"]
SPEEDS = [175, 200, 225, 250]  # words per minute (espeak-ng -s)
PITCHES = [35, 50, 65]  # espeak-ng -p, 0..99
ESPEAK_RATE = 22050  # Hz, what espeak-ng writes
MARGIN_SECONDS = 0.01  # kept before and after the word's first and last audible sample
AUDIBLE = 0.01  # a sample above this fraction of full scale is part of the word
TEST_EVERY = 5  # (voice + speed + pitch) mod 5 == 0: a held-out combination


def load_spoken_digits(req: Request) -> Part:
    """``spoken-digits``: the ``req.split`` split of the synthesised corpus (module docstring)."""
    size = _clip_size(req, SAMPLE_RATE)
    words, labels, combos = _corpus(tuple(WORDS), tuple(VOICES), tuple(SPEEDS), tuple(PITCHES), SAMPLE_RATE)
    test = combos.sum(1) % TEST_EVERY == 0
    keep = np.flatnonzero(test if req.split == "test" else ~test)
    x = np.concatenate([clips(words[i][:size], size) for i in keep])
    cut = sum(len(words[i]) > size for i in keep)
    return Part(x, labels[keep], levels=LEVELS, class_names=list(WORDS), kind="audio",
                extras={"sample_rate": SAMPLE_RATE, "mu": MU, "cut": int(cut)})


@functools.lru_cache(maxsize=2)
def _corpus(words: tuple[str, ...], voices: tuple[str, ...], speeds: tuple[int, ...], pitches: tuple[int, ...],
            rate: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Every (voice, speed, pitch, word) spoken, resampled to ``rate`` and trimmed: the signals,
    their labels ``(N,)`` and their (voice, speed, pitch) indices ``(N, 3)``; read from the cache
    file when it holds these settings, synthesised (and cached) otherwise."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DgmError("spoken-digits is synthesised by espeak-ng, which is not installed: apt-get install "
                       "espeak-ng (Debian/Ubuntu), or train on recordings of your own with --data wav:PATH")
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    settings = {"words": words, "voices": voices, "speeds": speeds, "pitches": pitches, "rate": rate,
                "espeak": version, "margin": MARGIN_SECONDS, "audible": AUDIBLE}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache = search_dirs("spoken-digits")[0] / f"corpus-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as f:
                return _signals(f["signal"], f["offsets"]), f["labels"], f["combos"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is made again
    grid = [(v, s, p, w) for v in range(len(voices)) for s in range(len(speeds)) for p in range(len(pitches))
            for w in range(len(words))]
    signals = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "word.wav"
        for v, s, p, w in grid:
            command = [espeak, "-v", voices[v], "-s", str(speeds[s]), "-p", str(pitches[p]), "-w", str(out), words[w]]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 or not out.is_file():
                raise DgmError(f"espeak-ng failed on {' '.join(command[1:-3])} ({done.stderr.strip() or done.returncode}): "
                               f"check that the voice exists (espeak-ng --voices=en)")
            signals.append(_trimmed(*read_wav(out), rate))
    labels = np.array([w for *_, w in grid], np.int64)
    combos = np.array([(v, s, p) for v, s, p, _ in grid], np.int64)
    offsets = np.cumsum([0] + [len(s) for s in signals])
    pcm = (np.concatenate(signals) * 32767).round().astype(np.int16)  # as cached, so both paths agree
    _write_cache(cache, signal=pcm, offsets=offsets, labels=labels, combos=combos)
    return _signals(pcm, offsets), labels, combos


def _signals(pcm: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """The words of the 16-bit corpus ``pcm``, word ``i`` at ``offsets[i]:offsets[i + 1]``, in [-1, 1]."""
    return np.split(pcm.astype(np.float32) / 32767, offsets[1:-1])


def _trimmed(source_rate: int, x: np.ndarray, rate: int) -> np.ndarray:
    """The first channel of ``x`` resampled from ``source_rate`` to ``rate`` (polyphase, scipy's
    Kaiser window), from its first to its last audible sample with a margin each side."""
    from scipy.signal import resample_poly

    g = math.gcd(rate, source_rate)
    y = resample_poly(x[:, 0].astype(np.float64), rate // g, source_rate // g).astype(np.float32).clip(-1, 1)
    loud = np.flatnonzero(np.abs(y) > AUDIBLE)
    if not len(loud):
        return y[:1] * 0
    margin = int(MARGIN_SECONDS * rate)
    return y[max(0, loud[0] - margin):loud[-1] + margin + 1]


def _write_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write the corpus all-or-none (a temporary file renamed); a folder we cannot write is no error:
    the corpus is synthesised again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez_compressed(f, **arrays)
        os.replace(f.name, path)
    except OSError:
        pass


# --- pictures -----------------------------------------------------------------------------------------
#: spectrogram window and hop (samples at 8 kHz: 16 ms and 4 ms) and the range of power shown (dB)
SPECTROGRAM_WINDOW, SPECTROGRAM_HOP, SPECTROGRAM_RANGE_DB = 128, 32, 80.0


def spectrograms(samples: Tensor, spec: DataSpec) -> Tensor:
    """The spectrogram of each clip ``(N, T)`` as an RGB picture ``(N, 3, F, frames)`` in [0, 1]:
    the power of a Hann-windowed short-time Fourier transform (scipy.signal.spectrogram) in dB,
    the top :data:`SPECTROGRAM_RANGE_DB` dB below full scale mapped to the magma colours, low
    frequencies at the bottom."""
    from matplotlib import colormaps
    from scipy.signal import spectrogram

    x = waveform(samples, spec).double().numpy()
    rate = spec.extras.get("sample_rate", SAMPLE_RATE)
    window = min(SPECTROGRAM_WINDOW, x.shape[-1])
    _, _, power = spectrogram(x, fs=rate, window="hann", nperseg=window,
                              noverlap=window - max(1, min(SPECTROGRAM_HOP, window // 2)), mode="psd",
                              scaling="spectrum")  # (N, F, frames): the power of each bin, full scale sine ~ 0.5
    db = 10 * np.log10(power + 1e-20)
    unit = ((db + SPECTROGRAM_RANGE_DB) / SPECTROGRAM_RANGE_DB).clip(0, 1)[:, ::-1]  # 0 dB (full scale) at 1
    rgb = colormaps["magma"](unit)[..., :3]  # (N, F, frames, 3)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))).float()


def spectrogram_picture(samples: Tensor, spec: DataSpec, nrow: int | None = None) -> Image.Image:
    """The spectrograms of audio clips tiled in a grid (:func:`spectrograms`), each shown twice as large."""
    from dgm.io.images import grid

    return grid(spectrograms(samples, spec), nrow=nrow or min(8, len(samples)), pad=2, scale=2)


#: silence between the clips of a WAV file of several samples, seconds
WAV_GAP = 0.25


def samples_wav(samples: Tensor, spec: DataSpec, limit: int = 8) -> bytes:
    """The first ``limit`` audio clips ``(N, T)`` as one WAV file, one after another with
    :data:`WAV_GAP` seconds of silence between them."""
    return wav_bytes(waveform(samples[:limit], spec), spec.extras.get("sample_rate", SAMPLE_RATE), WAV_GAP)
