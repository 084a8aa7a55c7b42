"""Rate and distortion of a model with a discrete code: how many bits its code of an example takes,
and how far the reconstruction from that code is from the example.

For a VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, arXiv:1711.00937, sec. 4.1) the rate is
-log2 p(k(x)) under the learned prior and the distortion the error of the decoder mean at z_q(x);
with a discrete likelihood, rate + (-log2 p(x|z_q)) is the model's bound on -log2 p(x). The metric
asks only for the capabilities ``code_bits`` (the rate, bits per example) and ``reconstruct``, and
reads ``code_usage`` (counts of each code) where the model has it::

    rate        = mean_x code_bits(x)                                   bits / image
    distortion  = mean_x mean_pixels (u(x^) - u(x))^2                   u: the [0, 1] scale of the data
    PSNR        = 10 log10(1 / distortion)                              dB, of the mean MSE (peak 1)
    perplexity  = exp(-sum_i p_i log p_i),  p_i = share of code i over all positions of the split
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm.data.core import to_unit
from dgm.eval.core import EvalContext, Plan, Result, Work, metric
from dgm.models.base import GenerativeModel, capabilities
from dgm.nn.quantize import perplexity


def squared_error(model: GenerativeModel, x: Tensor) -> Tensor:
    """The mean squared error per pixel of each example's reconstruction on the [0, 1] scale, ``(B,)``."""
    spec = model.spec
    error = to_unit(model.reconstruct(x), spec).double() - to_unit(x, spec).double()
    return error.pow(2).flatten(1).mean(1)


def rate_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    def probe(n: int) -> None:
        x = ctx.data.tensors(min(n, len(ctx.data))).x
        model.code_bits(x)
        model.reconstruct(x)

    return Plan(f"code bits under the prior and reconstruction error of {len(ctx.data)} examples",
                [Work("codes and reconstructions", len(ctx.data), probe)], "--max-examples N")


@metric("rate_distortion", requires=("code_bits", "reconstruct"), plan=rate_plan,
        description="rate (bits of the code under the model's prior) and distortion (reconstruction MSE and "
                    "PSNR on the [0, 1] scale), with the codebook perplexity where the model counts its codes")
def rate_distortion(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    usage = "code_usage" in capabilities(model)
    bits, errors, counts = [], [], None
    for x in ctx.batches(desc="rate and distortion"):
        bits.append(model.code_bits(x).double().cpu())
        errors.append(squared_error(model, x).cpu())
        if usage:
            batch_counts = model.code_usage(x).double().cpu()
            counts = batch_counts if counts is None else counts + batch_counts
    rate, mse = torch.cat(bits), torch.cat(errors)
    n = len(rate)

    def stderr(v: Tensor) -> float:
        return v.std().item() / math.sqrt(n) if n > 1 else 0.0

    distortion = mse.mean().item()
    out = [
        Result("rate", rate.mean().item(), "bits/image", "-log2 p(code of x) under the model's prior", ctx.split,
               {"stderr": stderr(rate), "bits_per_dim": rate.mean().item() / model.spec.dim}),
        Result("distortion", distortion, "MSE", "per pixel on the [0, 1] scale, decoder mean from the code",
               ctx.split, {"stderr": stderr(mse)}),
        Result("psnr", 10 * math.log10(1 / distortion) if distortion > 0 else math.inf, "dB",
               "10 log10(1 / MSE) of the split's mean MSE, peak 1", ctx.split),
    ]
    if counts is not None:
        K = len(counts)
        used = int((counts > 0).sum())
        out += [Result("code_perplexity", perplexity(counts).item(), "codes",
                       f"exp(entropy) of the code use over the split's grid positions, of {K} codes", ctx.split),
                Result("codes_used", used / K, "fraction", f"{used} of {K} codes used on the split", ctx.split)]
    return out
