"""Peak memory and time of generating from a Fashion-MNIST DDPM: ``dgm sample -n 64`` with the full
1000-step chain, the epoch-end sample grid and the end-of-training report (docs/benchmarks.md).

Each measurement runs in its own process (peak RSS from getrusage), with an address-space cap so a
run that keeps autograd graphs fails instead of taking the machine down. The weights are a few
training steps old: memory and time do not depend on how well the model is trained.

    python benchmarks/ddpm_generation_cost.py --out /tmp/ddpm-cost [--cap-gib 16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
run_dir, what = sys.argv[1], sys.argv[2]
import dgm
from dgm import run
model = dgm.load(run_dir)
config, _ = run.read_config(run_dir)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak so far, GiB
def current():  # resident set now, GiB
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30
calls, trace, during = [0], [], [0.0]
def hook(*_):  # after every network evaluation of the chain
    calls[0] += 1
    during[0] = max(during[0], current())
    if calls[0] % 100 == 0:
        trace.append((calls[0], round(current(), 3)))
import dgm.models.diffusion as diffusion
forward = diffusion.UNet.forward
def counted(self, *a, **k):  # every U-Net of the process, also the one the CLI loads itself
    out = forward(self, *a, **k)
    hook()
    return out
diffusion.UNet.forward = counted
params_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
base = current()
start = time.perf_counter()
status = "ok"
try:
    if what == "sample":
        from dgm.cli import main
        main([ "sample", run_dir, "-n", "64", "--sampler", "ddpm", "-o", run_dir + "/cost-samples.png"])
    elif what == "grid":
        from dgm.train.trainer import Trainer
        config.train.progress = False
        trainer = Trainer(model, run.load_data(config, "train"), config.train, run_dir=None)
        trainer.save_sample_grid(__import__("pathlib").Path(run_dir) / "cost-grid.png")
    elif what == "report":
        import inspect
        from dgm.report import write_report
        # the end-of-training report draws every picture afresh (later reports reuse them)
        fresh = {"redraw": True} if "redraw" in inspect.signature(write_report).parameters else {}
        write_report(run_dir, model, run.load_data(config, "test"), **fresh)
except (RuntimeError, MemoryError) as e:
    status = "failed: " + str(e).splitlines()[0][:120]
print(json.dumps({"what": what, "seconds": time.perf_counter() - start, "status": status,
                  "network_calls": calls[0], "parameters_gib": params_gib, "rss_before_gib": base,
                  "max_rss_during_gib": during[0], "peak_rss_gib": rss(), "trace": trace}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/ddpm-cost")
    p.add_argument("--cap-gib", type=float, default=16.0, help="address-space cap of each measurement")
    p.add_argument("--only", default="sample,grid,report")
    args = p.parse_args()
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="1000000000", MALLOC_MMAP_THRESHOLD_="1000000000",
               OMP_NUM_THREADS="2")
    run_dir = Path(args.out) / "ddpm"
    if not (run_dir / "weights.safetensors").exists():
        from dgm import run
        config = run.RunConfig("ddpm", data=run.DataConfig("fashion-mnist"))
        for key, value in {"train.epochs": 1, "train.max_steps_per_epoch": 5, "train.sample_every": 0,
                           "train.progress": False}.items():
            config.set(key, value)
        run.train(config, run_dir)
    cap = int(args.cap_gib * 2**30)
    for what in args.only.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), what], env=env, capture_output=True,
                              text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"what": what, "status": f"died (exit {proc.returncode})",
                                                      "stderr": proc.stderr[-300:]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
