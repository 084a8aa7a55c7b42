"""zuko's MAF and RealNVP on the Fashion-MNIST flow workload of ``flows_common.py`` (784-d, dequantized,
logit alpha 0.05; Adam 1e-3, wall-clock budget; test bits/dim): run in the separate environment that
``setup_flows.sh`` (``setup.sh``) makes (zuko next to torch 2.13.0+cpu; no torchvision), prints one JSON line.

    bash benchmarks/peers/setup_flows.sh /tmp/flowpeers
    /tmp/flowpeers/bin/python benchmarks/peers/flows_zuko.py --model maf --seconds 60 --precision fp32

Models (zuko defaults otherwise; ReLU; PyTorch default init):
  maf      zuko.flows.MAF(784, transforms=5, hidden_features=(1024,)): 5 MADEs 784 -> 1024 -> 2*784 (masked
           Linear, ReLU), orders alternating identity / reversed, no permutation layers, no normalisation.
  realnvp  zuko.flows.RealNVP(784, transforms=6, hidden_features=(1024, 1024)): 6 affine couplings, checkered
           masks alternating even / odd indices as the kept half (392), conditioner MLP 392 -> 1024 -> 1024 -> 784
           on the kept half only.
  Both: MonotonicAffineTransform, y = exp(a') x + b with a' = a / (1 + |a / ln 1e-3|) (soft clamp of the log
  scale to (-6.91, 6.91)); the conditioner's outputs are interleaved per feature as (shift, log-scale).
  Standard normal base.
"""
from __future__ import annotations

import importlib.metadata

import torch
import zuko

try:
    from flows_common import parse_args, run, setup
except ImportError:  # run as a module from the repo root
    from benchmarks.peers.flows_common import parse_args, run, setup


def build(model: str) -> zuko.flows.Flow:
    if model == "maf":
        return zuko.flows.MAF(features=784, transforms=5, hidden_features=(1024,))
    return zuko.flows.RealNVP(features=784, transforms=6, hidden_features=(1024, 1024))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup(args)
    flow = build(args.model)
    run(args, "zuko", importlib.metadata.version("zuko"), flow, lambda z: flow().log_prob(z))


if __name__ == "__main__":
    main()
