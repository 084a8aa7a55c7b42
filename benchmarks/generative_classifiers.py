"""Benchmark: generative classifiers by Bayes' rule beside discriminative networks of similar size.

Each class-conditional model learns p(x | y) and classifies by p(y | x) proportional to p(x | y) p(y)
(``dgm classify --via bayes``, :mod:`dgm.eval.bayes`): the conditional PixelCNN with its exact
log p(x|y), the conditional VAE with its IWAE bound (k importance samples, the classes compared
under common random numbers), the conditional DDPM with its variational bound. Beside them, two
discriminative networks trained by cross-entropy on the same split, representation, epochs, batch
size and optimiser (Adam, cosine schedule, seed 0): an MLP with the conditional VAE's encoder widths
and dgm's small VGG-style CNN (``dgm.eval.features.Classifier``) at a width whose size is near the
PixelCNN's. Every row gives the test error, the expected calibration error (15 bins, Guo et al.
2017) and the NLL of the true class.

    python benchmarks/generative_classifiers.py --data digits --out runs/bench-genclass-digits        # ~10 min here
    python benchmarks/generative_classifiers.py --data fashion-mnist --models cvae mlp --epochs 5 \\
        --max-examples 2000 --out runs/bench-genclass-fmnist                                         # ~6 min
    python benchmarks/generative_classifiers.py --data digits --epochs 1 --max-steps 2 --k 2 --max-examples 20  # smoke

Writes ``OUT/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dgm
from dgm.apps.classify import classification_results, probability_results
from dgm.eval.features import Classifier
from dgm.nn import MLP
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

#: per dataset: its representation, and each generative model's settings
SETTINGS = {
    "digits": ("unit", {
        "cvae": {"latent_dim": 16, "hidden": (256, 128), "likelihood": "categorical"},
        "pixelcnn": {"conditional": True, "width": 32, "layers": 4, "likelihood": "categorical"},
        "ddpm": {"conditional": True, "network": "mlp", "hidden": (256, 256, 256), "timesteps": 1000,
                 "bound_timesteps": 100},
    }),
    "fashion-mnist": ("binary-dynamic", {
        "cvae": {"latent_dim": 32, "hidden": (512, 256), "likelihood": "bernoulli"},
        "pixelcnn": {"conditional": True, "width": 32, "layers": 4},
        "ddpm": {"conditional": True, "width": 16, "timesteps": 1000, "bound_timesteps": 50},
    }),
}
DISCRIMINATIVE = ("mlp", "cnn")


def representation_of(data: str, model: str) -> str:
    representation = SETTINGS[data][0]
    return "signed" if model == "ddpm" and representation == "unit" else representation  # a DDPM sees [-1, 1]


def train_discriminative(kind: str, config: RunConfig, pixelcnn_params: int, max_steps: int | None) -> torch.nn.Module:
    """An MLP (the CVAE's encoder widths) or the CNN at the width nearest the PixelCNN's size, trained
    by cross-entropy on the run's training split with the run's optimiser and schedule."""
    train = load_data(config, "train")
    spec, t = train.spec, config.train
    if kind == "mlp":
        net = torch.nn.Sequential(torch.nn.Flatten(), MLP(spec.dim, SETTINGS[config.data.name][1]["cvae"]["hidden"],
                                                          spec.num_classes))
    else:
        widths = range(4, 65, 2)
        sizes = {w: sum(p.numel() for p in Classifier(spec.shape, spec.num_classes, width=w).parameters())
                 for w in widths}
        width = min(widths, key=lambda w: abs(sizes[w] - pixelcnn_params))
        net = Classifier(spec.shape, spec.num_classes, width=width)
    net.settings = {"hidden": SETTINGS[config.data.name][1]["cvae"]["hidden"]} if kind == "mlp" else {"width": width}
    torch.manual_seed(t.seed)
    steps_per_epoch = min(train.num_batches(t.batch_size), max_steps or 10**9)
    optimiser = torch.optim.Adam(net.parameters(), lr=t.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, t.epochs * steps_per_epoch)
    net.train()
    order = torch.Generator().manual_seed(t.seed)
    for _ in range(t.epochs):
        for step, batch in enumerate(train.batches(t.batch_size, shuffle=True, generator=order)):
            if step == steps_per_epoch:
                break
            loss = F.cross_entropy(net(batch.x.float()), batch.y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", choices=SETTINGS)
    parser.add_argument("--models", nargs="+", default=["cvae", "pixelcnn", "ddpm", *DISCRIMINATIVE],
                        choices=["cvae", "pixelcnn", "ddpm", *DISCRIMINATIVE])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=20, help="importance samples of the CVAE's bound")
    parser.add_argument("--max-examples", type=int, default=None, help="test examples (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-genclass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results, pixelcnn_params = [], None
    for row in args.models:
        name = "pixelcnn" if row == "cnn" else ("cvae" if row == "mlp" else row)
        settings = SETTINGS[args.data][1][name]
        config = RunConfig(name, settings, DataConfig(args.data, representation=representation_of(args.data, name)),
                           TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, schedule="cosine",
                                       seed=0, progress=False, sample_every=0, device="cpu",
                                       max_steps_per_epoch=args.max_steps))
        start = time.perf_counter()
        if row in DISCRIMINATIVE:
            if row == "cnn" and pixelcnn_params is None:
                pixelcnn_params = sum(p.numel() for p in dgm.create("pixelcnn", load_data(config, "test").spec,
                                                                     **settings).parameters())
            model = train_discriminative(row, config, pixelcnn_params or 0, args.max_steps)
            settings = model.settings
            train_seconds = time.perf_counter() - start
            test = load_data(config, "test")
            test = test.subset(min(args.max_examples or len(test), len(test)))
            with torch.inference_mode():
                probs = torch.cat([model(b.x.float()).softmax(-1) for b in test.batches(500)])
            scored = probability_results(probs, test.labels, f"argmax of a discriminative {row}", f"test, n={len(test)}")
        else:
            model, run_dir = dgm.train(config, out / row)
            train_seconds = time.perf_counter() - start
            if row == "pixelcnn":
                pixelcnn_params = sum(p.numel() for p in model.parameters())
            scored = classification_results(model, str(run_dir), via="bayes", k=args.k if row == "cvae" else 1,
                                            max_examples=args.max_examples)
        eval_seconds = time.perf_counter() - start - train_seconds
        error, ece, nll = scored
        results.append({"model": row, "how": error.qualifier, "split": error.split, "settings": settings,
                        "params": sum(p.numel() for p in model.parameters()), "error_pct": error.value,
                        "ece_pct": ece.value, "nll_nats": nll.value, "epochs": args.epochs,
                        "train_seconds": train_seconds, "eval_seconds": eval_seconds})
        print(json.dumps(results[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{args.data}, {args.epochs} epochs each, batch {args.batch_size}, {results[0]['split']}\n")
    print("| classifier | how | params | test error | ECE | NLL of the true class | train | eval |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['how']} | {r['params'] / 1e6:.3f} M | {r['error_pct']:.2f}% | {r['ece_pct']:.2f}% | "
              f"{r['nll_nats']:.3f} | {r['train_seconds'] / 60:.1f} min | {r['eval_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
