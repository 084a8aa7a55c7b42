"""Benchmark: 3-D shapes from 2-D views on ``voxels`` (16^3), the setting of Rezende et al. 2016
("Unsupervised Learning of 3D Structure from Images", arXiv:1607.00662) at toy scale.

For each seed, ``voxel-vae`` is trained twice for the same number of Adam steps (batch 64, lr 1e-3):
``observe=volume`` (on the voxels: ELBO) and ``observe=views`` (on three silhouettes at azimuths 0,
60, 120 degrees, elevation 20, never on voxels; its encoder reads the first silhouette only). On the
first ``--test`` test volumes it reports

* voxel IoU (occupancy probability > 1/2 against the true voxels) of the shape inferred from the
  first silhouette alone (``views``), of the reconstruction from the whole volume (``volume``, an
  upper reference: its encoder sees the voxels), and of the visual hull of the one silhouette (the
  silhouette extruded through the depth: what one view says without a model);
* the test log-likelihood bound of the volume model, IWAE with k = ``--k`` (nats per volume).

    python benchmarks/voxels_3d.py --steps 500 --seeds 0 1      # ~6.5 min on one thread (shared 2-core machine)
    python benchmarks/voxels_3d.py --steps 50 --seeds 0 --test 100
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import dgm
from dgm.data import load
from dgm.models import Progress
from dgm.data import projection


def iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Voxel IoU of each volume ``(B,)`` for boolean volumes ``(B, 1, D, H, W)``."""
    inter = (predicted & truth).flatten(1).sum(1).float()
    union = (predicted | truth).flatten(1).sum(1).float().clamp_min(1)
    return inter / union


def train(observe: str, seed: int, args: argparse.Namespace) -> dgm.models.GenerativeModel:
    data = load("voxels", "train", representation="binary-dynamic")
    torch.manual_seed(seed)
    model = dgm.create("voxel-vae", data.spec, observe=observe)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    progress = Progress(generator=g, total_steps=args.steps)
    def forever():  # epochs one after another
        while True:
            yield from data.batches(64, shuffle=True, drop_last=True, generator=g)

    for step, batch in zip(range(args.steps), forever()):
        progress.step = step
        loss = model.loss(batch, "model", progress).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", type=int, default=500, help="test volumes scored")
    parser.add_argument("--k", type=int, default=50, help="importance samples of the IWAE bound")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = load("voxels", "test", representation="binary-dynamic").tensors(args.test).x  # (N, 1, 16, 16, 16)
    truth = x > 0.5
    rows: dict[str, list[float]] = {"views": [], "volume": [], "hull": [], "iwae": [], "elbo": []}
    for seed in args.seeds:
        start = time.perf_counter()
        volume_model, views_model = train("volume", seed, args), train("views", seed, args)
        with torch.no_grad():
            view = views_model.views(x, first=True)  # (N, 1, 16, 16) the first silhouette
            rows["views"].append(iou(views_model.shape_from_view(view) > 0.5, truth).mean().item())
            rows["volume"].append(iou(volume_model.reconstruct(x) > 0.5, truth).mean().item())
            hull = (view > 0.5).unsqueeze(2).expand_as(x)  # extruded through depth: the axis-aligned first view
            if views_model.config.elevation != 0 or views_model.config.views[0] != 0:
                # the first view is turned: extrude it in the turned frame and turn back (R^-1 = R^T)
                e, a = views_model.angles()[0][1], views_model.angles()[0][0]
                R = projection.rotation_matrix(torch.tensor([a]), torch.tensor([e]))[0]
                hull = projection.rotate(hull.float(), R.T) > 0.5
            rows["hull"].append(iou(hull, truth).mean().item())
            torch.manual_seed(seed)
            rows["iwae"].append(torch.cat([volume_model.iwae_bound(b, args.k) for b in x.split(100)]).mean().item())
            rows["elbo"].append(torch.cat([volume_model.elbo(b) for b in x.split(100)]).mean().item())
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in rows.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    print(f"\n| measure ({len(args.seeds)} seeds, {args.steps} steps, {args.test} test volumes) | mean ± sd |")
    print("|---|---|")
    print(f"| IoU, shape from one silhouette (observe=views) | {cell(rows['views'])} |")
    print(f"| IoU, visual hull of that silhouette (no model) | {cell(rows['hull'])} |")
    print(f"| IoU, reconstruction from the volume (observe=volume) | {cell(rows['volume'])} |")
    print(f"| test log-likelihood, IWAE k={args.k} (observe=volume), nats/volume | {cell(rows['iwae'])} |")
    print(f"| test ELBO (observe=volume), nats/volume | {cell(rows['elbo'])} |")


if __name__ == "__main__":
    main()
