"""diffusers' UNet2DModel + DDPMScheduler training step, timed the way
``benchmarks/diffusion_fashion_mnist.py --throughput`` times dgm's: run in a separate environment
(diffusers next to torch 2.13.0+cpu; no torchvision), prints one JSON line.

    python benchmarks/peers/diffusers_ddpm.py --precision bf16 --batch-size 128 --steps 20
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = args.width
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(w, 2 * w, 2 * w),
                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.rand(args.batch_size * args.steps, 1, 28, 28) * 2 - 1

    def epoch() -> float:
        start = time.perf_counter()
        for i in range(args.steps):
            clean = x0[i * args.batch_size:(i + 1) * args.batch_size]
            noise = torch.randn_like(clean)
            t = torch.randint(0, 1000, (len(clean),))
            noisy = scheduler.add_noise(clean, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                pred = model(noisy, t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    epoch()  # warm-up
    seconds = statistics.median(epoch() for _ in range(args.repeats))
    print(json.dumps({"library": "diffusers", "precision": args.precision, "params": sum(p.numel() for p in model.parameters()),
                      "examples_per_s": args.steps * args.batch_size / seconds}))


if __name__ == "__main__":
    main()
