"""Diffusion on Fashion-MNIST: the test NLL bound in bits/dim; FID[fmnist-net], KID, precision and
recall of DDPM (all T steps) and DDIM (10 / 20 / 50 / 100 steps); sampling and training throughput,
the latter side by side with diffusers' UNet2DModel + DDPMScheduler of the same size and batch.

The model trains through ``dgm.train`` (bf16 autocast, EMA) and is evaluated with ``dgm.evaluate``
as ``dgm eval RUN --metrics nll,fid,kid,precision_recall`` does, once per sampler setting.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/diffusion_fashion_mnist.py --epochs 10 --num-samples 2000 --out /tmp/bench/ddpm-fmnist
    # throughput (the machine otherwise idle); the peer runs in its own environment with diffusers:
    python benchmarks/diffusion_fashion_mnist.py --throughput --peer-python /tmp/peer/bin/python
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import dgm
from parallel import training_rate

SETTINGS = {"model.width": 32, "model.channel_mults": "1,2,2", "model.timesteps": 1000, "train.batch_size": 128,
            "train.lr": 1e-3, "train.schedule": "cosine", "train.precision": "bf16", "train.ema": 0.999, "train.sample_every": 1,
            "model.sampler": "ddim", "model.sample_steps": 50}  # the grids during training and in the report
SAMPLERS = [("DDPM", "ddpm", 1000, 1.0), ("DDIM", "ddim", 100, 0.0), ("DDIM", "ddim", 50, 0.0),
            ("DDIM", "ddim", 20, 0.0), ("DDIM", "ddim", 10, 0.0)]
QUALITY = ["fid", "kid", "precision_recall"]


def train(epochs: int, out: Path, extra: dict) -> tuple[dgm.GenerativeModel, dgm.RunConfig, float]:
    config = dgm.RunConfig("ddpm", data=dgm.DataConfig("fashion-mnist"))
    for key, value in {**SETTINGS, **extra, "train.epochs": epochs, "train.progress": False}.items():
        config.set(key, value)
    start = time.perf_counter()
    model, _ = dgm.train(config, out)
    return model, config, time.perf_counter() - start


def evaluate_samplers(model, config, num_samples: int, bound_examples: int, bound_terms: int,  # noqa: ANN001
                      parts: str = "bound,samplers") -> list[dict]:
    from dgm.eval import evaluate

    test = dgm.run.load_data(config, "test")
    rows = []
    # the bound: all T terms on the first examples, and an unbiased k-term estimate on the whole test set
    for examples, k in ((bound_examples, 0), (len(test), bound_terms)) if "bound" in parts else ():
        model.config.bound_timesteps = k
        start = time.perf_counter()
        results = evaluate(model, test.subset(examples), ["nll"], progress=False)
        bpd = next(r for r in results if r.unit == "bits/dim")
        rows.append({"what": "nll", "value": bpd.value, "stderr": bpd.details["stderr"], "qualifier": bpd.qualifier,
                     "split": bpd.split, "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    for label, sampler, steps, eta in SAMPLERS:
        if not ("samplers" in parts or sampler in parts.split(",")):
            continue
        model.config.sampler, model.config.sample_steps, model.config.eta = sampler, steps, eta
        start = time.perf_counter()
        with denoiser_in_bf16(model):
            results = evaluate(model, test, QUALITY, num_samples=num_samples, progress=False)
        rows.append({"what": f"{label} {steps if sampler == 'ddim' else model.process.num_timesteps} steps",
                     "eta": eta, **{r.metric: r.value for r in results}, "num_samples": num_samples,
                     "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    return rows


@contextmanager
def denoiser_in_bf16(model):  # noqa: ANN001, ANN201
    """The denoiser (only) under bf16 autocast, as in training: the feature network behind FID stays
    in fp32, so the numbers are comparable with every other table. The bounds are computed in fp32."""
    forward = model.network.forward

    def bf16_forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.network.forward = bf16_forward
    try:
        yield
    finally:
        del model.network.forward


def dgm_training_rate(precision: str, batch_size: int, steps: int, repeats: int) -> float:
    from dgm.train.trainer import TrainConfig

    data = dgm.data.load("fashion-mnist", "train").with_representation("signed").subset(batch_size * steps)
    model = dgm.create("ddpm", data.spec, width=SETTINGS["model.width"])
    config = TrainConfig(epochs=1, batch_size=batch_size, progress=False, device="cpu", precision=precision,
                         lr=2e-4, sample_every=0)
    return training_rate(model, data, config, repeats)


def sampling_rate(precision: str, batch_size: int) -> float:
    """Network evaluations per second of sampling (one evaluation = one image at one step)."""
    spec = dgm.data.load("fashion-mnist", "test").with_representation("signed").spec
    model = dgm.create("ddpm", spec, width=SETTINGS["model.width"]).eval()
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(4):
            start = time.perf_counter()
            model.sample(batch_size, generator=torch.Generator().manual_seed(i), sampler="ddim", steps=10)
            if i:
                times.append(time.perf_counter() - start)
    return 10 * batch_size / statistics.median(times)


def throughput(peer_python: str | None, batch_size: int = 128, steps: int = 20, repeats: int = 3) -> None:
    torch.set_num_threads(2)
    for precision in ("fp32", "bf16"):
        rate = dgm_training_rate(precision, batch_size, steps, repeats)
        print(json.dumps({"library": "dgm", "precision": precision, "examples_per_s": rate}), flush=True)
        if peer_python:
            peer = Path(__file__).parent / "peers" / "diffusers_ddpm.py"
            subprocess.run([peer_python, str(peer), "--precision", precision, "--batch-size", str(batch_size),
                            "--steps", str(steps), "--repeats", str(repeats)], check=True)
        rate = sampling_rate(precision, 256)
        print(json.dumps({"library": "dgm", "sampling": precision, "network_evaluations_per_s": rate,
                          "ddpm_1000_images_per_s": rate / 1000, "ddim_50_images_per_s": rate / 50}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10000, help="samples per sampler setting")
    parser.add_argument("--bound-examples", type=int, default=200, help="test examples of the all-T-terms bound")
    parser.add_argument("--bound-terms", type=int, default=20, help="terms of the unbiased estimate on the whole test set")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--parts", default="bound,samplers", choices=["bound,samplers", "bound", "samplers", "ddpm", "ddim"],
                        help="what to evaluate (a trained run in --out is reused), e.g. in two processes")
    parser.add_argument("--weights", choices=["ema", "raw"], default="ema", help="which weights of a trained run to evaluate")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when other jobs share the cores)")
    parser.add_argument("--out", default="/tmp/bench/ddpm-fmnist")
    parser.add_argument("--throughput", action="store_true", help="only measure examples/s")
    parser.add_argument("--peer-python", help="python of an environment with diffusers, for the side-by-side")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.peer_python)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    extra = dict(pair.split("=", 1) for pair in args.set)
    if (out / "weights.safetensors").exists():
        model, (config, _) = dgm.load(out, ema=args.weights == "ema"), dgm.run.read_config(out)
        seconds = float("nan")
    else:
        model, config, seconds = train(args.epochs, out, extra)
    print(json.dumps({"train_seconds": seconds, "params": sum(p.numel() for p in model.parameters())}), flush=True)
    model.eval()
    with torch.no_grad():
        rows = evaluate_samplers(model, config, args.num_samples, args.bound_examples, args.bound_terms, args.parts)
    name = "benchmark.json" if args.parts == "bound,samplers" else f"benchmark-{args.parts}-{args.weights}.json"
    (out / name).write_text(json.dumps({"train_seconds": seconds, "rows": rows}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
