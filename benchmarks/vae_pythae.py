"""Benchmark: dgm's VAE beside pythae's, on pythae's default MLP VAE (or dgm's conv VAE), in one run.

The network is pythae's default (``Encoder_VAE_MLP`` / ``Decoder_AE_MLP``: 784-512-ReLU-(16, 16)
and 16-512-ReLU-784-sigmoid, 829,232 parameters), which dgm builds as
``vae --set model.hidden=[512] model.activation=relu`` (the same layers and shapes; the mean and
log-variance heads are one 512x32 layer). Both train with a Bernoulli likelihood (pythae's
``reconstruction_loss="bce"``) on the same pixels, Fashion-MNIST binarized once with dgm's fixed
seed, for ``--epochs`` epochs at batch 128 with Adam at 1e-3, each through its own trainer as a
user would run it (dgm's ``Trainer.fit`` with its epoch-end checkpoints, pythae's
``TrainingPipeline`` with its final save). pythae runs in its own environment (its mixed precision
is CUDA-only, so on a CPU it trains in fp32); dgm in fp32 and under bf16 autocast. The three runs
alternate ``--repeats`` times; the table gives each one's median seconds and examples/s. dgm trains
twice the epochs, with a copy of its weights at every epoch end and the seconds until then, so the
table also has dgm at pythae's wall-clock: its last epoch that ended within pythae's median time.

Test NLL: the last run of each library is evaluated by one estimator, dgm's IWAE bound with
``--k`` samples on the first ``--n-test`` test images (pythae's trained weights are loaded into
dgm's identical network), in fp32 with the same noise: after the same epochs, and at equal
wall-clock.

``--network conv``: dgm's default conv VAE (``model.network=conv``, width 32, latent 16: 1,373,985
parameters), which the peer script declares in plain PyTorch under dgm's module names and hands to
pythae as its encoder and decoder (a pythae user's custom networks); the weights map one to one.
dgm trains it in channels_last (``train.memory_format=auto``), pythae in PyTorch's default layout.

    bash benchmarks/peers/setup.sh /tmp/pythae pythae==0.1.2
    python benchmarks/vae_pythae.py --peer-python /tmp/pythae/bin/python      # ~5 min on 2 CPU cores
    python benchmarks/vae_pythae.py --peer-python /tmp/pythae/bin/python --network conv \
        --max-examples 10000 --epochs 2 --k 100 --n-test 500                  # ~10 min
    python benchmarks/vae_pythae.py --peer-python ... --device cuda           # the GPU variant, when one is lent
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):  # glibc reads these at start-up
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dgm  # noqa: E402
from dgm.train import TrainConfig, Trainer  # noqa: E402
from trainer_throughput import cpu_name  # noqa: E402

PEER = Path(__file__).parent / "peers" / "pythae_vae.py"
NETWORKS = {"mlp": {"hidden": (512,), "latent_dim": 16, "activation": "relu", "likelihood": "bernoulli"},
            "conv": {"network": "conv", "width": 32, "latent_dim": 16, "likelihood": "bernoulli"}}


def pythae_to_dgm(weights: dict[str, np.ndarray], network: str) -> dict[str, torch.Tensor]:
    """pythae's VAE's state dict under dgm's names: the conv networks carry dgm's names already; the
    default MLP's two heads become one layer, mean first."""
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    if network == "conv":
        return w
    return {"encoder.1.0.weight": w["encoder.layers.0.0.weight"], "encoder.1.0.bias": w["encoder.layers.0.0.bias"],
            "encoder.1.2.weight": torch.cat([w["encoder.embedding.weight"], w["encoder.log_var.weight"]]),
            "encoder.1.2.bias": torch.cat([w["encoder.embedding.bias"], w["encoder.log_var.bias"]]),
            "decoder.0.0.weight": w["decoder.layers.0.0.weight"], "decoder.0.0.bias": w["decoder.layers.0.0.bias"],
            # pythae's decoder ends in a sigmoid; dgm's Bernoulli takes the logits before it
            "decoder.0.2.weight": w["decoder.layers.1.0.weight"], "decoder.0.2.bias": w["decoder.layers.1.0.bias"]}


class Snapshots:
    """Trainer callback: the seconds since ``start`` and a copy of the weights at each epoch end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def train_dgm(train: dgm.data.Dataset, precision: str, epochs: int, args: argparse.Namespace) -> Snapshots:
    torch.manual_seed(args.seed)
    model = dgm.create("vae", train.spec, **NETWORKS[args.network])
    with tempfile.TemporaryDirectory() as tmp:
        snapshots = Snapshots()
        trainer = Trainer(model, train, TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                                                    precision=precision, seed=args.seed, progress=False,
                                                    device=args.device, sample_every=0), run_dir=tmp,
                          callbacks=[snapshots])
        snapshots.start = time.perf_counter()
        trainer.fit()
        return snapshots


def train_pythae(data_file: Path, weights_file: Path, args: argparse.Namespace) -> float:
    done = subprocess.run([args.peer_python, str(PEER), "--data", str(data_file), "--out", str(weights_file),
                           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                           "--threads", str(args.threads), "--seed", str(args.seed), "--network", args.network, "--device", args.device],
                          capture_output=True, text=True, env={**os.environ, **MALLOC})
    if done.returncode:
        sys.exit(f"the pythae run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def test_nll(model: dgm.models.base.GenerativeModel, x: torch.Tensor, k: int) -> float:
    """-mean IWAE bound (nats) with ``k`` samples, the same noise for every model."""
    model = model.float().cpu().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        bounds = [model.iwae_bound(x[i:i + 100], k, generator=generator) for i in range(0, len(x), 100)]
    return -torch.cat(bounds).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="python of the environment that has pythae")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the test bound")
    parser.add_argument("--max-examples", type=int, help="train on the first N images (quick runs)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU variant (both libraries)")
    parser.add_argument("--network", choices=list(NETWORKS), default="mlp",
                        help="pythae's default MLP, or dgm's conv networks in both libraries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = dgm.data.load("fashion-mnist", "train", representation="binary-static")
    if args.max_examples:
        train = train.subset(args.max_examples)
    x_test = dgm.data.load("fashion-mnist", "test", representation="binary-static").tensors(args.n_test).x
    runs: dict[str, list[Snapshots]] = {"dgm fp32": [], "dgm bf16": []}
    pythae_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_file, weights_file = Path(tmp) / "data.npz", Path(tmp) / "pythae.npz"
        np.savez(data_file, x_train=train.tensors().x.numpy().astype(np.float32))
        for _ in range(args.repeats):  # alternating, so a drift in the machine's speed hits all three
            for precision in ("fp32", "bf16"):  # twice the epochs: the snapshot at pythae's wall-clock
                runs[f"dgm {precision}"].append(train_dgm(train, precision, 2 * args.epochs, args))
            pythae_seconds.append(train_pythae(data_file, weights_file, args))
        peer = dgm.create("vae", train.spec, **NETWORKS[args.network])
        peer.load_state_dict(pythae_to_dgm(dict(np.load(weights_file, allow_pickle=False)), args.network))
    n, budget = args.epochs * len(train), statistics.median(pythae_seconds)
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
          f"{'pythae' if args.network == 'mlp' else 'dgm'}'s default {args.network} VAE ({sum(p.numel() for p in peer.parameters()):,} parameters), binarized Fashion-MNIST "
          f"({len(train):,} images), batch {args.batch_size}, median of {args.repeats} alternating runs; test NLL: "
          f"IWAE k={args.k} on {len(x_test)} test images")
    print(f"| library | precision | seconds for {args.epochs} epochs | examples/s | dgm / pythae "
          f"| test NLL after {args.epochs} epochs (nats) | at pythae's {budget:.1f} s: epochs | test NLL (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, snapshots in runs.items():
        seconds = statistics.median(s.seconds[args.epochs - 1] for s in snapshots)
        last = snapshots[-1]
        within = max((e for e, t in enumerate(last.seconds) if t <= budget), default=None)
        model = dgm.create("vae", train.spec, **NETWORKS[args.network])
        model.load_state_dict(last.weights[args.epochs - 1])
        same_epochs = test_nll(model, x_test, args.k)
        at_budget = "| - | -"
        if within is not None:
            model.load_state_dict(last.weights[within])
            at_budget = f"| {within + 1} | {test_nll(model, x_test, args.k):.2f}"
        print(f"| dgm | {name.split()[1]} | {seconds:.1f} | {n / seconds:,.0f} | {budget / seconds:.2f}x "
              f"| {same_epochs:.2f} {at_budget} |")
    nll = test_nll(peer, x_test, args.k)
    print(f"| pythae | fp32 | {budget:.1f} | {n / budget:,.0f} | 1.00x | {nll:.2f} | {args.epochs} | {nll:.2f} |")

if __name__ == "__main__":
    main()
