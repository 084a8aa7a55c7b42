"""Benchmark: the VQ-VAE (EMA codebook, transformer prior) on Fashion-MNIST, 8-bit logistic decoder.

Trains the two stages through ``dgm.train`` (stage "vqvae": encoder, decoder and the EMA codebook;
stage "prior": a causal transformer over the 7x7 code grid of the frozen encoder), then evaluates on
the test split: reconstruction MSE and PSNR on the [0, 1] scale, the codebook perplexity and the
codes used, the rate -log2 p(codes) in bits per image, the VQ-VAE bound -log p(x|z_q) - log p(k) in
bits/dim (a bound on the NLL: the likelihood is discrete), and the FID of samples against the test
split in the features of the Fashion-MNIST classifier (``FID[fmnist-net]``).

The defaults are sized for about 10-15 minutes on 2 CPU cores in all: a small model (width 32,
K = 128 codes of 16 dimensions, a 2-block transformer of width 64), 1 epoch of stage "vqvae" (468
steps of 128 at about 0.3-0.5 s) and 2 of stage "prior" (936 steps at about 0.15-0.25 s), then the
metrics on the 10000 test images and FID on 5000 samples (about a minute). More epochs
(``--vqvae-epochs 5 --prior-epochs 10``) give better numbers at proportionally more time.

    python benchmarks/vqvae_fashion_mnist.py --out runs/bench-vqvae-fmnist
    python benchmarks/vqvae_fashion_mnist.py --max-steps 3 --fid-samples 200 --n-test 200   # smoke run

Writes ``OUT/results.json`` and prints a markdown row for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

MODEL = {"num_codes": 128, "code_dim": 16, "width": 32, "num_res_blocks": 1, "likelihood": "logistic",
         "prior_width": 64, "prior_depth": 2, "prior_heads": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vqvae-epochs", type=int, default=1, help="epochs of stage 'vqvae'")
    parser.add_argument("--prior-epochs", type=int, default=2, help="epochs of stage 'prior'")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fid-samples", type=int, default=5000, help="samples drawn for FID[fmnist-net]")
    parser.add_argument("--n-test", type=int, default=10000, help="test images for the rate, distortion and bound")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-vqvae-fmnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = RunConfig("vqvae", {**MODEL, "vqvae_epochs": args.vqvae_epochs},
                       DataConfig("fashion-mnist"),
                       TrainConfig(epochs=args.vqvae_epochs + args.prior_epochs, batch_size=args.batch_size,
                                   lr=args.lr, schedule="cosine", progress=False, sample_every=0,
                                   max_steps_per_epoch=args.max_steps, device="cpu"))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / "vqvae")
    train_seconds = time.perf_counter() - start
    test = load_data(config, "test")
    start = time.perf_counter()
    results = dgm.evaluate(model, test.subset(min(args.n_test, len(test))), ["rate_distortion", "nll"],
                           progress=False)
    results += dgm.evaluate(model, test, ["fid"], feature_net="fmnist-net", num_samples=args.fid_samples,
                            progress=False)
    eval_seconds = time.perf_counter() - start
    pick = {(r.metric, r.unit): r for r in results}
    row = {
        "model": MODEL, "vqvae_epochs": args.vqvae_epochs, "prior_epochs": args.prior_epochs,
        "params": sum(p.numel() for p in model.parameters()),
        "distortion_mse": pick["distortion", "MSE"].value, "psnr_db": pick["psnr", "dB"].value,
        "code_perplexity": pick["code_perplexity", "codes"].value, "codes_used": pick["codes_used", "fraction"].value,
        "rate_bits_per_image": pick["rate", "bits/image"].value, "bound_bits_per_dim": pick["nll", "bits/dim"].value,
        "fid_fmnist_net": pick["fid", ""].value, "fid_qualifier": pick["fid", ""].qualifier,
        "n_test": min(args.n_test, len(test)), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
    }
    print(json.dumps(row), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/vqvae_fashion_mnist.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": [row]}, indent=2))
    K = MODEL["num_codes"]
    print("\n| model | epochs (vqvae + prior) | recon MSE | PSNR | codebook perplexity | codes used | rate | "
          "bound | FID[fmnist-net] | train time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| VQ-VAE K={K}, 7x7 codes | {args.vqvae_epochs} + {args.prior_epochs} | {row['distortion_mse']:.4f} | "
          f"{row['psnr_db']:.1f} dB | {row['code_perplexity']:.1f} of {K} | {row['codes_used'] * K:.0f} | "
          f"{row['rate_bits_per_image']:.1f} bits/image | {row['bound_bits_per_dim']:.3f} bits/dim | "
          f"{row['fid_fmnist_net']:.1f} ({args.fid_samples} samples) | {train_seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
