"""Benchmark: training steps/s through dgm's Trainer, with and without a host read every step.

Two models at batch 128 on Fashion-MNIST-shaped data (1x28x28; the real training split when
``dgm.data.load("fashion-mnist")`` finds it, else random 8-bit images of that shape):

* ``vae``: the conv VAE (``network=conv``, latent 32, Bernoulli decoder on binarized images);
* ``ddpm``: the DDPM U-Net at its default size for 28x28 (1.11 M parameters), EMA 0.999 as in a run.

Each is timed two ways in the same process, alternating, after one warm-up run of each:

* ``device sums`` -- the Trainer as it is: losses, metrics and the NaN flag summed on the device
  and read every ``train.log_every`` steps;
* ``sync every step`` -- the same Trainer plus the reads the loop used to make at every step
  (``torch.isfinite(loss).item()`` and ``float()`` of the loss and of each metric). It exists only
  here, as a subclass: it is not a setting of dgm.

The rate is optimiser steps over the wall time of ``Trainer.fit`` (no checkpoints, no samples, no
progress bar), the median of ``--repeats`` runs.

    python benchmarks/trainer_throughput.py          # about 2 minutes on 2 CPU cores

Prints a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

# glibc reads these at start-up: re-run ourselves with them set (as every benchmark here is run)
MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402

from dgm.data.core import Dataset, DataSpec  # noqa: E402
from dgm.run import DataConfig, RunConfig, build_model, load_data, representation_for  # noqa: E402
from dgm.train.trainer import TrainConfig, Trainer, TrainingDiverged  # noqa: E402

MODELS = {  # name: (model settings, EMA decay)
    "vae": ({"network": "conv", "latent_dim": 32}, None),
    "ddpm": ({}, 0.999),
}
BATCH = 128


class SyncEveryStep(Trainer):
    """The loop with the per-step reads it made before they were removed (benchmark only)."""

    def _accumulate(self, phase, out) -> None:  # noqa: ANN001
        if not torch.isfinite(out.loss).item():  # the old per-step finite check
            raise TrainingDiverged(f"the {phase.name} loss became {out.loss.item()}")
        for value in [out.loss, *out.metrics.values()]:  # the old per-step float() of each value
            float(value.detach().float().mean())
        super()._accumulate(phase, out)


def training_data(config: RunConfig, synthetic: bool) -> Dataset:
    if not synthetic:
        try:
            return load_data(config, "train")
        except Exception as e:  # noqa: BLE001 (no copy of the data here: time on random images)
            print(f"fashion-mnist not found ({e}); timing on random images", file=sys.stderr)
    raw = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    natural = Dataset(raw, None, DataSpec("random-28x28", (1, 28, 28), "unit", levels=256), train=True)
    return natural.with_representation(representation_for(config, natural.spec))


def steps_per_second(name: str, steps: int, repeats: int, synthetic: bool, device: str) -> dict[str, float]:
    settings, ema = MODELS[name]
    config = RunConfig(name, dict(settings), DataConfig("fashion-mnist"))
    data = training_data(config, synthetic)
    rates: dict[str, list[float]] = {"device sums": [], "sync every step": []}
    for i in range(repeats + 1):  # run 0 warms up the kernels and the allocator
        for label, cls in (("sync every step", SyncEveryStep), ("device sums", Trainer)):
            model = build_model(config, data.spec)
            trainer = cls(model, data, TrainConfig(epochs=1, batch_size=BATCH, max_steps_per_epoch=steps,
                                                   ema=ema, progress=False, device=device))
            start = time.perf_counter()
            trainer.fit()  # ends with a read of the device (the epoch's finite check): the time is complete
            if i:
                rates[label].append(steps / (time.perf_counter() - start))
    return {label: statistics.median(r) for label, r in rates.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (after a warm-up run)")
    parser.add_argument("--vae-steps", type=int, default=30, help="optimiser steps per VAE run")
    parser.add_argument("--ddpm-steps", type=int, default=10, help="optimiser steps per DDPM run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="train.device: cpu, cuda, ...")
    parser.add_argument("--synthetic", action="store_true", help="random images even if fashion-mnist is there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, batch {BATCH}, median of {args.repeats}")
    print("| model | steps per run | device sums (steps/s) | sync every step (steps/s) | ratio |")
    print("|---|---|---|---|---|")
    for name, steps in (("vae", args.vae_steps), ("ddpm", args.ddpm_steps)):
        r = steps_per_second(name, steps, args.repeats, args.synthetic, args.device)
        print(f"| {name} | {steps} | {r['device sums']:.3g} | {r['sync every step']:.3g} | "
              f"{r['device sums'] / r['sync every step']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
