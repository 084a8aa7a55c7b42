"""Benchmark: semi-supervised classification on Fashion-MNIST — test error with 100, 600, 1000 and
3000 labels for M2, M1+M2, the partially supervised VAE, and a supervised classifier of the same
size trained on the labels alone (the shape of Kingma et al. 2014's Table 1, ../shared/REFERENCES.md).

Each generative model trains through ``dgm train MODEL --data fashion-mnist --labels N`` (the
labelled subset is class-balanced and drawn with data.seed 0; every training batch carries labelled
examples in turn from it) for the same budget, and is scored by ``dgm classify`` (argmax q(y|x)
on all 10,000 test images); M1+M2 trains M1 for that budget, then M2 on its codes for as many
epochs. The supervised baseline is M2's classifier network q(y|x) (the same
layers) trained by cross-entropy on the N labelled images alone, with the same optimiser, input
representation and number of steps. Prints one markdown row per number of labels.

    python benchmarks/few_labels_fashion_mnist.py --epochs 10            # ~1 h on 2 cores
    python benchmarks/few_labels_fashion_mnist.py --labels 100 --models m2 supervised --epochs 2
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
from dgm.apps.classify import classification_results  # noqa: E402
from dgm.eval.probes import error_rate  # noqa: E402

MODELS = ("m2", "m1m2", "ps-vae", "supervised")


def train_generative(model: str, labels: int, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Test error (%) of ``model`` trained with ``labels`` labels, and its training minutes."""
    config = run.RunConfig(model, data=run.DataConfig("fashion-mnist", labelled=labels))
    config.train.epochs = args.epochs
    if model == "m1m2":  # M1 for the budget, then M2 on its 50-d codes for as many epochs (cheap)
        config.set("model.m1_epochs", args.epochs)
        config.train.epochs = 2 * args.epochs
    config.train.progress = False
    config.train.sample_every = 0
    config.train.precision = args.precision
    config.train.seed = args.seed
    for key, value in args.set:
        config.set(key, value)
    start = time.perf_counter()
    trained, out = run.train(config, out)
    minutes = (time.perf_counter() - start) / 60
    return classification_results(trained, str(out))[0].value, minutes


def train_supervised(labels: int, args: argparse.Namespace) -> tuple[float, float]:
    """Test error (%) of M2's classifier network trained on the ``labels`` labelled images alone."""
    config = run.RunConfig("m2", data=run.DataConfig("fashion-mnist", labelled=labels))
    train, test = run.load_data(config, "train"), run.load_data(config, "test")
    torch.manual_seed(args.seed)
    classifier = run.build_model(config, train.spec).classifier  # the same layers as M2's q(y|x)
    labelled = train.known_labels()
    steps = args.epochs * train.num_batches(config.train.batch_size, drop_last=True)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.train.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    start, step = time.perf_counter(), 0
    size = min(config.train.batch_size, len(labelled))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    while step < steps:
        for batch in labelled.batches(size, shuffle=True, drop_last=True, generator=g):
            with autocast:
                loss = torch.nn.functional.cross_entropy(classifier(batch.x.flatten(1)).float(), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    minutes = (time.perf_counter() - start) / 60
    with torch.inference_mode():
        predicted = torch.cat([classifier(b.x.flatten(1)).argmax(-1) for b in test.batches(1000)])
    return error_rate(predicted, test.labels)[0], minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=10, help="passes over the 60k training images (each model)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a setting of every generative run, e.g. --set model.alpha 0.5")
    parser.add_argument("--out", default="/tmp/dgm-few-labels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| labels | {' | '.join(args.models)} |  <- test error %, (train minutes); {args.epochs} epochs, "
          f"{args.precision}, {torch.get_num_threads()} threads")
    print("|---|" + "---|" * len(args.models))
    for labels in args.labels:
        cells = []
        for model in args.models:
            if model == "supervised":
                error, minutes = train_supervised(labels, args)
            else:
                error, minutes = train_generative(model, labels, Path(args.out) / f"{model}-{labels}", args)
            cells.append(f"{error:.2f} ({minutes:.1f})")
            print(f"  {model} {labels}: {cells[-1]}", file=sys.stderr, flush=True)
        print(f"| {labels} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
