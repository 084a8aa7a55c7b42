"""Benchmark: a WaveNet on spoken digits: held-out bits per audio sample, beside simple baselines.

Data: ``spoken-digits`` (the words zero..nine spoken by espeak-ng in 8 voices x 4 speeds x 3 pitches,
8 kHz mu-law, clips of 4000 samples = 0.5 s; the test split holds 190 voice/speed/pitch combinations
never heard together in training, 770 training clips). The model is ``wavenet`` with its default
network (2 stacks of dilations 1..128: a receptive field of 512 samples, 64 ms) conditioned on the
word (``model.conditional=true``), trained on random windows of 1000 samples (``model.crop``) with
Adam (lr 2e-3, cosine after 50 warm-up steps, batch 16) for ``--epochs`` passes.

Every number is over all 190 held-out clips, in bits per audio sample:

* ``log p(x | word)``: the clip given its word (exact);
* ``log p(x)``: the marginal over a uniform word prior, logsumexp_y log p(x | y) - log 10 (exact; what
  ``dgm eval RUN --metrics nll`` reports in bits/sample);
* beside them a uniform model (8 bits), the order-0 histogram of the training codes and an order-1
  Markov chain p(x_t | x_{t-1}) of the training codes (both with add-one smoothing);
* over the whole clip, and over its spoken span only (from the first to the last sample whose code is
  not silence's, 128): the silence after a word is cheap for every model, so the span is the harder number;
* and the word read back from the audio by Bayes' rule, argmax_y log p(x | y) (test accuracy).

Ten samples (one per word, given the word, temperature 1) are written as a WAV file and their
spectrograms as a PNG (``--docs``, default docs/images: ``speech-wavenet-samples.{wav,png}``).

    python benchmarks/speech.py --epochs 16 --threads 1 --out runs/bench-speech-16   # 768 steps: 8.5 min training, 1.5 min scoring here
    python benchmarks/speech.py --out runs/bench-speech             # 4 epochs (192 steps): a point early on the curve
    python benchmarks/speech.py --epochs 1 --max-steps 2 --test 8 --docs /tmp   # smoke run

Writes ``OUT/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import dgm
from dgm.data.audio import SILENCE, samples_wav, spectrogram_picture
from dgm.run import DataConfig, RunConfig
from dgm.train import TrainConfig
from tables import markdown_table  # benchmarks/tables.py, beside this script

LN2 = math.log(2)


def spoken_span(x: np.ndarray) -> np.ndarray:
    """``(N, T)`` bool: from the first to the last sample of each clip whose code is not silence's."""
    loud = x != SILENCE
    first = loud.argmax(1)
    last = x.shape[1] - 1 - loud[:, ::-1].argmax(1)
    t = np.arange(x.shape[1])
    return (t >= first[:, None]) & (t <= last[:, None]) & loud.any(1)[:, None]


def baselines(train: np.ndarray, test: np.ndarray, span: np.ndarray) -> list[dict]:
    """Bits per sample of the uniform model, the order-0 histogram and the order-1 Markov chain of
    the training codes (add-one smoothing), over whole test clips and their spoken spans."""
    counts = np.bincount(train.ravel(), minlength=256) + 1.0
    order0 = -np.log2(counts / counts.sum())[test]  # (N, T)
    pairs = np.zeros((256, 256)) + 1.0  # (previous, next); the clip's first sample follows silence
    previous = np.concatenate([np.full((len(train), 1), SILENCE), train[:, :-1]], 1)
    np.add.at(pairs, (previous.ravel(), train.ravel()), 1)
    transition = -np.log2(pairs / pairs.sum(1, keepdims=True))
    test_previous = np.concatenate([np.full((len(test), 1), SILENCE), test[:, :-1]], 1)
    order1 = transition[test_previous, test]
    rows = [{"row": "uniform over 256 codes", "bits/sample": 8.0, "bits/sample (spoken span)": 8.0}]
    for name, bits in (("order-0 histogram of training codes", order0), ("order-1 Markov chain of training codes", order1)):
        rows.append({"row": name, "bits/sample": bits.mean(), "bits/sample (spoken span)": bits[span].mean()})
    return rows


def score(model: dgm.models.GenerativeModel, x: torch.Tensor, y: torch.Tensor, span: np.ndarray,
          batch: int) -> list[dict]:
    """log p(x | y) for every word y: the conditional and marginal bits, and the Bayes classifier."""
    K = model.num_classes
    per_class = []  # K x (N, T) nats
    with torch.inference_mode():
        for k in range(K):
            per_class.append(torch.cat([model.code_log_probs(xb, torch.full((len(xb),), k))
                                        for xb in x.split(batch)]).double())
    lp = torch.stack(per_class)  # (K, N, T)
    given = lp[y, torch.arange(len(y))]  # (N, T): the true word's conditionals
    clip = lp.sum(2)  # (K, N)
    marginal = clip.logsumexp(0) - math.log(K)  # (N,)
    T = x.shape[1]
    span_t = torch.from_numpy(span)
    # the marginal's share of each sample: its per-sample conditionals under the posterior over words
    posterior = (clip - clip.logsumexp(0)).exp()  # (K, N)
    accuracy = (clip.argmax(0) == y).double().mean().item()
    return [
        {"row": "wavenet, log p(x | word)", "bits/sample": -given.sum().item() / (given.numel() * LN2),
         "bits/sample (spoken span)": -given[span_t].sum().item() / (span_t.sum().item() * LN2)},
        {"row": "wavenet, log p(x) (marginal over words)", "bits/sample": -marginal.mean().item() / (T * LN2),
         "word accuracy by Bayes' rule": accuracy,
         "p(true word | x), mean": posterior[y, torch.arange(len(y))].mean().item()},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--test", type=int, default=None, help="score only the first N test clips (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--batch", type=int, default=16, help="clips per scoring pass")
    parser.add_argument("--out", default="runs/bench-speech")
    parser.add_argument("--docs", default="docs/images", help="where the sample WAV and spectrograms go")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"conditional": True}
    config = RunConfig("wavenet", settings, DataConfig("spoken-digits"),
                       TrainConfig(epochs=args.epochs, batch_size=16, lr=2e-3, schedule="cosine", warmup_steps=50,
                                   seed=0, progress=False, sample_every=0, device="cpu",
                                   max_steps_per_epoch=args.max_steps))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / "wavenet")
    train_seconds = time.perf_counter() - start
    model.eval()
    train, test = dgm.data.load("spoken-digits"), dgm.data.load("spoken-digits", "test")
    x, y = test.raw.long(), test.labels
    if args.test:
        x, y = x[:args.test], y[:args.test]
    span = spoken_span(x.numpy())
    start = time.perf_counter()
    rows = baselines(train.raw.numpy().astype(np.int64), x.numpy(), span) + score(model, x, y, span, args.batch)
    score_seconds = time.perf_counter() - start

    generator = torch.Generator().manual_seed(0)
    words = torch.arange(model.num_classes)
    samples = model.sample(len(words), condition=words, generator=generator)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "speech-wavenet-samples.wav").write_bytes(samples_wav(samples, model.spec, limit=len(samples)))
    spectrogram_picture(samples, model.spec, nrow=5).save(docs / "speech-wavenet-samples.png")
    spectrogram_picture(test.raw[torch.stack([torch.nonzero(test.labels == k)[0, 0] for k in words])], test.spec,
                        nrow=5).save(docs / "speech-test-clips.png")

    record = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "epochs": args.epochs, "steps": model_steps(run_dir), "train_seconds": round(train_seconds, 1),
              "score_seconds": round(score_seconds, 1), "receptive_field": model.receptive_field,
              "parameters": sum(p.numel() for p in model.parameters()), "test_clips": len(x),
              "spoken_share": float(span.mean()), "run": str(run_dir), "rows": rows}
    (out / "results.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}))
    print(markdown_table(rows))


def model_steps(run_dir: Path) -> int:
    return int(json.loads((run_dir / "trainer.json").read_text()).get("step", 0))


if __name__ == "__main__":
    main()
