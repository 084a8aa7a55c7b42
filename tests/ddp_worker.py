"""One process of the data-parallel tests (tests/test_distributed.py), started by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py BASE

It joins the process group itself and trains every job of :data:`JOBS` into BASE/NAME with
``dgm.run.train`` (which keeps a group it did not open), then an interrupted-and-resumed run, and
writes BASE/writes-RANK.json: every file or folder this process created, renamed or opened for writing
under BASE (an audit hook sees them all, Python's and the C libraries' alike through ``open``,
``os.replace`` and ``os.mkdir``), so the test can check that only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

COMMON = {"train.epochs": 2, "train.batch_size": 64, "train.max_steps_per_epoch": 3, "train.log_every": 2,
          "train.progress": False, "train.device": "cpu"}
JOBS = {  # name -> (model, data, settings): a VAE (MLP and conv), an MLP GAN (no batch norm), a DDPM, a two-stage VQ-VAE
    "vae": ("vae", "digits", {}),
    "vae-conv": ("vae", "digits", {"model.network": "conv", "model.width": 8, "train.sample_every": 0}),  # channels_last
    "gan": ("gan", "ring8", {}),
    "ddpm": ("ddpm", "digits", {"model.width": 16, "train.sample_every": 0}),
    "vqvae": ("vqvae", "digits", {"model.vqvae_epochs": 1, "model.num_codes": 32, "train.sample_every": 0}),
}


def config(name: str, **changes: object):  # noqa: ANN201 (a dgm.RunConfig)
    import dgm

    model, data, settings = JOBS[name]
    c = dgm.RunConfig(model, data=dgm.DataConfig(data))
    for key, value in {**COMMON, **settings, **changes}.items():
        c.set(key, value)
    return c


def main(base: Path) -> None:
    rank = int(os.environ["RANK"])
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event in ("open", "os.rename", "os.replace", "os.mkdir") and args and isinstance(args[0], (str, Path)):
            path = str(args[0])
            writing = event != "open" or (isinstance(args[1], str) and any(m in args[1] for m in "wax+")) \
                or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and path.startswith(str(base)) and "writes-" not in path:
                writes.append(f"{event} {path}")

    sys.addaudithook(audit)
    import torch
    import torch.distributed as dist

    from dgm import run

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for name in JOBS:
        run.train(config(name), base / name)
    run.train(config("vae", **{"train.epochs": 1}), base / "resume")  # stopped after one of the two epochs
    run.train(config("vae"), base / "resume", resume=True)
    run.train(config("vae", **{"train.epochs": 1}), base / "half")  # the test resumes it in one process
    dist.barrier()
    (base / f"writes-{rank}.json").write_text(json.dumps(writes))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
