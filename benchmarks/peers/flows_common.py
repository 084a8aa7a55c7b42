"""The workload shared by the normalizing-flow peer scripts (``flows_zuko.py``, ``flows_normflows.py``) and
meant to be the one dgm runs: Fashion-MNIST, 784-d, uniform dequantization, logit preprocessing, Adam on
-mean log p(y), a wall-clock training budget, test bits/dim of the 8-bit data. Only torch and numpy.

Data: the IDX files in /usr/share/datasets/fashion-mnist/ (``apt-get install dataset-fashion-mnist``).
Each training batch x (uint8 values 0..255, 128 x 784) is dequantized with fresh noise,
y = (x + u) / 256, u ~ U[0, 1)^784 drawn from a seeded torch.Generator, then
p = alpha + (1 - 2 alpha) y, z = logit(p), alpha = 0.05, and the flow models z. The loss is
-mean log p(y) in nats per image, log p(y) = log p_flow(z) + sum_i log dz_i/dy_i with
dz/dy = (1 - 2 alpha) / (p (1 - p)). Test bits/dim of the 8-bit data:
(-log p(y) + 784 ln 256) / (784 ln 2) on the 10,000 t10k images with one fixed noise draw
(torch.Generator seeded 0), in batches of 1000 under torch.inference_mode(), always in fp32.

Timing: each step (batch gather + dequantization + logit + forward/log_prob + backward + Adam step) is timed
with time.perf_counter; ``--warmup-steps`` steps are run first and not timed (they do update the model);
training stops at the first step that ends past ``--seconds`` of summed step time. examples_per_s is the
median over timed steps of batch / step_time, examples_per_s_mean is steps * batch / train_seconds.

Importable as ``flows_common`` (scripts in this folder) or ``benchmarks.peers.flows_common`` (repo root).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

DATA_DIR = "/usr/share/datasets/fashion-mnist"
ALPHA = 0.05
D = 784
EVAL_BATCH = 1000
EVAL_SEED = 0


def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The workload's flags; a peer script may add its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=["maf", "realnvp"], default="maf")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock training budget (timed steps)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--data-dir", default=DATA_DIR)
    return parser


def parse_args(description: str | None = None, argv: list[str] | None = None) -> argparse.Namespace:
    return make_parser(description).parse_args(argv)


def _read_idx_images(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data, dtype=">i4", count=4)
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX image file (magic {magic})")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def _find(data_dir: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return None


def load_fashion_mnist(data_dir: str = DATA_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) as uint8 tensors of shape (60000, 784) and (10000, 784); exits 2 when the files are missing."""
    paths = [_find(data_dir, stem) for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")]
    if None in paths:
        print(f"Fashion-MNIST IDX files not found in {data_dir}: apt-get install dataset-fashion-mnist",
              file=sys.stderr)
        sys.exit(2)
    train, test = (torch.from_numpy(_read_idx_images(p).copy()) for p in paths)
    return train, test


def logit_transform(x: torch.Tensor, u: torch.Tensor, alpha: float = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """x: uint8 pixels (N, 784); u: noise in [0, 1). Returns z = logit(alpha + (1 - 2 alpha)(x + u) / 256) and
    the per-example log-det sum_i log dz_i/dy_i of y -> z (so log p(y) = log p_flow(z) + logdet)."""
    y = (x.float() + u) / 256.0
    p = alpha + (1.0 - 2.0 * alpha) * y
    log_p, log_1mp = torch.log(p), torch.log1p(-p)
    z = log_p - log_1mp
    logdet = (math.log(1.0 - 2.0 * alpha) - log_p - log_1mp).sum(dim=1)
    return z, logdet


def bits_per_dim(log_py: torch.Tensor | float) -> torch.Tensor | float:
    """8-bit bits/dim from log p(y) (nats per image, y in [0, 1))."""
    return (-log_py + D * math.log(256.0)) / (D * math.log(2.0))


def run(args: argparse.Namespace, library: str, version: str, model: torch.nn.Module,
        log_prob: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Trains ``model`` (its parameters, Adam) on -mean log p(y) where ``log_prob(z)`` is the flow's per-example
    log density of logit-space z, then evaluates test bits/dim; prints and returns the JSON record.
    Set torch.set_num_threads and the seed with ``setup(args)`` before building the model."""
    train, test = load_fashion_mnist(args.data_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"{library} {version} {args.model}: {params:,} parameters", file=sys.stderr)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    autocast = args.precision == "bf16"
    bs = args.batch_size
    order, cursor = torch.randperm(len(train), generator=gen), 0

    def step() -> float:
        nonlocal order, cursor
        if cursor + bs > len(order):
            order, cursor = torch.randperm(len(train), generator=gen), 0
        x = train[order[cursor:cursor + bs]]
        cursor += bs
        u = torch.rand(x.shape, generator=gen)
        z, logdet = logit_transform(x, u)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            lp = log_prob(z)
        loss = -(lp.float() + logdet).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    record = {"library": library, "version": version, "model": args.model, "precision": args.precision,
              "params": params, "batch_size": bs, "steps": 0, "train_seconds": 0.0, "examples_per_s": None,
              "examples_per_s_mean": None, "test_bpd": None, "final_train_loss": None, "final_train_bpd": None,
              "status": "ok"}
    times: list[float] = []
    loss = float("nan")
    model.train()
    try:
        for _ in range(args.warmup_steps):
            loss = step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} in warm-up")
        total = 0.0
        while total < args.seconds:
            start = time.perf_counter()
            loss = step()
            elapsed = time.perf_counter() - start
            times.append(elapsed)
            total += elapsed
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at timed step {len(times)}")
    except (FloatingPointError, RuntimeError) as exc:  # a peer that NaNs or fails (bf16) is a result
        record["status"] = f"failed: {type(exc).__name__}: {exc}"
    if times:
        total = sum(times)
        record.update(steps=len(times), train_seconds=round(total, 3),
                      examples_per_s=round(statistics.median(bs / t for t in times), 1),
                      examples_per_s_mean=round(len(times) * bs / total, 1))
    record["final_train_loss"] = round(loss, 4) if math.isfinite(loss) else None
    record["final_train_bpd"] = round(bits_per_dim(loss * -1.0), 4) if math.isfinite(loss) else None
    if record["status"] == "ok":
        record["test_bpd"] = evaluate(model, log_prob, test)
        if not math.isfinite(record["test_bpd"]):
            record["status"], record["test_bpd"] = "failed: non-finite test log-likelihood", None
        else:
            record["test_bpd"] = round(record["test_bpd"], 4)
    print(json.dumps(record), flush=True)
    return record


def evaluate(model: torch.nn.Module, log_prob: Callable[[torch.Tensor], torch.Tensor], test: torch.Tensor) -> float:
    """Test bits/dim (fp32) with one fixed dequantization noise draw from torch.Generator seeded EVAL_SEED."""
    u = torch.rand(test.shape, generator=torch.Generator().manual_seed(EVAL_SEED))
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(test), EVAL_BATCH):
            z, logdet = logit_transform(test[i:i + EVAL_BATCH], u[i:i + EVAL_BATCH])
            total += (log_prob(z).double() + logdet.double()).sum().item()
    model.train()
    return float(bits_per_dim(total / len(test)))


def setup(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
