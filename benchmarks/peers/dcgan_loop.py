"""A StudioGAN-style DCGAN training loop in plain PyTorch, timed beside dgm's Trainer on the same
networks, data, batch and precision, in one run.

StudioGAN (and most GAN repositories) train with a hand-written loop: per step a discriminator
update on real images and generated ones made under ``no_grad``, then a generator update on fresh
noise, the non-saturating loss, Adam(2e-4, betas (0.5, 0.999)), each loss read with ``.item()`` for
the log, weights in PyTorch's default NCHW layout, bf16 through ``torch.autocast``. The networks
here are declared in plain PyTorch, layer for layer those of dgm's ``gan`` on 28x28 images
(``DCGANGenerator`` / ``DCGANDiscriminator`` with a linear score head: the script checks that the
parameter counts match), so the two differ only in the loop and the layout (dgm trains the DCGAN
in channels_last, ``train.memory_format=auto``).

    python benchmarks/peers/dcgan_loop.py --steps 30 --repeats 3        # ~3 min on 2 CPU cores
    python benchmarks/peers/dcgan_loop.py --device cuda --steps 200     # the GPU variant, when one is lent

Prints a markdown table: examples/s (median over alternating runs) and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):  # glibc reads these at start-up
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for trainer_throughput
import dgm  # noqa: E402
from dgm.train import TrainConfig, Trainer  # noqa: E402
from trainer_throughput import cpu_name  # noqa: E402


def generator(latent: int = 64, width: int = 64) -> nn.Module:
    ch = 4 * width  # two upsamplings: 7 -> 14 -> 28
    return nn.Sequential(nn.Linear(latent, ch * 7 * 7), nn.Unflatten(1, (ch, 7, 7)), nn.BatchNorm2d(ch), nn.ReLU(),
                         nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU(),
                         nn.ConvTranspose2d(ch // 2, ch // 4, 4, 2, 1), nn.BatchNorm2d(ch // 4), nn.ReLU(),
                         nn.Conv2d(ch // 4, 1, 3, padding=1), nn.Tanh())


def discriminator(width: int = 64) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(2 * width * 7 * 7, 1))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_seconds(x: torch.Tensor, steps: int, batch: int, precision: str, latent: int = 64) -> float:
    """Seconds of ``steps`` StudioGAN-style steps (one D and one G update each), on ``x``'s device."""
    torch.manual_seed(0)
    device = x.device
    g, d = generator(latent).to(device), discriminator().to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    log = []
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(x), (batch,), device=device)
        real = x[index]
        with autocast:
            with torch.no_grad():
                fake = g(torch.randn(batch, latent, device=device))
            loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with autocast:
            loss_g = F.softplus(-d(g(torch.randn(batch, latent, device=device)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        log.append((loss_d.item(), loss_g.item()))  # the per-step log read (a device sync on a GPU)
    synchronize(device)
    return time.perf_counter() - start


def dgm_seconds(data: dgm.data.Dataset, steps: int, batch: int, precision: str,
                device: str = "cpu") -> tuple[float, int]:
    """Seconds of ``steps`` rounds (a critic and a generator step each) of dgm's Trainer, and the
    model's parameter count."""
    torch.manual_seed(0)
    model = dgm.create("gan", data.spec)
    trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=batch, max_steps_per_epoch=2 * steps,
                                               precision=precision, progress=False, device=device, sample_every=0))
    synchronize(torch.device(device))
    start = time.perf_counter()
    trainer.fit()
    synchronize(torch.device(device))
    return time.perf_counter() - start, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="rounds (a D and a G update) per timed run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = dgm.data.load("fashion-mnist", "train", representation="signed")
    x = data.tensors().x.to(args.device)  # resident on the device, as dgm's Trainer keeps a small split
    params = sum(p.numel() for p in [*generator().parameters(), *discriminator().parameters()])
    _, dgm_params = dgm_seconds(data.subset(256), 1, 128, "fp32")
    if params != dgm_params:
        sys.exit(f"the networks differ: {params:,} parameters here, {dgm_params:,} in dgm's gan")
    where = f"{cpu_name()}, {args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"{where}, DCGAN on Fashion-MNIST 28x28 ({params:,} parameters), batch "
          f"{args.batch_size}, {args.steps} rounds (D + G) per run, median of {args.repeats} after a warm-up")
    print("| precision | StudioGAN-style loop examples/s | dgm Trainer examples/s | dgm / loop |")
    print("|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {"loop": [], "dgm": []}
        for i in range(args.repeats + 1):  # alternating; run 0 warms up both
            loop = loop_seconds(x, args.steps, args.batch_size, precision)
            ours, _ = dgm_seconds(data, args.steps, args.batch_size, precision, args.device)
            if i:
                times["loop"].append(loop)
                times["dgm"].append(ours)
        rate = {k: args.steps * args.batch_size / statistics.median(v) for k, v in times.items()}
        print(f"| {precision} | {rate['loop']:,.0f} | {rate['dgm']:,.0f} | {rate['dgm'] / rate['loop']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
