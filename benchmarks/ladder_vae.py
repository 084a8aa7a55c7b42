"""Benchmark: the ladder VAE against the one-layer VAE on dynamically binarized Fashion-MNIST.

Sønderby et al. 2016, "Ladder Variational Autoencoders", arXiv:1602.02282, compare test NLL by the
IWAE bound; this is that comparison at a small budget. Both models are MLPs with the same hidden
widths (512, 256), a Bernoulli likelihood on binary-dynamic data (the representation both ask for
by default with it: checked below), the same KL warm-up (``--warmup`` steps), and are trained the
same number of epochs with the same optimiser (Adam, lr 1e-3, cosine schedule, batch 128, seed 0):

* ``vae``: one stochastic layer z in R^64 (the size of the ladder's bottom layer);
* ``ladder-vae``: two layers, ``latent_dims=(64, 32)`` (z_1 next to x, z_2 on top).

Each is then scored by ``dgm.evaluate(model, test, ["nll"], k=K)``: test NLL, IWAE bound with K=1000
importance samples, on the first ``--max-examples`` test images (test split binarized once with a
fixed seed), and the ladder's KL term of each layer (``kl_per_layer``) on the same images; then the
difference of each model's NLL from the first row's, paired image by image (its standard error is
far smaller than either NLL's, whose spread is mostly between images).

Rows: ``vae``, ``ladder-vae`` (with the paper's batch normalisation, the model's default) and
``ladder-vae-no-bn`` (the same ladder without it), all by default (``--models``). Cost: about 3
minutes of training per model and 1 minute per IWAE evaluation of 2000 test images at k=1000 on 2
CPU cores; ``--max-examples`` and ``--epochs`` trade time for precision.

    python benchmarks/ladder_vae.py --out runs/bench-ladder              # the defaults, ~15 min
    python benchmarks/ladder_vae.py --data digits --epochs 1 --max-steps 2 --max-examples 16 --k 10  # smoke run

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
from dgm.run import DataConfig, RunConfig, load_data, representation_for
from dgm.train import TrainConfig

REPRESENTATION = "binary-dynamic"
LADDER = {"latent_dims": (64, 32), "hidden": (512, 256), "likelihood": "bernoulli"}
MODELS = {  # row: (registry name, model settings; the rest are each model's defaults)
    "vae": ("vae", {"latent_dim": 64, "hidden": (512, 256), "likelihood": "bernoulli"}),
    "ladder-vae": ("ladder-vae", {**LADDER, "batch_norm": True}),  # the paper's batch normalisation (the default)
    "ladder-vae-no-bn": ("ladder-vae", {**LADDER, "batch_norm": False}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="a binarizable image dataset (digits for smoke runs)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1000, help="KL warm-up steps of both models")
    parser.add_argument("--max-examples", type=int, default=2000, help="test images for the IWAE bound and KL")
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the IWAE bound")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-ladder-vae")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = []
    per_image: dict[str, torch.Tensor] = {}
    for row_name in args.models:
        name, settings = MODELS[row_name]
        config = RunConfig(name, {**settings, "kl_warmup_steps": args.warmup},
                           DataConfig(args.data, representation=REPRESENTATION),
                           TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, schedule="cosine", seed=0,
                                       progress=False, sample_every=args.epochs, device="cpu",
                                       max_steps_per_epoch=args.max_steps))
        natural = dgm.data.load(args.data, "test")
        assert representation_for(RunConfig(name, settings, DataConfig(args.data)), natural.spec) == REPRESENTATION
        start = time.perf_counter()
        model, run_dir = dgm.train(config, out / row_name)
        train_seconds = time.perf_counter() - start
        test = load_data(config, "test")
        test = test.subset(min(args.max_examples, len(test)))
        start = time.perf_counter()
        metrics = ["nll", "kl_per_layer"] if name == "ladder-vae" else ["nll"]
        scored = dgm.evaluate(model, test, metrics, k=args.k, progress=False)
        eval_seconds = time.perf_counter() - start
        nll = next(r for r in scored if r.metric == "nll" and r.unit == "nats")
        row = {"model": row_name, "settings": settings, "epochs": args.epochs, "warmup": args.warmup,
               "params": sum(p.numel() for p in model.parameters()),
               "nll_nats": nll.value, "nll_stderr": nll.details["stderr"], "k": args.k, "n_test": len(test),
               "kl_per_layer": [r.value for r in scored if r.metric.startswith("kl_layer")],
               "train_seconds": train_seconds, "eval_seconds": eval_seconds, "run": str(run_dir)}
        results.append(row)
        with torch.inference_mode():  # per-image bounds on the same images, for paired differences
            g = torch.Generator().manual_seed(0)
            per_image[row_name] = torch.cat([model.iwae_bound(b.x, args.k, chunk=250, generator=g)
                                             for b in test.batches(100)]).double()
        print(json.dumps(row), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/ladder_vae.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    n, k = results[0]["n_test"], args.k
    print(f"\n{args.data}, {REPRESENTATION}, {args.epochs} epochs each, KL warm-up {args.warmup} steps\n")
    print(f"| model | latents | params | test NLL, IWAE k={k} (n={n}) | KL per layer (z_1, z_2, ...) | train | eval |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r["settings"]
        latents = "-".join(map(str, s.get("latent_dims", (s.get("latent_dim"),))))
        kl = ", ".join(f"{v:.2f}" for v in r["kl_per_layer"]) or "–"
        nll = f"{r['nll_nats']:.2f} ± {r['nll_stderr']:.2f} nats"
        print(f"| {r['model']} | {latents} | {r['params'] / 1e6:.2f} M | {nll} | {kl} | "
              f"{r['train_seconds'] / 60:.1f} min | {r['eval_seconds'] / 60:.1f} min |")
    first = args.models[0]
    for name in args.models[1:]:  # the same images: the difference's error is far below each NLL's
        d = per_image[first] - per_image[name]  # NLL of ``name`` minus NLL of ``first``
        print(f"NLL {name} - {first}: {d.mean():.2f} ± {d.std() / math.sqrt(len(d)):.2f} nats "
              f"(paired over the {len(d)} images, IWAE k={args.k})")


if __name__ == "__main__":
    main()
