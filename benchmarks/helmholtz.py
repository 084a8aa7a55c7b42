"""Benchmark: the DDC Helmholtz machine against reweighted wake-sleep and the VAE.

Vértes & Sahani 2018 (arXiv:1805.11051) argue that a distributional posterior code is more accurate
than a parametric recognition model; Bornschein & Bengio 2015 (arXiv:1406.2751) train sigmoid belief
nets by importance-weighted wake-sleep. Two measurements:

1. **Posterior accuracy on an enumerable toy**: a fixed sigmoid belief net with 3 + 2 binary latents
   over 8 binary pixels, weights N(0, 2^2) (strong explaining away; the net of tests/test_helmholtz.py).
   Only the recognition model is trained, ``--toy-steps`` steps of batch 128 on the fixed model (Adam,
   lr 3e-3 with a cosine decay; DDC features 50, recognition MLP (64, 64) for both; DDC:
   sleep regression; RWS: wake q with K=5 proposals on the model's own data, plus sleep q), then
   E[z|x] is compared with exact enumeration on 2000 fresh x: mean absolute error over units.
   RWS gives E[z|x] two ways: q's own means (Monte Carlo, 1000 draws), and self-normalised
   importance sampling with the K=5 proposals its wake phase uses. The VAE has a continuous latent
   and a different generative model: no enumerable posterior, no row.
2. **Test log-likelihood on binarized 8x8 digits** (dgm ``digits``, binary-dynamic; test split
   binarized once with a fixed seed): ``ddc-hm`` and ``rws`` on the same sigmoid belief net
   (latents 32-16 binary), ``vae`` with a 16-d Gaussian latent and MLP (128,) encoder and decoder,
   ``vae-affine`` with a 48-d Gaussian latent and affine encoder and decoder (the nets' observation
   layer is affine too); each trained ``--epochs`` epochs (Adam, lr 1e-3 cosine, batch 64), scored by
   ``dgm.evaluate(model, test, ["nll"], k=K)``: the importance-sampled bound with the same K for all
   (RWS: its q; DDC: the factorial proposal with the DDC's means; VAE: its encoder). For the two
   belief nets, a second score of the same frozen p with a fresh layered RWS q (MLP (128,), K=10)
   fitted to it for ``--rescore-epochs`` epochs: it tells a loose proposal from a worse model.

    python benchmarks/helmholtz.py --out runs/bench-helmholtz                       # ~6 min on 1 thread
    python benchmarks/helmholtz.py --epochs 1 --toy-steps 20 --k 10 --seeds 0 --out /tmp/hh  # smoke run

Writes ``OUT/results.json`` and prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import dgm
from dgm.data.core import Batch, DataSpec
from dgm.models import Progress, create
from dgm.models.helmholtz import exact_posterior
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig

TOY_SPEC = DataSpec("toy", (8,), "binary-dynamic", levels=2)
TOY_DIMS = (3, 2)
DIGITS = {  # row: (registry name, settings)
    "ddc-hm": ("ddc-hm", {"latent_dims": (32, 16), "features": 200, "hidden": (128, 128)}),
    "rws": ("rws", {"latent_dims": (32, 16), "samples": 5}),
    "vae": ("vae", {"latent_dim": 16, "hidden": (128,), "likelihood": "bernoulli"}),
    "vae-affine": ("vae", {"latent_dim": 48, "hidden": (), "likelihood": "bernoulli"}),  # decoder affine as the nets'
}


def toy_model(name: str, seed: int, **config):
    """``name`` over the toy, its generative net fixed to the toy's (weights N(0, 4) from seed 0)."""
    torch.manual_seed(seed)
    model = create(name, TOY_SPEC, latent_dims=TOY_DIMS, **config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.generative.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    return model


def train_recognition(model, phase: str, steps: int, seed: int) -> None:
    params = next(p for p in model.phases() if p.name == phase).parameters
    opt = torch.optim.Adam(params, 3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, _ = model.dream(128, g)  # RWS's wake q reads the model's own data
        loss = model.loss(Batch(x), phase, Progress(generator=g)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()


def toy_errors(steps: int, seed: int) -> dict[str, float]:
    ddc = toy_model("ddc-hm", seed, features=50, hidden=(64, 64), sleep_samples=128)
    rws = toy_model("rws", seed, hidden=(64, 64), samples=5)
    start = time.perf_counter()
    train_recognition(ddc, "sleep", steps, seed)
    train_recognition(rws, "recognition", steps, seed)
    x, _ = ddc.dream(2000, torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        _, exact = exact_posterior(ddc.generative, x)
        g = torch.Generator().manual_seed(seed)
        zs, _ = rws.propose(x, 1000, generator=g)
        q_mean = torch.cat(zs, -1).view(1000, len(x), -1).mean(0)
        zs, log_q = rws.propose(x, 5, generator=g)
        log_w = (rws.generative.log_joint(x.repeat(5, 1), zs) - log_q).view(5, len(x))
        snis = (log_w.softmax(0)[..., None] * torch.cat(zs, -1).view(5, len(x), -1)).sum(0)
        return {"ddc-hm (DDC readout)": (ddc.posterior_mean(x) - exact).abs().mean().item(),
                "rws (q's means)": (q_mean - exact).abs().mean().item(),
                "rws (self-normalised IS, K=5)": (snis - exact).abs().mean().item(),
                "prior means (input-blind)": (exact.mean(0) - exact).abs().mean().item(),
                "seconds": time.perf_counter() - start}


def rescore_with_fitted_q(model, train, test, k: int, epochs: int, seed: int) -> float:
    """Test NLL of ``model``'s generative net (frozen) under the importance-sampled bound with a
    layered RWS proposal q fitted to it afterwards (``epochs`` epochs of wake + sleep q updates):
    separates a loose proposal from a worse model."""
    rws = create("rws", model.spec, latent_dims=model.config.latent_dims, latents=model.config.latents,
                 hidden=(128,), samples=10)
    rws.generative.load_state_dict(model.generative.state_dict())
    opt = torch.optim.Adam(rws.up.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in train.batches(64, shuffle=True, generator=g):
            loss = rws.loss(batch, "recognition", Progress(generator=g)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.inference_mode():
        bound = torch.cat([rws.iwae_bound(b.x, k, chunk=250, generator=g) for b in test.batches(100)])
    return -bound.mean().item()


def digits_nll(row: str, epochs: int, k: int, seed: int, out: Path, rescore_epochs: int) -> dict:
    name, settings = DIGITS[row]
    config = RunConfig(name, settings, DataConfig("digits", representation="binary-dynamic"),
                       TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, schedule="cosine", seed=seed, progress=False,
                                   sample_every=0, device="cpu"))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / f"{row}-seed{seed}")
    train_seconds = time.perf_counter() - start
    test = load_data(config, "test")
    scored = dgm.evaluate(model, test, ["nll"], k=k, progress=False)
    nll = next(r for r in scored if r.metric == "nll" and r.unit == "nats")
    result = {"model": row, "seed": seed, "nll": nll.value, "stderr": nll.details["stderr"], "how": nll.qualifier,
              "params": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
              "n_test": len(test)}
    if name in ("ddc-hm", "rws") and rescore_epochs:
        result["nll_fitted_q"] = rescore_with_fitted_q(model, load_data(config, "train"), test, k, rescore_epochs, seed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy-steps", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the test log-likelihood")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(DIGITS), choices=DIGITS)
    parser.add_argument("--rescore-epochs", type=int, default=30,
                        help="epochs of a fresh RWS q fitted to each trained net's frozen p, to rescore it (0: off)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-helmholtz")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    toy = [toy_errors(args.toy_steps, s) for s in args.seeds]
    print(json.dumps(toy), flush=True)
    digits = []
    for seed in args.seeds:
        for row in args.models:
            digits.append(digits_nll(row, args.epochs, args.k, seed, out, args.rescore_epochs))
            print(json.dumps(digits[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/helmholtz.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "toy": toy, "digits": digits}, indent=2))

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    print(f"\nToy posterior, MAE of E[z|x] vs enumeration ({args.toy_steps} recognition steps, "
          f"seeds {args.seeds}, mean ± sd over seeds)\n")
    print("| recognition | MAE of E[z|x] |\n|---|---|")
    for key in toy[0]:
        if key != "seconds":
            print(f"| {key} | {spread([t[key] for t in toy])} |")
    print(f"\nBinarized digits, test NLL (nats), IWAE-style bound k={args.k}, {args.epochs} epochs, "
          f"n={digits[0]['n_test']} test images, mean ± sd over seeds {args.seeds}\n")
    print("| model | params | test NLL (nats) | same p, fitted RWS q | train (s) |\n|---|---|---|---|---|")
    for row in args.models:
        rs = [d for d in digits if d["model"] == row]
        fitted = spread([d["nll_fitted_q"] for d in rs]) if "nll_fitted_q" in rs[0] else "–"
        print(f"| {row} | {rs[0]['params']} | {spread([d['nll'] for d in rs])} | {fitted} | "
              f"{statistics.mean(d['train_seconds'] for d in rs):.0f} |")


if __name__ == "__main__":
    main()
