"""Benchmark: the plain VAE beside the VAE with an IAF posterior and the VAE with a PixelCNN decoder,
on dynamically binarized Fashion-MNIST, at the same budget.

The lectures' fix for the VAE's limits, "autoregressive networks in the encoder and decoder": the
IAF posterior (Kingma et al. 2016) makes q(z|x) more flexible, which tightens the bound where the
Gaussian posterior is the gap; the PixelCNN decoder (PixelVAE, Gulrajani et al. 2017) makes p(x|z)
model the pixels' dependences, which the factorised decoder cannot, at the risk that the decoder
ignores z (posterior collapse). All three share the encoder (an MLP 512-256), the latent size, the
Bernoulli likelihood, the optimiser (Adam 1e-3, cosine, batch 128, seed 0), the KL warm-up and the
epochs. Each is scored by ``dgm.evaluate``: test NLL by the IWAE bound (k importance samples), the
one-sample negative ELBO, the KL term and the active units (Burda et al. 2016: Var_x E[z|x] > 0.01)
on the first ``--max-examples`` test images; then each model's NLL minus the VAE's, paired image
by image.

    python benchmarks/vae_posteriors_decoders.py --out runs/bench-posteriors-decoders     # ~25 min here
    python benchmarks/vae_posteriors_decoders.py --data digits --epochs 1 --max-steps 2 --max-examples 16 --k 4  # smoke run

Writes ``OUT/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

SHARED = {"latent_dim": 32, "hidden": (512, 256), "likelihood": "bernoulli"}
MODELS = {  # row: (registry name, settings besides SHARED)
    "vae": ("vae", {}),
    "iaf-vae": ("iaf-vae", {"iaf_steps": 2, "iaf_hidden": (256, 256), "context_dim": 32}),
    "pixel-vae": ("pixel-vae", {"pixel_width": 32, "pixel_layers": 4}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="a binarizable image dataset (digits for smoke runs)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1000, help="KL warm-up steps of every model")
    parser.add_argument("--max-examples", type=int, default=1000, help="test images for the bounds and diagnostics")
    parser.add_argument("--k", type=int, default=100, help="importance samples of the IWAE bound")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-posteriors-decoders")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results, per_image = [], {}
    for row in args.models:
        name, settings = MODELS[row]
        config = RunConfig(name, {**SHARED, **settings, "kl_warmup_steps": args.warmup},
                           DataConfig(args.data, representation="binary-dynamic"),
                           TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, schedule="cosine", seed=0,
                                       progress=False, sample_every=0, device="cpu", max_steps_per_epoch=args.max_steps))
        start = time.perf_counter()
        model, run_dir = dgm.train(config, out / row)
        train_seconds = time.perf_counter() - start
        test = load_data(config, "test")
        test = test.subset(min(args.max_examples, len(test)))
        start = time.perf_counter()
        scored = {(r.metric, r.unit): r for r in dgm.evaluate(model, test, ["nll", "elbo", "posterior_collapse"],
                                                               k=args.k, progress=False)}
        eval_seconds = time.perf_counter() - start
        nll, elbo = scored[("nll", "nats")], scored[("neg_elbo", "nats")]
        results.append({"model": row, "settings": {**SHARED, **settings}, "epochs": args.epochs,
                        "params": sum(p.numel() for p in model.parameters()),
                        "nll_nats": nll.value, "nll_stderr": nll.details["stderr"], "neg_elbo_nats": elbo.value,
                        "kl_nats": scored[("kl", "nats")].value, "active_units": scored[("active_units", "units")].value,
                        "k": args.k, "n_test": len(test), "train_seconds": train_seconds,
                        "eval_seconds": eval_seconds, "run": str(run_dir)})
        with torch.inference_mode():  # per-image bounds on the same images, for paired differences
            g = torch.Generator().manual_seed(0)
            per_image[row] = torch.cat([model.iwae_bound(b.x, args.k, chunk=50, generator=g)
                                        for b in test.batches(100)]).double()
        print(json.dumps(results[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    n = results[0]["n_test"]
    print(f"\n{args.data}, binary-dynamic, {args.epochs} epochs each, KL warm-up {args.warmup} steps\n")
    print(f"| model | params | test NLL, IWAE k={args.k} (n={n}) | -ELBO | KL | active units (of "
          f"{SHARED['latent_dim']}) | NLL - vae (paired) | train | eval |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d = per_image[results[0]["model"]] - per_image[r["model"]]
        paired = f"{d.mean():+.2f} ± {d.std() / math.sqrt(len(d)):.2f}" if r is not results[0] else "–"
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['nll_nats']:.2f} ± {r['nll_stderr']:.2f} | "
              f"{r['neg_elbo_nats']:.2f} | {r['kl_nats']:.2f} | {r['active_units']:.0f} | {paired} | "
              f"{r['train_seconds'] / 60:.1f} min | {r['eval_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
