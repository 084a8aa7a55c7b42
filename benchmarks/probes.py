"""Numerosity probe (Zhao et al. 2018, arXiv:1811.03259, their Fig. 4): a VAE, a GAN and a diffusion
model (DDPM) trained on ``dots3`` (32x32 images of exactly 3 dots), and the share of their samples
with 0, 1, 2, 3, 4, ... dots, counted by :func:`dgm.data.probes.count_dots`. The paper finds the
trained count most often, with neighbours (2, 4) next: the models generalise around it.

Every run goes through the public path (``dgm.train`` into a run directory, then the ``probe``
app's :func:`~dgm.apps.probe.probe_result`); small networks and few epochs, one thread:

    OMP_NUM_THREADS=1 MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/probes.py --out /tmp/bench/probes
    python benchmarks/probes.py --summary /tmp/bench/probes/results.json

The paper's other probes go through the same path with ``--data colours`` (the share of red pixels;
half the area in training) or ``--data combos`` (trained on 2 discs + 1 square and 1 disc + 2 squares:
which other combinations appear); the table then shows the probe's own values.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from parallel import run_all

METHODS = {  # name in the table -> (registered model, its settings at this small scale)
    "VAE (MLP Bernoulli decoder mean)": ("vae", {"model.hidden": "512,256", "model.latent_dim": 16,
                                                   "train.epochs": 20}),
    "GAN (DCGAN non-saturating)": ("gan", {"model.width": 32, "model.latent_dim": 32, "train.epochs": 10,
                                            "train.batch_size": 64}),
    # PacGAN (Lin et al. 2018): the critic judges packs of 4 samples, so it sees when they are alike; without
    # it every loss tried here (plain, R1, WGAN-GP, hinge + spectral norm) collapsed to one pattern for all z
    "GAN (DCGAN non-saturating; PacGAN4)": ("gan", {"model.width": 32, "model.latent_dim": 32, "model.pack": 4,
                                                     "train.epochs": 15, "train.batch_size": 64}),
    # the costliest: a U-Net step per training batch and 25 per sample, so fewer epochs and samples
    "DDPM (U-Net DDIM 25 steps)": ("ddpm", {"model.width": 16, "model.channel_mults": "1,2", "model.sampler": "ddim",
                                            "model.sample_steps": 25, "train.epochs": 3, "train.batch_size": 64,
                                            "samples": 500}),
}
assert not any("," in name for name in METHODS), "--methods is split on commas"
COUNTS = list(range(0, 8))  # the table's columns; more than 7 dots are one column


def one_run(job: tuple[str, int, int, str, dict, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    import dgm
    from dgm.apps.probe import probe_result

    label, seed, num_samples, out, extra, data = job
    model_name, settings = METHODS[label]
    config = dgm.RunConfig(model_name, data=dgm.DataConfig(data))
    settings = dict(settings)
    num_samples = min(num_samples, settings.pop("samples", num_samples))
    for key, value in {**settings, **extra, "train.seed": seed, "train.progress": False, "train.device": "cpu",
                       "train.sample_every": 0}.items():
        config.set(key, value)
    run_dir = Path(out) / f"{model_name}-seed{seed}"
    start = time.perf_counter()
    model, _ = dgm.train(config, run_dir)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = probe_result(model, dgm.run.load_data(config, "train").tensors().x, num_samples=num_samples, seed=seed)
    return {"method": label, "seed": seed, "train_seconds": seconds, "probe_seconds": time.perf_counter() - start,
            "epochs": config.train.epochs, "settings": {k: str(v) for k, v in extra.items()}, **result.to_json()}


def name(r: dict) -> str:
    """The row's label: the method, the settings given with ``--set`` (if any), the epochs and samples."""
    given = ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items() if k != "train.epochs")
    return f"{r['method']}{', ' + given if given else ''}, {r['epochs']} epochs, {r['num_samples']} samples"


def summary(rows: list[dict]) -> str:
    if any(r.get("dataset", "dots3") != "dots3" for r in rows):
        return probe_summary(rows)
    head = " | ".join(str(k) for k in COUNTS)
    lines = [f"| model | train time | {head} | >{COUNTS[-1]} | mean count |", "|---" * (len(COUNTS) + 4) + "|"]
    for r in rows:
        # ">12" (the probe's overflow bin) counts as 13 in the mean: a lower bound there
        share = {int(k): s for k, s in zip(r["values"], r["samples"])}
        more = sum(s for k, s in share.items() if k > COUNTS[-1])
        mean = sum(k * s for k, s in share.items())
        cells = " | ".join(f"{100 * share.get(k, 0.0):.1f}" for k in COUNTS)
        lines.append(f"| {name(r)} | {r['train_seconds']:.0f} s "
                     f"| {cells} | {100 * more:.1f} | {mean:.2f} |")
    lines.append(f"| training images (dots3) | | {' | '.join('100.0' if k == 3 else '0.0' for k in COUNTS)} | 0.0 "
                 f"| 3.00 |")
    return "\n".join(lines)


def probe_summary(rows: list[dict]) -> str:
    """The table of any probe dataset: the share of samples at each value of its feature, named by the
    probe's own labels (the values of the training images and every value a sample took), in %."""
    labels = {int(v): label for r in rows for v, label in zip(r["values"], r["labels"])}
    values = sorted(labels)
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        lines += [f"{dataset}: {group[0]['feature']}, share of images in %", "",
                  f"| model | train time | {' | '.join(labels[v] for v in values)} |", "|---" * (len(values) + 2) + "|"]
        for r in group:
            share = {int(k): s for k, s in zip(r["values"], r["samples"])}
            cells = " | ".join(f"{100 * share.get(v, 0.0):.1f}" for v in values)
            lines.append(f"| {name(r)} | {r['train_seconds']:.0f} s | {cells} |")
        train = {int(k): s for k, s in zip(group[0]["values"], group[0]["train"])}
        lines.append(f"| training images ({dataset}) | | {' | '.join(f'{100 * train.get(v, 0.0):.1f}' for v in values)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--data", default="dots3", help="the probe dataset: dots3 (default), dots2or4, colours or combos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra setting for all")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument("--out", default="/tmp/bench/probes")
    parser.add_argument("--summary", metavar="RESULTS_JSON", help="only print the table of earlier results")
    args = parser.parse_args()
    if args.summary:
        print(summary(json.loads(Path(args.summary).read_text())))
        return
    extra = dict(s.split("=", 1) for s in args.set)
    jobs = [(m, args.seed, args.num_samples, args.out, extra, args.data) for m in args.methods.split(",")]
    rows = run_all(one_run, jobs, args.workers, args.out)
    print(summary(rows))


if __name__ == "__main__":
    main()
