"""Benchmark: model FLOP utilisation (MFU) of each family's default image network in training.

For each family's default network on Fashion-MNIST (1x28x28, batch 128), in one process:

* the FLOPs of one optimiser step, counted by ``torch.utils.flop_counter.FlopCounterMode`` over real
  training steps through dgm's Trainer (forward and backward matmuls and convolutions; elementwise
  work is not counted, as MFU conventionally does not), averaged over one round of the model's phases
  (a GAN's critic and generator steps);
* the training rate, steps/s of ``Trainer.fit`` (no checkpoints, samples or progress bar), median of
  ``--repeats`` runs after a warm-up, in fp32 and under bf16 autocast;
* the peak: the FLOP/s of a large square matmul (``--peak-n``), in fp32 and in bf16, the same threads,
  measured just before each family's timing in that precision (on a shared virtual machine the
  speed of the cores drifts by up to 2x within minutes; a peak from the start of the run would not
  be the peak of the row).

MFU = FLOPs per step x steps/s / peak. ``--profile NAME`` adds torch.profiler's table of the operators
that take a bf16 step's time for one family (where it is low, what the time goes to).

    python benchmarks/mfu.py                         # ~5 min on 2 CPU cores
    python benchmarks/mfu.py --profile vae           # and where a conv VAE step spends its time
    python benchmarks/mfu.py --layouts               # each family in NCHW and in channels_last
    python benchmarks/mfu.py --compile --families "VAE (conv; latent 32)"   # eager vs torch.compile

Prints markdown tables for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):  # glibc reads these at start-up
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dgm.run import DataConfig, RunConfig, build_model  # noqa: E402
from dgm.train.trainer import TrainConfig, Trainer  # noqa: E402
from trainer_throughput import cpu_name, training_data  # noqa: E402

FAMILIES = {  # label -> (model, settings, EMA decay): each family's default image network
    "VAE (conv; latent 32)": ("vae", {"network": "conv", "latent_dim": 32}, None),
    "GAN (DCGAN)": ("gan", {}, None),
    "DDPM (U-Net)": ("ddpm", {}, 0.999),
    "gated PixelCNN": ("gated-pixelcnn", {}, None),
    "Glow": ("glow", {}, None),
}
BATCH = 128


def trainer(name: str, steps: int, precision: str, synthetic: bool, memory_format: str = "auto",
            compiled: bool = False) -> Trainer:
    model_name, settings, ema = FAMILIES[name]
    config = RunConfig(model_name, dict(settings), DataConfig("fashion-mnist"))
    data = training_data(config, synthetic)
    model = build_model(config, data.spec)
    if compiled:  # the whole loss (networks and likelihood) through TorchInductor
        model.loss = torch.compile(model.loss)
    return Trainer(model, data, TrainConfig(epochs=1, batch_size=BATCH, max_steps_per_epoch=steps, ema=ema,
                                            progress=False, device="cpu", precision=precision, sample_every=0,
                                            memory_format=memory_format))


def flops_per_step(name: str, synthetic: bool) -> tuple[float, int]:
    """The counted FLOPs of one optimiser step (the mean over one round of phases), and the round."""
    t = trainer(name, 1, "fp32", synthetic)
    round_steps = len(t.cycle(0))  # the first stage's round: e.g. 1 critic step + 1 generator step
    t = trainer(name, round_steps, "fp32", synthetic)
    with FlopCounterMode(display=False) as counter:
        t.fit()
    return counter.get_total_flops() / round_steps, round_steps


def steps_per_second(name: str, steps: int, precision: str, repeats: int, synthetic: bool,
                     memory_format: str = "auto", compiled: bool = False) -> float:
    rates = []
    for i in range(repeats + 1):  # run 0 warms up the kernels and the allocator (and compiles)
        t = trainer(name, steps, precision, synthetic, memory_format, compiled)
        start = time.perf_counter()
        t.fit()  # ends with a read of the device: the time is complete
        if i:
            rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def matmul_peak(n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs), the median of ``repeats`` after a warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def profile(name: str, steps: int, synthetic: bool, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    t = trainer(name, steps, "bf16", synthetic)
    t.fit()  # warm-up
    t = trainer(name, steps, "bf16", synthetic)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t.fit()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def compare(args: argparse.Namespace) -> None:
    """Each family's steps/s two ways (``--layouts``: contiguous and channels_last weights, what
    ``train.memory_format`` decides; ``--compile``: eager and torch.compile), alternating."""
    ways = {"contiguous": {"memory_format": "contiguous"}, "channels_last": {"memory_format": "channels_last"}} \
        if args.layouts else {"eager": {}, "compiled": {"compiled": True}}
    a, b = ways
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, batch {BATCH}, median of {args.repeats}")
    print(f"| family (default network) | precision | {a} steps/s | {b} steps/s | {b} / {a} |")
    print("|---|---|---|---|---|")
    for name in args.families.split(","):
        for p in ("fp32", "bf16"):
            rate = {w: steps_per_second(name, args.steps, p, args.repeats, args.synthetic, **o) for w, o in ways.items()}
            print(f"| {name} | {p} | {rate[a]:.2f} | {rate[b]:.2f} | {rate[b] / rate[a]:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated from: {', '.join(FAMILIES)}")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-n", type=int, default=2048, help="side of the square matmul that measures the peak")
    parser.add_argument("--synthetic", action="store_true", help="random images even if fashion-mnist is there")
    parser.add_argument("--layouts", action="store_true",
                        help="instead: steps/s of each family in contiguous (NCHW) and channels_last weights")
    parser.add_argument("--compile", action="store_true",
                        help="instead: steps/s of each family eager and with its loss under torch.compile")
    parser.add_argument("--profile", metavar="FAMILY", help="also profile a bf16 step of this family (a label or model name)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.layouts or args.compile:
        return compare(args)
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {BATCH}, median of {args.repeats}; peak: a {args.peak_n}^2 matmul in each precision, measured "
          "just before each family's timing (a shared machine's speed drifts within a run)")
    print("| family (default network) | GFLOP per step | fp32 peak GFLOP/s | fp32 steps/s | fp32 GFLOP/s | fp32 MFU "
          "| bf16 peak GFLOP/s | bf16 steps/s | bf16 GFLOP/s | bf16 MFU | bf16 speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name in args.families.split(","):
        flops, _ = flops_per_step(name, args.synthetic)
        cells, rate = [], {}
        for p, dtype in dtypes.items():
            peak = matmul_peak(args.peak_n, dtype)
            rate[p] = steps_per_second(name, args.steps, p, args.repeats, args.synthetic)
            achieved = flops * rate[p]
            cells += [f"{peak / 1e9:.0f}", f"{rate[p]:.2f}", f"{achieved / 1e9:.0f}", f"{100 * achieved / peak:.1f}%"]
        print(f"| {name} | {flops / 1e9:.2f} | {' | '.join(cells)} | {rate['bf16'] / rate['fp32']:.2f}x |", flush=True)
    if args.profile:
        label = next((k for k, v in FAMILIES.items() if args.profile in (k, v[0])), args.profile)
        print(f"\nbf16 profile of {label}, {args.steps} steps:\n")
        print(profile(label, args.steps, args.synthetic))


if __name__ == "__main__":
    main()
