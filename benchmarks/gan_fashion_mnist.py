"""GANs on Fashion-MNIST: FID[fmnist-net], KID, precision and recall of 10,000 samples against the
10,000 test images, with the training time on this CPU; and BiGAN's linear probe against a VAE's.

Each model trains through ``dgm.train`` (bf16 autocast, batch 64, EMA generator 0.999) and is
evaluated with ``dgm.evaluate`` exactly as ``dgm eval RUN --metrics fid,kid,precision_recall`` does.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/gan_fashion_mnist.py --epochs 5 --out /tmp/bench/gan-fmnist
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from parallel import run_all, training_rate

RUNS = {  # name in the table -> (registered model, settings)
    "DCGAN (non-saturating)": ("gan", {}),
    "WGAN-GP": ("wgan-gp", {}),
    "hinge + SN": ("sngan", {}),
    "conditional GAN (projection)": ("cgan", {}),
    "BiGAN": ("bigan", {}),
    "VAE (conv; latent 64)": ("vae", {"model.network": "conv", "model.latent_dim": 64, "model.likelihood": "logistic",
                                      "train.lr": 1e-3, "train.ema": None}),
}
COMMON = {"model.width": 32, "train.batch_size": 64, "train.precision": "bf16", "train.ema": 0.999,
          "train.sample_every": 1}
QUALITY = ["fid", "kid", "precision_recall"]


def one_run(job: tuple[str, int, str, int]) -> dict:
    import torch

    torch.set_num_threads(job[3])
    import dgm
    from dgm.eval import evaluate

    label, epochs, out, _ = job
    model_name, settings = RUNS[label]
    config = dgm.RunConfig(model_name, data=dgm.DataConfig("fashion-mnist"))
    common = {k: v for k, v in COMMON.items() if model_name != "vae" or not k.startswith("model.")}
    for key, value in {**common, **settings, "train.epochs": epochs, "train.progress": False}.items():
        config.set(key, value)
    run_dir = Path(out) / label.split(" ")[0].lower().replace("+", "")
    start = time.perf_counter()
    model, _ = dgm.train(config, run_dir)
    seconds = time.perf_counter() - start
    metrics = (QUALITY if model_name != "vae" else []) + (["linear_probe", "knn"] if "encode" in
                                                          dgm.capabilities(model) else [])
    test, train = dgm.run.load_data(config, "test"), dgm.run.load_data(config, "train")
    start = time.perf_counter()
    results = evaluate(model, test, metrics, train=train, num_samples=10000, progress=False)
    from dgm.train.checkpoint import save_json

    save_json([r.to_json() for r in results], run_dir / "eval.json")
    return {"run": label, "model": model_name, "epochs": epochs, "train_seconds": seconds,
            "eval_seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters()),
            **{r.metric: r.value for r in results}, "qualifiers": {r.metric: r.qualifier for r in results}}


def throughput(labels: list[str], steps: int = 40, repeats: int = 3) -> None:
    """Training examples per second (one example = one example of one phase's step), the trainer
    alone on the machine with 2 threads: median of ``repeats`` runs of ``steps`` steps after a warm-up."""
    import torch

    import dgm
    from dgm.train.trainer import TrainConfig

    torch.set_num_threads(2)
    data = dgm.data.load("fashion-mnist", "train").with_representation("signed").subset(20000)
    for label in labels:
        name, settings = RUNS[label]
        if name == "vae":
            continue
        for precision in ("fp32", "bf16"):
            model = dgm.create(name, data.spec, width=COMMON["model.width"])
            config = TrainConfig(epochs=1, batch_size=COMMON["train.batch_size"], progress=False, device="cpu",
                                 precision=precision, max_steps_per_epoch=steps, sample_every=0)
            rate = training_rate(model, data, config, repeats)
            print(f"{label}: {precision} {rate:.0f} examples/s", flush=True)


def table(rows: list[dict]) -> str:
    lines = ["| model | epochs | params | train time | FID[fmnist-net] | KID | precision | recall | linear probe | 5-NN |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(key: str, fmt: str) -> str:
            return fmt.format(r[key]) if key in r else "–"
        lines.append(f"| {r['run']} | {r['epochs']} | {r['params'] / 1e6:.2f} M | {r['train_seconds'] / 60:.1f} min | "
                     f"{f('fid', '{:.2f}')} | {f('kid', '{:.3f}')} | {f('precision', '{:.3f}')} | "
                     f"{f('recall', '{:.3f}')} | {f('linear_probe', '{:.1f}%')} | {f('knn', '{:.1f}%')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated rows of the table")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default="/tmp/bench/gan-fmnist")
    parser.add_argument("--throughput", action="store_true", help="only measure training examples/s")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.runs.split(","))
        return
    jobs = [(label, args.epochs, args.out, args.threads) for label in args.runs.split(",")]
    rows = run_all(one_run, jobs, args.workers, args.out)
    print(table(rows))


if __name__ == "__main__":
    main()
