"""Benchmark: two compression models on Fashion-MNIST, at small scale.

1. Convolutional DRAW (Gregor et al. 2016, arXiv:1604.08772), 8-bit logistic likelihood: the
   conceptual compression curve. For k = 1..T the reconstruction keeps the posterior means of the
   first k steps' latents and decodes the rest from the learned priors' means; its rate is
   sum_{t<=k} KL_t (bits-back coding under the learned priors), its distortion the MSE per pixel on
   the [0, 1] scale, over the first ``--n-test`` test images.
2. DPLC (Tschannen et al. 2018, arXiv:1805.11057) against the plain autoencoder (``adversarial=false``:
   the same encoder, quantiser and decoder trained on distortion alone) at the rates ``--rates``
   (``code_dim:levels``, rate = code_dim log2 levels bits per image): MSE of reconstructions, and the
   FID in the features of the Fashion-MNIST classifier (``FID[fmnist-net]``) of the reconstructions of
   the test images and of samples (the decoder at zero rate), each against the same test images.

Every model trains through ``dgm.train`` for ``--draw-steps`` / ``--dplc-steps`` optimiser rounds of
batch 64 (one thread): minutes, not the papers' days, so the numbers compare the methods at equal,
tiny budgets and say nothing of their converged quality.
A DPLC round is ``critic_steps`` critic steps and one autoencoder step.

    python benchmarks/compression_models.py --out runs/bench-compression   # ~9 min, 1 thread of a loaded 2-core CPU
    python benchmarks/compression_models.py --draw-steps 20 --dplc-steps 20 --n-test 200 --out /tmp/cm  # smoke

Writes ``OUT/results.json`` and prints markdown tables for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.data.core import to_unit
from dgm.eval.features import FrechetReference, feature_extractor
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

DRAW = {"steps": 6, "latent_channels": 2, "hidden": 16, "width": 16, "likelihood": "logistic"}
DPLC = {"width": 16, "critic_width": 16, "critic_steps": 2}


def train(name: str, model: dict, steps: int, out: Path, lr: float) -> tuple[dgm.models.GenerativeModel, float]:
    """Train ``name`` for ``steps`` rounds of batch 64 (one epoch cut short), returning it and the seconds."""
    config = RunConfig(name, model, DataConfig("fashion-mnist"),
                       TrainConfig(epochs=1, batch_size=64, lr=lr, progress=False, sample_every=0,
                                   max_steps_per_epoch=steps, device="cpu"))
    start = time.perf_counter()
    trained, _ = dgm.train(config, out)
    return trained.eval(), time.perf_counter() - start


def batched(fn, x: torch.Tensor, size: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw-steps", type=int, default=300, help="optimiser steps of conv DRAW")
    parser.add_argument("--dplc-steps", type=int, default=200, help="rounds of each DPLC and autoencoder run")
    parser.add_argument("--rates", default="8:4", help="code_dim:levels of each DPLC rate, comma-separated")
    parser.add_argument("--n-test", type=int, default=1000, help="test images for MSE, rates and FID")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-compression")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows: dict = {"draw": [], "dplc": []}

    # --- conv DRAW: the conceptual compression curve ------------------------------------------------
    if args.draw_steps > 0:  # 0: the DPLC comparison alone
        draw, seconds = train("conv-draw", DRAW, args.draw_steps, out / "conv-draw", 1e-3)
        test = load_data(RunConfig("conv-draw", DRAW, DataConfig("fashion-mnist")), "test")
        x = test.subset(min(args.n_test, len(test))).tensors().x
        target = to_unit(x, test.spec)
        rates = batched(draw.compression_rates, x).mean(0)  # (T,) bits
        for k in range(1, DRAW["steps"] + 1):
            recon = batched(lambda b: draw.conceptual_reconstructions(b, k), x)
            mse = (to_unit(recon, test.spec) - target).pow(2).mean().item()
            rows["draw"].append({"keep": k, "rate_bits": rates[k - 1].item(), "mse": mse})
        rows["draw_train_seconds"] = seconds
        print(json.dumps(rows["draw"]), flush=True)

    # --- DPLC vs the plain autoencoder ----------------------------------------------------------------
    fid = None
    for rate in args.rates.split(","):
        code_dim, levels = (int(v) for v in rate.split(":"))
        for adversarial in (True, False):
            name = f"{'dplc' if adversarial else 'autoencoder'}-m{code_dim}-L{levels}"
            model, seconds = train("dplc", {**DPLC, "code_dim": code_dim, "levels": levels,
                                            "adversarial": adversarial}, args.dplc_steps, out / name, 3e-4)
            data = load_data(RunConfig("dplc", {}, DataConfig("fashion-mnist")), "test")
            x = data.subset(min(args.n_test, len(data))).tensors().x
            if fid is None:  # FID against the test images' features, computed once
                fid = FrechetReference(feature_extractor("fmnist-net", data.spec), to_unit(x, data.spec))
            recon = to_unit(batched(model.reconstruct, x), data.spec)
            samples = to_unit(model.sample(len(x), generator=torch.Generator().manual_seed(0)), data.spec)
            rows["dplc"].append({"model": name, "adversarial": adversarial, "rate_bits": model.rate_bits,
                                 "mse": (recon - to_unit(x, data.spec)).pow(2).mean().item(),
                                 "fid_reconstructions": fid(recon),
                                 "fid_samples": fid(samples), "train_seconds": seconds})
            print(json.dumps(rows["dplc"][-1]), flush=True)

    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "draw": DRAW, "dplc": DPLC, "command": "python benchmarks/compression_models.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    if rows["draw"]:
        print(f"\nconv DRAW, T={DRAW['steps']}, {args.draw_steps} steps ({rows['draw_train_seconds'] / 60:.1f} min)")
        print("| steps kept k | rate (bits/image) | MSE |\n|---|---|---|")
        for r in rows["draw"]:
            print(f"| {r['keep']} | {r['rate_bits']:.1f} | {r['mse']:.4f} |")
    print(f"\nDPLC vs autoencoder, {args.dplc_steps} rounds each, {args.n_test} test images")
    print("| model | rate (bits/image) | MSE | FID[fmnist-net] reconstructions | FID[fmnist-net] samples |")
    print("|---|---|---|---|---|")
    for r in rows["dplc"]:
        print(f"| {r['model']} | {r['rate_bits']:.0f} | {r['mse']:.4f} | {r['fid_reconstructions']:.1f} | "
              f"{r['fid_samples']:.1f} |")


if __name__ == "__main__":
    main()
