"""Benchmark: the autoregressive models on Fashion-MNIST, exact test NLL and sampling speed.

* binarized (dynamic; the test split binarized once, fixed seed) -> test NLL in nats: NADE, MADE
  with 1 mask and with 32 masks, PixelCNN (beside the conv VAE's IWAE bound in docs/benchmarks.md);
* 8-bit levels -> test NLL in bits/dim: Gated PixelCNN and the image transformer (beside the
  published ~2.8-2.9 bits/dim of ../shared/REFERENCES.md), with the training curve;
* sampling speed of one model (the image transformer, trained with noise levels) by each of its
  samplers, sequential vs cached vs Langevin, same run, same batch; and KID[fmnist-net] of each
  sampler's images against the test split.

Every model is trained through ``dgm.train`` (the one trainer) and evaluated on the whole test split
with ``dgm.evaluate``'s exact ``nll`` metric.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/autoregressive_fashion_mnist.py --variants nade,made-1,made-32,pixelcnn-binary \\
        --epochs 5 --out runs/bench-ar
    python benchmarks/autoregressive_fashion_mnist.py --variants gated-pixelcnn,image-transformer \\
        --epochs 1 --max-steps 900 --out runs/bench-ar
    python benchmarks/autoregressive_fashion_mnist.py --sampling runs/bench-ar/image-transformer --n 8 --kid-samples 64 --few-kid-samples 8

On a GPU (``--device cuda``), the same script with the paper-sized settings (``--paper``: Gated
PixelCNN with 15 layers of 128 features, 50 epochs, bf16) is the run that reaches the published range.

Writes ``OUT/results.json`` and prints markdown tables for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

VARIANTS = {  # name: (model, settings, representation, headline unit)
    "nade": ("nade", {"hidden": 500}, "binary-dynamic", "nats"),
    "made-1": ("made", {"hidden": (500,)}, "binary-dynamic", "nats"),
    "made-32": ("made", {"hidden": (500,), "num_masks": 32}, "binary-dynamic", "nats"),
    "pixelcnn-binary": ("pixelcnn", {"width": 32, "layers": 5}, "binary-dynamic", "nats"),
    "gated-pixelcnn": ("gated-pixelcnn", {"width": 32, "layers": 6, "kernel_size": 3}, "unit", "bits/dim"),
    "image-transformer": ("image-transformer", {"width": 64, "depth": 2, "heads": 4, "noise_levels": 10},
                          "unit", "bits/dim"),
}
#: what fits a 2-core CPU above; the paper-sized networks (van den Oord et al. 2016b: 15 layers of 128
#: features on CIFAR-10), for a GPU with --paper
PAPER = {"gated-pixelcnn": {"width": 128, "layers": 15, "kernel_size": 5},
         "image-transformer": {"width": 256, "depth": 8, "heads": 8}}


def train_and_evaluate(name: str, args: argparse.Namespace, out: Path) -> dict:
    model_name, settings, representation, unit = VARIANTS[name]
    settings = {**settings, **(PAPER.get(name, {}) if args.paper else {})}
    config = RunConfig(model_name, settings, DataConfig("fashion-mnist", representation=representation),
                       TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine",
                                   warmup_steps=100, precision=args.precision, progress=False, device=args.device,
                                   sample_every=0, max_steps_per_epoch=args.max_steps, grad_clip=1.0))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / name)
    train_seconds = time.perf_counter() - start
    test = load_data(config, "test")
    start = time.perf_counter()
    results = dgm.evaluate(model, test, ["nll"], progress=False)
    eval_seconds = time.perf_counter() - start
    pick = {r.unit: r for r in results}
    steps = args.epochs * min(60000 // args.batch_size, args.max_steps or 10**9)
    return {"variant": name, "model": model_name, "settings": settings, "representation": representation,
            "epochs": args.epochs, "steps": steps, "batch_size": args.batch_size,
            "params": sum(p.numel() for p in model.parameters()),
            "nll_nats": pick["nats"].value, "nll_bpd": pick["bits/dim"].value,
            "stderr_nats": pick["nats"].details.get("stderr"),
            "train_seconds": train_seconds, "eval_seconds": eval_seconds, "headline_unit": unit,
            "curve": curve(run_dir / "metrics.csv", unit)}


def curve(path: Path, unit: str) -> list[tuple[int, float]]:
    """(step, training NLL) rows of metrics.csv, in the headline unit."""
    column = "bits_per_dim" if unit == "bits/dim" else "nll"
    with path.open() as f:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(f) if row.get(column)]


def sampling(run_dir: str, n: int, kid_samples: int, few_kid_samples: int) -> list[dict]:
    """Images/s of each sampler of one trained model, and KID[fmnist-net] of its samples."""
    from dgm.data.core import to_unit
    from dgm.eval.features import feature_extractor
    from dgm.eval.fidelity import kid

    model = dgm.load(run_dir)
    test = load_data(dgm.run.read_config(run_dir)[0], "test")
    features = feature_extractor("fmnist-net", model.spec)
    real, _ = features(to_unit(test.tensors().x, test.spec))
    rows = []
    for sampler in [s.name for s in model.samplers]:
        # the model's default sampler (the cached one) gets the larger sample; the others are timed on fewer
        count = kid_samples if sampler == model.default_sampler else few_kid_samples
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        first = model.sample(n, generator=generator, sampler=sampler)
        seconds = time.perf_counter() - start
        images = [first] + [model.sample(n, generator=generator, sampler=sampler) for _ in range(count // n - 1)]
        fake, _ = features(to_unit(torch.cat(images), model.spec))
        size = min(len(fake), 1000)
        mean, std = kid(fake, real, subsets=100, subset_size=size, seed=0)
        rows.append({"sampler": sampler, "batch": n, "seconds": seconds, "images_per_s": n / seconds,
                     "kid": mean, "kid_std": std, "kid_samples": len(fake)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per epoch (a time budget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", default="fp32", choices=["bf16", "fp32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper", action="store_true", help="paper-sized networks (for a GPU)")
    parser.add_argument("--out", default="runs/bench-ar")
    parser.add_argument("--sampling", metavar="RUN", help="only time the samplers of a trained run")
    parser.add_argument("--n", type=int, default=16, help="images per sampling batch")
    parser.add_argument("--kid-samples", type=int, default=512)
    parser.add_argument("--few-kid-samples", type=int, default=64, help="samples of the samplers other than the default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/autoregressive_fashion_mnist.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sampling:
        rows = sampling(args.sampling, args.n, args.kid_samples, args.few_kid_samples)
        (out / "sampling.json").write_text(json.dumps({"meta": meta, "run": args.sampling, "results": rows}, indent=2))
        print("\n| sampler | images/s (batch %d) | KID[fmnist-net] (samples) |\n|---|---|---|" % args.n)
        for r in rows:
            print(f"| {r['sampler']} | {r['images_per_s']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} ({r['kid_samples']}) |")
        return
    results = []
    for name in args.variants.split(","):
        row = train_and_evaluate(name, args, out)
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        (out / f"results-{name}.json").write_text(json.dumps({"meta": meta, "result": row}, indent=2))
    print("\n| model | data | steps (batch) | test NLL | train time | params |\n|---|---|---|---|---|---|")
    for r in results:
        nll = f"{r['nll_bpd']:.3f} bits/dim" if r["headline_unit"] == "bits/dim" else f"{r['nll_nats']:.2f} nats"
        print(f"| {r['variant']} | {r['representation']} | {r['steps']} ({r['batch_size']}) | {nll} | "
              f"{r['train_seconds'] / 60:.1f} min | {r['params'] / 1e6:.2f} M |")


if __name__ == "__main__":
    main()
