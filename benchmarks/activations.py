"""Why bf16 gains little on the conv nets' activations: the forward and backward of SiLU, ReLU and
tanh-GELU at the conv VAE's activation shapes, fp32 and bf16, NCHW and channels_last.

Elementwise kernels read and write memory and use no matrix unit, so bf16 (half the bytes, but
converted to fp32 for the arithmetic) does not make them faster the way AMX makes a matmul 6-7x
faster; their share of a bf16 step is the floor under its MFU (docs/benchmarks.md, "MFU per family").

    python benchmarks/activations.py        # 1 min on 2 CPU cores; prints a markdown table (ms, median of 20)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):  # glibc reads these at start-up
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

#: the conv VAE's activations at batch 128 on 28x28 images (width 32: 28x28x32, 14x14x64, 7x7x128)
SHAPES = [(128, 32, 28, 28), (128, 64, 14, 14), (128, 128, 7, 7)]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "relu": F.relu, "gelu-tanh": lambda x: F.gelu(x, approximate="tanh")}


def median_ms(step: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; forward + backward, ms (median of {args.repeats})")
    print("| shape | precision | layout | " + " | ".join(ACTIVATIONS) + " |")
    print("|---|---|---|" + "---|" * len(ACTIVATIONS))
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(shape).to(dtype).contiguous(memory_format=layout).requires_grad_()
                grad = torch.randn(shape).to(dtype).contiguous(memory_format=layout)
                cells = [median_ms(lambda f=f: f(x).backward(grad), args.repeats) for f in ACTIVATIONS.values()]
                print(f"| {'x'.join(map(str, shape))} | {'fp32' if dtype == torch.float32 else 'bf16'} | "
                      f"{'NCHW' if layout == torch.contiguous_format else 'NHWC'} | "
                      + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
