"""Benchmark: normalizing flows on Fashion-MNIST (8-bit, 28x28), test bits/dim and training speed.

Two parts, both printing markdown rows for docs/benchmarks.md:

* ``--images``: the multi-scale flows on images, RealNVP and Glow at their default sizes, trained
  through dgm's Trainer for a budget of optimiser steps each (uniform dequantization, logit 0.05,
  Adam 1e-3, batch 64, bf16 autocast), then the test bits/dim of the 8-bit data on all 10,000 test images with one
  fixed dequantization draw (seed 0), beside Glow's published ~2.96 (Nalisnick et al. 2019, a
  much larger Glow trained for days on GPUs). ``--paper --device cuda`` is the same protocol at
  sizes near the papers' (Glow 2 x 32 steps, 512 channels; RealNVP 3 scales, 64 channels, 8
  residual blocks) for a GPU.
* ``--peers PYTHON``: MAF (5 MADEs, 1 x 1024) and RealNVP (6 couplings, MLP 2 x 1024) on the
  flattened images side by side with zuko and normflows in the environment that
  ``benchmarks/peers/setup_flows.sh`` makes: the workload of ``benchmarks/peers/flows_common.py``
  (identical sizes, batch 128, data, preprocessing and evaluation), each library trained for the
  same summed step time, in fp32 and in bf16 autocast, in one run. dgm trains through its Trainer
  (a subclass here only times the steps and stops at the budget).

    bash benchmarks/peers/setup_flows.sh /tmp/flowpeers
    python benchmarks/flows_fashion_mnist.py --peers /tmp/flowpeers/bin/python --seconds 30   # ~8 min
    python benchmarks/flows_fashion_mnist.py --images --steps 4000                             # ~20 min alone
    python benchmarks/flows_fashion_mnist.py --images --paper --device cuda --steps 100000     # GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# glibc reads these at start-up: re-run ourselves with them set (as every benchmark here is run)
MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402

import dgm  # noqa: E402
from dgm.data.core import Dataset  # noqa: E402
from dgm.models.base import GenerativeModel  # noqa: E402
from dgm.train.trainer import TrainConfig, Trainer, TrainingInterrupted  # noqa: E402

PEERS = Path(__file__).parent / "peers"
EVAL_SEED = 0  # the one dequantization draw of the test images (as flows_common.py)
#: the flattened-image workload shared with the peers (benchmarks/peers/flows_common.py)
VECTOR = {"maf": {"transforms": 5, "hidden": (1024,)},
          "realnvp": {"flatten": True, "couplings": 6, "hidden": (1024, 1024)}}
IMAGES = {"realnvp": {}, "glow": {}}  # the defaults
PAPER = {"realnvp": {"scales": 3, "width": 64, "blocks": 8}, "glow": {"levels": 2, "steps": 32, "width": 512}}


class BudgetTrainer(Trainer):
    """dgm's Trainer, timing every optimiser step (data, forward, backward, update) and stopping once
    the summed step time passes ``seconds`` or ``steps`` steps are done; benchmark only."""

    def __init__(self, *args, seconds: float = math.inf, steps: int | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.seconds, self.steps, self.times, self.curve = seconds, steps, [], []
        self._last = None

    def _step(self, phase, loss) -> None:  # noqa: ANN001
        super()._step(phase, loss)
        now = time.perf_counter()
        if self._last is not None:  # from the end of one step to the end of the next: a whole step
            self.times.append(now - self._last)
            if sum(self.times) >= self.seconds or (self.steps and len(self.times) >= self.steps):
                self.request_stop()
        self._last = now

    def _log_row(self, extra=None) -> None:  # noqa: ANN001
        super()._log_row(extra)
        row = self.position.history[-1]
        self.curve.append((sum(self.times), row.get("bits_per_dim", float("nan"))))


def train_for(model: GenerativeModel, data: Dataset, batch_size: int, precision: str, device: str,
              **budget: float) -> BudgetTrainer:
    config = TrainConfig(epochs=1000, batch_size=batch_size, lr=1e-3, precision=precision, progress=False,
                         sample_every=0, device=device, log_every=50)
    trainer = BudgetTrainer(model, data, config, **budget)
    try:
        trainer.fit()
    except TrainingInterrupted:  # the budget is spent
        pass
    return trainer


def test_bits_per_dim(model: GenerativeModel, test: Dataset, batch_size: int = 500) -> float:
    """Bits/dim of the 8-bit test images, ``(-log p(y) + D log 256) / (D log 2)``, with one fixed
    dequantization draw (a torch.Generator seeded 0 over ``(N, 784)``, as the peers draw it)."""
    x = test.raw.float().flatten(1)  # (N, 784) levels
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(EVAL_SEED))
    y = ((x + u) / 256).view(len(x), *test.spec.shape)
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            total += model.log_density(y[i:i + batch_size].to(model.device)).double().sum().item()
    D = test.spec.dim
    return (-total / len(y) + D * math.log(256)) / (D * math.log(2))


def data(split: str) -> Dataset:
    return dgm.data.load("fashion-mnist", split, representation="dequantized")


def dgm_record(name: str, settings: dict, batch_size: int, precision: str, device: str, **budget: float) -> dict:
    train, test = data("train"), data("test")
    torch.manual_seed(0)
    model = dgm.create(name, train.spec, **settings)
    trainer = train_for(model, train, batch_size, precision, device, **budget)
    times = trainer.times
    return {"library": "dgm", "version": dgm.__version__, "model": name, "precision": precision,
            "params": sum(p.numel() for p in model.parameters()), "batch_size": batch_size, "steps": len(times),
            "train_seconds": round(sum(times), 1), "examples_per_s": round(statistics.median(batch_size / t for t in times), 1),
            "examples_per_s_mean": round(len(times) * batch_size / sum(times), 1),
            "test_bpd": round(test_bits_per_dim(model, test), 4),
            "curve": trainer.curve}


def peers(peer_python: str, seconds: float) -> None:
    rows = []
    for name in ("maf", "realnvp"):
        for precision in ("fp32", "bf16"):
            record = dgm_record(name, VECTOR[name], 128, precision, "cpu", seconds=seconds)
            record.pop("curve")
            print(json.dumps(record), flush=True)
            rows.append(record)
            for library in ("zuko", "normflows"):
                out = subprocess.run([peer_python, str(PEERS / f"flows_{library}.py"), "--model", name, "--seconds",
                                      str(seconds), "--precision", precision], capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else json.dumps(
                    {"library": library, "model": name, "precision": precision, "status": out.stderr[-300:]})
                print(line, flush=True)
                rows.append(json.loads(line))
    print("\n| model | precision | library | params | steps | examples/s (median) | dgm / peer | test bits/dim |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours = next(d for d in rows if d["library"] == "dgm" and d["model"] == r["model"]
                    and d["precision"] == r["precision"])
        rate = r.get("examples_per_s")
        ratio = f"{ours['examples_per_s'] / rate:.2f}" if rate and r["library"] != "dgm" else ""
        bpd = r.get("test_bpd")
        status = r.get("status", "ok")
        print(f"| {r['model']} | {r['precision']} | {r['library']} | {r.get('params', '')} | {r.get('steps', '')} | "
              f"{rate or ''} | {ratio} | {bpd if bpd is not None else status} |")


def images(names: list[str], steps: int, paper: bool, precision: str, device: str, batch_size: int) -> None:
    print("| model | settings | params | precision | steps of batch | train minutes | examples/s | test bits/dim |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        settings = (PAPER if paper else IMAGES)[name]
        record = dgm_record(name, settings, batch_size, precision, device, steps=steps)
        print(json.dumps(record), file=sys.stderr, flush=True)
        print(f"| {name} | {settings or 'defaults'} | {record['params']:,} | {precision} | {record['steps']} of "
              f"{batch_size} | {record['train_seconds'] / 60:.1f} | {record['examples_per_s']} | "
              f"{record['test_bpd']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", metavar="PYTHON", help="python of the environment with zuko and normflows")
    parser.add_argument("--seconds", type=float, default=60, help="summed step time per library and setting")
    parser.add_argument("--images", action="store_true", help="RealNVP and Glow on the 28x28 images")
    parser.add_argument("--models", default="realnvp,glow", help="image flows to train, comma-separated")
    parser.add_argument("--steps", type=int, default=4000, help="optimiser steps of each image flow")
    parser.add_argument("--paper", action="store_true", help="paper-like sizes (for a GPU)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peers:
        peers(args.peers, args.seconds)
    if args.images:
        images(args.models.split(","), args.steps, args.paper, args.precision, args.device, args.batch_size)


if __name__ == "__main__":
    main()
