"""normflows' MAF and RealNVP on the Fashion-MNIST flow workload of ``flows_common.py`` (784-d, dequantized,
logit alpha 0.05; Adam 1e-3, wall-clock budget; test bits/dim): run in the separate environment that
``setup_flows.sh`` (``setup.sh``) makes (normflows next to torch 2.13.0+cpu; no torchvision), prints one JSON line.

    bash benchmarks/peers/setup_flows.sh /tmp/flowpeers
    /tmp/flowpeers/bin/python benchmarks/peers/flows_normflows.py --model realnvp --seconds 60 --precision fp32

Models (fixed standard normal base, nf.distributions.DiagGaussian(784, trainable=False)):
  realnvp  as normflows' README: 6 x [nf.flows.AffineCouplingBlock(nf.nets.MLP([392, 1024, 1024, 784],
           init_zeros=True)), nf.flows.Permute(784, mode="swap")]. Split "channel": the conditioner sees the kept
           contiguous half (392), the other half is transformed; the swap alternates which half is kept. ReLU
           (LeakyReLU(0)), last layer zero-initialised; outputs interleaved (shift = out[0::2], log-scale =
           out[1::2]); scale = exp(log-scale), unclamped.
  maf      5 x nf.flows.Reverse(nf.flows.MaskedAffineAutoregressive(784, 1024, ...)) with a fixed reversal
           permutation (nf.flows.Permute, perm = 783..0) between them (zuko alternates orders the same way;
           normflows' examples put a learned nf.flows.LULinearPermute there, +615k parameters each).
           Reverse: normflows' MaskedAffineAutoregressive evaluates the density with its *inverse*, one MADE pass
           per feature (784 sequential passes per layer: unusable for training at 784-d), so it is wrapped to
           make density evaluation the single MADE pass, as in MAF. Its scale is sigmoid(a + 2) + 1e-3 in that
           direction (u = s x + t, log|det| = sum log s): it can only contract data -> base.
           --made onehidden (default, parameter-matched to zuko's MAF): normflows' MADE with num_blocks=0,
           use_residual_blocks=False (784 -> 1024 -> 1568 masked linears, which normflows leaves without an
           activation in between) plus a ReLU after the first layer. --made residual: stock
           MaskedAffineAutoregressive(784, 1024, num_blocks=1) (784 -> 1024, one residual block
           h + W2 relu(W1 relu(h)) of 1024, -> 1568; 22.6 M parameters).
"""
from __future__ import annotations

import importlib.metadata

import normflows as nf
import torch
from torch import nn

try:
    from flows_common import make_parser, run, setup
except ImportError:  # run as a module from the repo root
    from benchmarks.peers.flows_common import make_parser, run, setup

D = 784


def reversal() -> nf.flows.Permute:
    perm = nf.flows.Permute(D, mode="shuffle")
    perm.perm.copy_(torch.arange(D - 1, -1, -1))
    perm.inv_perm.copy_(torch.arange(D - 1, -1, -1))
    return perm


def made_layer(variant: str) -> nf.flows.Flow:
    if variant == "residual":
        maf = nf.flows.MaskedAffineAutoregressive(D, 1024, num_blocks=1)
    else:
        maf = nf.flows.MaskedAffineAutoregressive(D, 1024, num_blocks=0, use_residual_blocks=False)
        made = maf.autoregressive_net
        made.initial_layer = nn.Sequential(made.initial_layer, nn.ReLU())
    return nf.flows.Reverse(maf)


def build(model: str, made: str = "onehidden") -> nf.NormalizingFlow:
    flows: list[nf.flows.Flow] = []
    if model == "maf":
        for i in range(5):
            if i:
                flows.append(reversal())
            flows.append(made_layer(made))
    else:
        for _ in range(6):
            param_map = nf.nets.MLP([D // 2, 1024, 1024, D], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(param_map), nf.flows.Permute(D, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(D, trainable=False), flows)


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--made", choices=["onehidden", "residual"], default="onehidden",
                        help="MAF's MADE: parameter-matched one hidden layer, or normflows' stock residual block")
    args = parser.parse_args()
    setup(args)
    flow = build(args.model, args.made)
    label = "normflows" if args.model != "maf" or args.made == "onehidden" else "normflows (stock residual MADE)"
    run(args, label, importlib.metadata.version("normflows"), flow, flow.log_prob)


if __name__ == "__main__":
    main()
