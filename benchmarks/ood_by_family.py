"""Benchmark: likelihood-based out-of-distribution tests for every family with a likelihood.

Nalisnick et al. 2019 ("Do Deep Generative Models Know What They Don't Know?", arXiv:1810.09136)
found that flows, VAEs and PixelCNNs trained on one image set can give another a *higher*
likelihood than their own test set. Here each family is trained on the same data (the 8x8 digits at
their 17 levels by default, where every family trains in minutes on a CPU; or binarized
Fashion-MNIST for the VAEs) and scored by :func:`dgm.apps.ood.ood_tests`, the code of
``dgm ood``: the bits/dim of the test split and of each out-of-distribution set (another dataset
resized to the run's shape, uniform noise, the inverted test images), and the AUROC of the
likelihood test (-log p(x)) and of the typicality test (|-log p(x) - H|, H the mean NLL of as many
training examples). Every model is trained with Adam (cosine schedule, seed 0) for the same epochs.

    python benchmarks/ood_by_family.py --out runs/bench-ood-digits                    # ~15 min here
    python benchmarks/ood_by_family.py --data fashion-mnist --models vae iaf-vae --epochs 5 \\
        --against digits,noise,inverted --out runs/bench-ood-fmnist                   # ~8 min
    python benchmarks/ood_by_family.py --epochs 1 --max-steps 2 --max-examples 20 --k 2   # smoke run

Writes ``OUT/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.apps.ood import ood_set, ood_tests
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

VAE = {"latent_dim": 16, "hidden": (256, 128)}
IAF = {"iaf_steps": 2, "iaf_hidden": (128, 128), "context_dim": 16}
#: per dataset: row -> (registry name, representation, settings)
MODELS = {
    "digits": {
        "vae": ("vae", "unit", {**VAE, "likelihood": "categorical"}),
        "iaf-vae": ("iaf-vae", "unit", {**VAE, **IAF, "likelihood": "categorical"}),
        "pixelcnn": ("pixelcnn", "unit", {"width": 32, "layers": 4, "likelihood": "categorical"}),
        "realnvp": ("realnvp", "dequantized", {"scales": 2, "width": 32, "blocks": 1}),
        "glow": ("glow", "dequantized", {"levels": 2, "steps": 4, "width": 64}),
        "ddpm": ("ddpm", "signed", {"network": "mlp", "hidden": (256, 256, 256), "bound_timesteps": 100}),
    },
    "fashion-mnist": {
        "vae": ("vae", "binary-dynamic", {"latent_dim": 32, "hidden": (512, 256)}),
        "iaf-vae": ("iaf-vae", "binary-dynamic", {"latent_dim": 32, "hidden": (512, 256), "iaf_steps": 2,
                                                  "iaf_hidden": (256, 256), "context_dim": 32}),
    },
}
AGAINST = {"digits": "fashion-mnist,sprites,noise,inverted", "fashion-mnist": "digits,noise,inverted"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", choices=MODELS)
    parser.add_argument("--models", nargs="+", default=None, help="rows (default: every one of --data)")
    parser.add_argument("--against", default=None, help="comma-separated OOD sets (default: by --data)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=1000, help="test images (and of each OOD set)")
    parser.add_argument("--k", type=int, default=100, help="importance samples of the VAEs' IWAE bounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-ood")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.models or list(MODELS[args.data])
    unknown = [r for r in rows if r not in MODELS[args.data]]
    if unknown:
        parser.error(f"no row {unknown[0]!r} for {args.data}: choose from {', '.join(MODELS[args.data])}")
    names = (args.against or AGAINST[args.data]).split(",")
    out, results = Path(args.out), []
    for row in rows:
        name, representation, settings = MODELS[args.data][row]
        config = RunConfig(name, settings, DataConfig(args.data, representation=representation),
                           TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, schedule="cosine",
                                       seed=0, progress=False, sample_every=0, device="cpu",
                                       max_steps_per_epoch=args.max_steps))
        start = time.perf_counter()
        model, _ = dgm.train(config, out / row)
        train_seconds = time.perf_counter() - start
        test = load_data(config, "test")
        test = test.subset(min(args.max_examples, len(test)))
        sets = {n: ood_set(n, test, config, seed=0) for n in names}
        tests, what = ood_tests(model, test, load_data(config, "train"), sets, k=args.k, seed=0)
        results.append({"model": row, "representation": representation, "settings": settings, "estimate": what,
                        "params": sum(p.numel() for p in model.parameters()), "n_test": len(test),
                        "tests": [vars(t) for t in tests], "train_seconds": train_seconds,
                        "eval_seconds": time.perf_counter() - start - train_seconds})
        print(json.dumps(results[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{args.data} (in distribution), {args.epochs} epochs each, n={results[0]['n_test']} per side; "
          f"AUROC likelihood / typicality (1: separated, 0.5: chance, < 0.5: the OOD set looks *more* likely)\n")
    print("| model | log p(x) by | bits/dim test | " + " | ".join(f"{n}: bits/dim, AUROC lik. / typ." for n in names)
          + " | train |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    for r in results:
        cells = [f"{t['bits_out']:.3f}, {t['auroc_likelihood']:.3f} / {t['auroc_typicality']:.3f}" for t in r["tests"]]
        print(f"| {r['model']} | {r['estimate']} | {r['tests'][0]['bits_in']:.3f} | " + " | ".join(cells)
              + f" | {r['train_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
