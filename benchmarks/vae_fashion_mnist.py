"""Benchmark: the conv VAE (latent 32) on Fashion-MNIST, two observation models.

* discretized logistic on the 8-bit data -> test NLL in bits/dim;
* Bernoulli on dynamically binarized data -> test NLL in nats (test split binarized once, fixed seed).

Both trained for a fixed number of epochs through ``dgm.train`` (bf16 autocast for the networks,
fp32 likelihoods), evaluated in fp32 with the IWAE bound (k=1000) on the first ``--n-test`` test
images and with the ELBO on the whole test split.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/vae_fashion_mnist.py --epochs 8 --n-test 1000 --out runs/bench
    python benchmarks/vae_fashion_mnist.py --throughput     # training examples/s alone, fp32 vs bf16

Writes ``OUT/results.json`` and prints a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.report import write_report
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

VARIANTS = {  # name: (likelihood, representation, headline unit)
    "logistic-8bit": ("logistic", "unit", "bits/dim"),
    "bernoulli-binarized": ("bernoulli", "binary-dynamic", "nats"),
}


def throughput(variant: str, precision: str, steps: int = 40, repeats: int = 3) -> float:
    """Median training examples/s over ``repeats`` runs of ``steps`` optimiser steps (after one
    warm-up run), through the same Trainer as the full benchmark, without checkpoints or samples."""
    from dgm.train import Trainer

    likelihood, representation, _ = VARIANTS[variant]
    data = dgm.data.load("fashion-mnist", "train", representation=representation)
    rates = []
    for i in range(repeats + 1):
        torch.manual_seed(0)
        model = dgm.create("vae", data.spec, network="conv", latent_dim=32, likelihood=likelihood)
        trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=128, max_steps_per_epoch=steps,
                                                   precision=precision, progress=False, device="cpu"))
        start = time.perf_counter()
        trainer.fit()
        if i:  # the first run warms up the kernels
            rates.append(steps * 128 / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=1000, help="test images for the IWAE k=1000 bound")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/bench-vae-fmnist")
    parser.add_argument("--throughput", action="store_true",
                        help="only measure training examples/s (fp32 and bf16), nothing else running")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.throughput:
        print("| decoder | fp32 ex/s | bf16 ex/s | ratio |\n|---|---|---|---|")
        for name in args.variants.split(","):
            fp32, bf16 = throughput(name, "fp32"), throughput(name, "bf16")
            print(f"| {VARIANTS[name][0]} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f} |", flush=True)
        return
    out = Path(args.out)
    results = []
    for name in args.variants.split(","):
        likelihood, representation, unit = VARIANTS[name]
        config = RunConfig("vae", {"network": "conv", "latent_dim": 32, "likelihood": likelihood},
                           DataConfig("fashion-mnist", representation=representation),
                           TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, schedule="cosine",
                                       precision=args.precision, progress=False, sample_every=args.epochs,
                                       max_steps_per_epoch=args.max_steps))
        start = time.perf_counter()
        model, run_dir = dgm.train(config, out / name)
        train_seconds = time.perf_counter() - start
        test = load_data(config, "test")
        start = time.perf_counter()
        iwae = dgm.evaluate(model, test.subset(args.n_test), ["nll"], k=args.k, progress=False)
        elbo = dgm.evaluate(model, test, ["elbo"], progress=False)
        eval_seconds = time.perf_counter() - start
        pick = {(r.metric, r.unit): r for r in iwae + elbo}
        row = {
            "variant": name, "likelihood": likelihood, "representation": representation,
            "epochs": args.epochs, "precision": args.precision,
            "params": sum(p.numel() for p in model.parameters()),
            "nll_iwae_nats": pick["nll", "nats"].value, "nll_iwae_bpd": pick["nll", "bits/dim"].value,
            "nll_iwae_stderr_nats": pick["nll", "nats"].details["stderr"],
            "neg_elbo_nats": pick["neg_elbo", "nats"].value, "neg_elbo_bpd": pick["neg_elbo", "bits/dim"].value,
            "n_test_iwae": args.n_test, "k": args.k, "train_seconds": train_seconds,
            "train_examples_per_s": args.epochs * min(60000 // 128, args.max_steps or 10**9) * 128 / train_seconds, "eval_seconds": eval_seconds,
            "headline_unit": unit,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        write_report(run_dir, model, test)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/vae_fashion_mnist.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("\n| decoder | data | epochs | test NLL, IWAE k=%d (n=%d) | -ELBO (n=10000) | train ex/s | train time |"
          % (args.k, args.n_test))
    print("|---|---|---|---|---|---|---|")
    for r in results:
        nll = (f"{r['nll_iwae_bpd']:.3f} bits/dim" if r["headline_unit"] == "bits/dim"
               else f"{r['nll_iwae_nats']:.2f} ± {r['nll_iwae_stderr_nats']:.2f} nats")
        elbo = f"{r['neg_elbo_bpd']:.3f} bits/dim" if r["headline_unit"] == "bits/dim" else f"{r['neg_elbo_nats']:.2f} nats"
        print(f"| {r['likelihood']} | {r['representation']} | {r['epochs']} | {nll} | {elbo} | "
              f"{r['train_examples_per_s']:.0f} | {r['train_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
