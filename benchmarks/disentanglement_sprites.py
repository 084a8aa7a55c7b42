"""Benchmark: disentanglement on the sprites (known factors shape, scale, rotation, x, y) — MIG, SAP
and DCI of the VAE, the beta-VAE, the beta-TC-VAE and the identifiable double VAE, several seeds each.

Every model is the same MLP encoder/decoder with a 10-dimensional code (Locatello et al. 2019 use 10
on dSprites), trained ``--epochs`` passes over the 10,000 training sprites with the same optimiser
and seed; the metrics are ``dgm eval``'s (``dgm.eval.disentanglement``), on the codes (posterior
means) of the 2,000 test sprites, with the predictors of SAP and DCI fitted on training codes. Prints
one markdown row per model: the mean and the spread (standard deviation over seeds) of each number,
and the training minutes.

    python benchmarks/disentanglement_sprites.py                        # 4 models x 3 seeds, ~40 min on 2 cores
    python benchmarks/disentanglement_sprites.py --models vae --seeds 0 --epochs 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402

import dgm  # noqa: E402
from dgm import run  # noqa: E402

#: each benchmarked model: its registry name and the settings that make it what it is
MODELS = {
    "vae": ("vae", {}),
    "beta-vae": ("vae", {"model.beta": "4"}),  # Higgins et al. 2017 use beta = 4 on dSprites
    "beta-tc-vae": ("beta-tc-vae", {}),
    "idvae": ("idvae", {}),
}
METRICS = ["mig", "sap", "dci"]


def train_and_score(name: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """The disentanglement numbers of model ``name`` trained with ``seed``, and its training minutes."""
    family, settings = MODELS[name]
    config = run.RunConfig(family, data=run.DataConfig("sprites"))
    config.train.epochs = args.epochs
    config.train.seed = seed
    config.train.progress = False
    config.train.sample_every = 0
    config.train.precision = args.precision
    config.set("model.latent_dim", str(args.latent_dim))
    for key, value in {**settings, **dict(args.set)}.items():
        config.set(key, value)
    start = time.perf_counter()
    model, out = run.train(config, Path(args.out) / f"{name}-{seed}")
    minutes = (time.perf_counter() - start) / 60
    test, train = run.load_data(config, "test"), run.load_data(config, "train")
    results = dgm.evaluate(model, test, METRICS, train=train, seed=seed, progress=False)
    return {r.metric: r.value for r in results}, minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="passes over the 10k training sprites")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a setting of every run, e.g. --set model.network conv")
    parser.add_argument("--out", default="/tmp/dgm-disentanglement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names: list[str] = []
    print(f"sprites, {args.epochs} epochs, latent {args.latent_dim}, {args.precision}, "
          f"{torch.get_num_threads()} threads, seeds {args.seeds}: mean ± standard deviation over seeds")
    for model in args.models:
        scores: dict[str, list[float]] = {}
        minutes = []
        for seed in args.seeds:
            numbers, took = train_and_score(model, seed, args)
            minutes.append(took)
            for metric, value in numbers.items():
                scores.setdefault(metric, []).append(value)
            print(f"  {model} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items())
                  + f" ({took:.1f} min)", file=sys.stderr, flush=True)
        if not names:
            names = list(scores)
            print(f"| model | {' | '.join(names)} | train min |")
            print("|---|" + "---|" * (len(names) + 1))
        cells = [f"{statistics.mean(scores[n]):.3f} ± {statistics.stdev(scores[n]) if len(scores[n]) > 1 else 0:.3f}"
                 for n in names]
        print(f"| {model} | {' | '.join(cells)} | {statistics.mean(minutes):.1f} |", flush=True)


if __name__ == "__main__":
    main()
