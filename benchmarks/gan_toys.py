"""Mode collapse on the 2-D mixtures: modes captured / % high-quality samples / reverse KL, mean ± sd
over seeds, for the GAN variants, beside the published rows of ../shared/REFERENCES.md (PacGAN
Table 1, VEEGAN Table 1). Protocol of PacGAN / VEEGAN: 2500 samples; a sample is high quality
within 3 sd of its nearest mode; a mode is captured when it is the nearest mode of a high-quality
sample; reverse KL of the high-quality samples' mode histogram to uniform.

Every run goes through the public path (``dgm.train`` into a run directory, ``dgm.evaluate`` with
the ``mode_coverage`` metric on the EMA weights), so mode coverage is also logged per epoch in each
run's metrics.csv.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/gan_toys.py --seeds 5 --out /tmp/bench/gan-toys
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path

from parallel import run_all

METHODS = {  # name in the table -> (registered model, its own settings)
    "GAN (non-saturating)": ("gan", {}),
    "WGAN-GP": ("wgan-gp", {}),
    "LSGAN": ("lsgan", {}),
    "hinge + SN": ("sngan", {}),
    "BiGAN": ("bigan", {}),
    "PacGAN2": ("pacgan", {}),
    # the zero-centred R1 penalty (Mescheder et al. 2018) at a small gamma: balances the modes' mass
    "GAN + R1": ("gan", {"model.r1": 0.1}),
    "LSGAN + R1": ("lsgan", {"model.r1": 0.1}),
}
TOYS = ("ring8", "grid25")
#: shared by every method: network size, budget and optimiser (each keeps its own loss, k and penalties)
COMMON = {"model.hidden": "128,128,128", "model.latent_dim": 64, "model.lr_critic": 1e-3, "model.lr_generator": 1e-3,
          "train.batch_size": 256, "train.schedule": "cosine", "train.ema": 0.999, "train.sample_every": 0}
PUBLISHED = {  # ring: modes / HQ % / rev KL, grid: the same (REFERENCES.md)
    "GAN (PacGAN Table 1)": ((6.3, 98.2, 0.45), (17.3, 94.8, 0.70)),
    "ALI (PacGAN Table 1)": ((6.6, 97.6, 0.36), (24.1, 95.7, 0.14)),
    "PacGAN2 (PacGAN Table 1)": ((7.9, 95.6, 0.07), (23.8, 91.3, 0.13)),
    "PacGAN4 (PacGAN Table 1)": ((7.8, 95.9, 0.07), (24.8, 93.6, 0.04)),
    "Unrolled GAN (VEEGAN Table 1)": ((7.6, 35.6, None), (23.6, 16, None)),
    "VEEGAN (VEEGAN Table 1)": ((8, 52.9, None), (24.6, 40, None)),
}


def one_run(job: tuple[str, str, int, int, str, dict]) -> dict:
    import torch

    torch.set_num_threads(1)
    import dgm
    from dgm.eval import evaluate

    label, toy, seed, epochs, out, extra = job
    model_name, settings = METHODS[label]
    config = dgm.RunConfig(model_name, data=dgm.DataConfig(toy))
    for key, value in {**COMMON, **settings, **extra, "train.epochs": epochs, "train.seed": seed,
                       "train.progress": False, "train.device": "cpu"}.items():
        config.set(key, value)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    run_dir = Path(out) / f"{slug}-{toy}-seed{seed}"
    start = time.perf_counter()
    model, _ = dgm.train(config, run_dir)
    seconds = time.perf_counter() - start
    results = evaluate(model, dgm.run.load_data(config, "test"), ["mode_coverage"], num_samples=2500,
                       seed=seed, progress=False)
    values = {r.metric: r.value for r in results}
    return {"method": label, "toy": toy, "seed": seed, "seconds": seconds, **values}


def summary(rows: list[dict]) -> str:
    def cell(method: str, toy: str) -> str:
        runs = [r for r in rows if r["method"] == method and r["toy"] == toy]
        if not runs:
            return "–"
        parts = []
        for key, fmt in (("modes_captured", "{:.1f}"), ("high_quality", "{:.1f}"), ("reverse_kl", "{:.2f}")):
            # the reverse KL is undefined (NaN) for a run without a single high-quality sample
            values = [r[key] for r in runs if not math.isnan(r[key])]
            if not values:
                parts.append("–")
                continue
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            note = f" ({len(values)} runs)" if len(values) < len(runs) else ""
            parts.append(f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}{note}")
        return " / ".join(parts)

    lines = ["| method | ring8: modes / HQ % / rev KL | grid25: modes / HQ % / rev KL | train time per run |",
             "|---|---|---|---|"]
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:  # the rows that were run
        runs = [r["seconds"] for r in rows if r["method"] == method]
        time_cell = f"{statistics.median(runs):.0f} s (median)"
        lines.append(f"| **dgm {method}** | {cell(method, 'ring8')} | {cell(method, 'grid25')} | {time_cell} |")
    for name, (ring, grid) in PUBLISHED.items():
        fmt = lambda t: " / ".join("–" if v is None else str(v) for v in t)  # noqa: E731
        lines.append(f"| {name} | {fmt(ring)} | {fmt(grid)} | |")
    lines.append("")  # "every mode" is a claim about every seed, so each run's count is listed
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        for toy in TOYS:
            runs = sorted((r for r in rows if r["method"] == method and r["toy"] == toy), key=lambda r: r["seed"])
            if runs:
                each = ", ".join(f"{r['modes_captured']:.0f} ({r['high_quality']:.1f}%)" for r in runs)
                lines.append(f"- {method}, {toy}, modes (HQ) by seed {runs[0]['seed']}..{runs[-1]['seed']}: {each}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100, help="passes over the 50,000 training points")
    parser.add_argument("--methods", default=",".join(list(METHODS)[:6]),
                        help=f"comma-separated rows of the table, from: {', '.join(METHODS)}")
    parser.add_argument("--toys", default=",".join(TOYS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra setting for all")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--out", default="/tmp/bench/gan-toys")
    parser.add_argument("--summary", metavar="RESULTS_JSON", help="only print the table of earlier results")
    args = parser.parse_args()
    if args.summary:
        print(summary(json.loads(Path(args.summary).read_text())))
        return
    extra = dict(s.split("=", 1) for s in args.set)
    jobs = [(m, toy, seed, args.epochs, args.out, extra) for m in args.methods.split(",")
            for toy in args.toys.split(",") for seed in range(args.seeds)]
    rows = run_all(one_run, jobs, args.workers, args.out)
    print(summary(rows))


if __name__ == "__main__":
    main()
