"""Self-labelling GAN on Fashion-MNIST at 0%, 1%, 10% and 100% labels, against the unconditional
GAN and the class-conditional GAN (projection critic): FID[fmnist-net] of generated samples
against the test images (Watanabe & Favaro 2021, arXiv:2106.09914, compare the same three kinds of
model on CIFAR-10).

Every model is the same DCGAN (generator and critic of ``model.width`` channels), trained through
``dgm.train`` for the same epochs, batch size and learning rates, and scored by ``dgm.evaluate``
exactly as ``dgm eval RUN --metrics fid`` does (``num_samples`` samples against as many test
images). The labelled subset (``data.labelled``) is class-balanced and drawn with data.seed 0;
``--labelled-per-batch 0`` (the default here) lets labelled examples come as they fall, so every
model sees the same number of examples per step. ``gan`` reads no label, so it has one row for all
fractions; ``cgan`` needs every label (it refuses partly labelled data), so it has the 100% row only.
0% is the self-labelling GAN with ``model.ignore_labels=true`` (K = 10 artificial classes).

    # the runs of docs/benchmarks.md (~25 min per seed on one thread of a shared 2-core CPU);
    # --set keys of the self-labelling GAN reach only its runs
    OMP_NUM_THREADS=1 python benchmarks/self_labelling_gan_fashion_mnist.py --epochs 3 --width 16 \\
        --samples 2000 --set model.classifier_ema 0.99 --seed 0 --out /tmp/bench/sl-gan-0   # and --seed 1
    # the generator's classification term switched off (lambda = 0)
    OMP_NUM_THREADS=1 python benchmarks/self_labelling_gan_fashion_mnist.py --models self-labelling-gan \\
        --epochs 3 --width 16 --samples 2000 --set model.classifier_ema 0.99 --set model.classifier_weight 0
    # full scale
    python benchmarks/self_labelling_gan_fashion_mnist.py --epochs 20 --width 64 --samples 10000 --threads 2
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
from dgm.eval import evaluate  # noqa: E402

FRACTIONS = (0.0, 0.01, 0.1, 1.0)
MODELS = ("gan", "cgan", "self-labelling-gan")


def runs(models: list[str], fractions: list[float]) -> list[tuple[str, str, float]]:
    """``(row, model, fraction)`` of the table: gan once (it reads no label), cgan at 100% only."""
    out = []
    if "gan" in models:
        out.append(("GAN (unconditional)", "gan", 0.0))
    if "cgan" in models and 1.0 in fractions:
        out.append(("cGAN (projection)", "cgan", 1.0))
    if "self-labelling-gan" in models:
        out += [("self-labelling GAN", "self-labelling-gan", f) for f in fractions]
    return out


def one_run(model: str, fraction: float, args: argparse.Namespace) -> dict:
    """Train ``model`` with ``fraction`` of the labels and return its FID and timings."""
    train_size = args.examples or 60000
    labelled = round(fraction * train_size)
    data = run.DataConfig("fashion-mnist", max_examples=args.examples)
    if 0 < labelled < train_size:
        data.labelled, data.labelled_per_batch = labelled, args.labelled_per_batch
    config = run.RunConfig(model, data=data)
    settings = {"model.width": args.width, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                "train.progress": False, "train.sample_every": 0, "train.seed": args.seed,
                "train.precision": args.precision}
    if model == "self-labelling-gan" and fraction == 0:
        settings["model.ignore_labels"] = True
    for key, value in [*settings.items(), *args.set]:
        if model != "self-labelling-gan" and key.split(".")[-1] in SELF_LABELLING_KEYS:
            continue
        config.set(key, value)
    out = Path(args.out) / f"{model}-{fraction:g}"
    start = time.perf_counter()
    trained, _ = run.train(config, out)
    seconds = time.perf_counter() - start
    test = run.load_data(config, "test")
    if args.samples < len(test):
        test = test.subset(args.samples)
    start = time.perf_counter()
    (fid,) = evaluate(trained, test, ["fid"], num_samples=args.samples, feature_net="fmnist-net", progress=False)
    return {"model": model, "fraction": fraction, "labelled": labelled if fraction else 0, "fid": fid.value,
            "qualifier": fid.qualifier, "train_seconds": seconds, "eval_seconds": time.perf_counter() - start,
            "epochs": args.epochs}


SELF_LABELLING_KEYS = ("threshold", "classifier_ema", "classifier_weight", "classes", "ignore_labels")


def table(rows: list[dict]) -> str:
    lines = ["| model | labels | FID[fmnist-net] | train time |", "|---|---|---|---|"]
    for r in rows:
        labels = "not read" if r["model"] == "gan" else f"{r['fraction']:.0%} ({r['labelled']})"
        lines.append(f"| {r['row']} | {labels} | {r['fid']:.2f} | {r['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--examples", type=int, default=None, help="train on the first N examples (default: all 60000)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=int, default=64, help="DCGAN channels (model.width)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=10000, help="FID: generated samples, and test images")
    parser.add_argument("--labelled-per-batch", type=int, default=0, help="data.labelled_per_batch (0: as they fall)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="any setting of every run, e.g. --set model.threshold 0.95")
    parser.add_argument("--out", default="/tmp/bench/sl-gan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for row, model, fraction in runs(args.models, args.fractions):
        result = {"row": row, **one_run(model, fraction, args)}
        print(f"{row} {fraction:.0%}: FID {result['fid']:.2f} ({result['qualifier']}), train "
              f"{result['train_seconds']:.0f} s, eval {result['eval_seconds']:.0f} s", flush=True)
        rows.append(result)
    print(table(rows))


if __name__ == "__main__":
    main()
