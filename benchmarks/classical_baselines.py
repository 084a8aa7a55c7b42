"""Benchmark: the classical rows of the leaderboard — PPCA, factor analysis and a Gaussian mixture —
beside a VAE, by exact test log-likelihood on the 8x8 digits and on Fashion-MNIST.

Every model trains through ``dgm train`` (``dgm.run.train``): the classical ones are fitted in one
call (PPCA in closed form, factor analysis and the mixture by EM) on one uniform dequantization of
the training split; the VAE (discretized logistic likelihood) by gradient steps. ``dgm eval
--metrics nll`` then gives the test NLL in bits/dim of the 8-bit data: exact for the classical
models (a density over the dequantized data, which bounds the discrete NLL from above), an IWAE
bound for the VAE. Prints markdown rows for docs/benchmarks.md.

    python benchmarks/classical_baselines.py --data digits                    # ~1 min
    python benchmarks/classical_baselines.py --data fashion-mnist --vae-epochs 10   # ~15 min
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402

from dgm import run  # noqa: E402
from dgm.eval import evaluate  # noqa: E402

#: (row label, model, model settings): the classical models at sizes a user would try first (the
#: larger number of factors: half the 8x8 digits' 64 dimensions, 64 of Fashion-MNIST's 784)
def classical(data: str) -> list[tuple[str, str, dict]]:
    big = 32 if data == "digits" else 64
    return [(f"PPCA, {q} factors", "ppca", {"latent_dim": q}) for q in (16, big)] + \
        [(f"factor analysis, {q} factors", "fa", {"latent_dim": q}) for q in (16, big)] + \
        [("Gaussian mixture, 10 full covariances", "gmm", {"components": 10})]


def bench(data: str, label: str, model: str, settings: dict, out: Path, *, epochs: int, k: int,
          max_examples: int | None) -> str:
    config = run.RunConfig(model, data=run.DataConfig(data))
    for key, value in settings.items():
        config.set(f"model.{key}", value)
    config.train.epochs = epochs
    config.train.progress = False
    config.train.sample_every = 0
    start = time.perf_counter()
    trained, out = run.train(config, out)
    seconds = time.perf_counter() - start
    test = run.load_data(config, "test")
    if max_examples:
        test = test.subset(max_examples)
    [nll] = [r for r in evaluate(trained, test, ["nll"], k=k, progress=False) if r.unit == "bits/dim"]
    params = sum(p.numel() for p in trained.parameters())
    return (f"| {label} | `{model}` {settings} | {params:,} | {seconds / 60:.1f} min | "
            f"**{nll.value:.3f}** {nll.unit} | {nll.qualifier} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--out", default="/tmp/dgm-classical")
    parser.add_argument("--vae-epochs", type=int, default=50)
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the VAE's IWAE bound")
    parser.add_argument("--max-examples", type=int, help="test examples (default: the whole test split)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out) / args.data
    print(f"| model | settings | params | fit / train time | test NLL | how |  <- {args.data}, "
          f"{torch.get_num_threads()} threads")
    print("|---|---|---|---|---|---|")
    rows = classical(args.data) + [("VAE, MLP 512-256, latent 16, discretized logistic", "vae", {"likelihood": "logistic"})]
    for label, model, settings in rows:
        epochs = args.vae_epochs if model == "vae" else 1
        out = root / f"{model}-{'-'.join(str(v) for v in settings.values())}"
        print(bench(args.data, label, model, settings, out, epochs=epochs, k=args.k,
                    max_examples=args.max_examples), flush=True)


if __name__ == "__main__":
    main()
