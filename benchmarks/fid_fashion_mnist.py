"""Benchmark: dgm's sample-quality metrics on Fashion-MNIST with the shipped fmnist-net.

1. The floor: FID / KID / precision / recall of 10k Fashion-MNIST *training* images against the 10k
   test images (what a perfect model of the training distribution would score).
2. The time to compute FID for 10k vs 10k images from pixels (feature extraction of both sets,
   statistics, Fréchet distance), with no cache, median of ``--repeats`` runs.
3. Any trained runs given with ``--runs``: FID, KID, IS, precision/recall of 10k samples vs test.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/fid_fashion_mnist.py --runs runs/bench-vae-fmnist/logistic-8bit
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import dgm
from dgm.eval.features import feature_extractor
from dgm.eval.fidelity import GaussianStats, frechet_distance, kid, precision_recall


def fid_from_pixels(extractor, a: torch.Tensor, b: torch.Tensor) -> float:  # noqa: ANN001
    fa, _ = extractor(a)
    fb, _ = extractor(b)
    return frechet_distance(GaussianStats.from_features(fa), GaussianStats.from_features(fb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-fid.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = dgm.data.load("fashion-mnist", "train", representation="unit")
    test = dgm.data.load("fashion-mnist", "test", representation="unit")
    a, b = train.tensors(args.n).x, test.tensors(args.n).x
    extractor = feature_extractor("fmnist-net", train.spec)

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        floor = fid_from_pixels(extractor, a, b)
        times.append(time.perf_counter() - start)
    fa, _ = extractor(a)
    fb, _ = extractor(b)
    kid_mean, kid_std = kid(fa, fb)
    precision, recall = precision_recall(fb, fa)
    rows = [{"what": f"Fashion-MNIST train ({args.n}) vs test ({args.n})", "fid": floor, "kid": kid_mean,
             "kid_std": kid_std, "precision": precision, "recall": recall, "is": None}]
    print(f"FID 10k vs 10k from pixels: median {statistics.median(times):.2f} s over {args.repeats} "
          f"(all: {', '.join(f'{t:.2f}' for t in times)})", flush=True)

    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ["DGM_CACHE"] = cache
        for run in args.runs:
            config, _ = dgm.run.read_config(run)
            model = dgm.load(run)
            data = dgm.run.load_data(config, "test")
            start = time.perf_counter()
            results = {(r.metric): r for r in dgm.evaluate(model, data, ["fid", "kid", "is", "precision_recall"],
                                                           num_samples=args.n, progress=False)}
            rows.append({"what": f"{config.model} {json.dumps(config.model_config.get('likelihood'))} ({run})",
                         "fid": results["fid"].value, "kid": results["kid"].value,
                         "kid_std": results["kid"].details["std"], "precision": results["precision"].value,
                         "recall": results["recall"].value, "is": results["is"].value,
                         "seconds": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"fid_seconds": times, "rows": rows}, indent=2))
    print("\n| samples | FID[fmnist-net] | KID | IS | precision | recall |\n|---|---|---|---|---|---|")
    for r in rows:
        is_ = f"{r['is']:.2f}" if r["is"] is not None else "–"
        print(f"| {r['what']} | {r['fid']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} | {is_} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} |")


if __name__ == "__main__":
    main()
