"""Benchmark: learnable knowledge constraints (Hu et al. 2018, arXiv:1806.09764) — how often samples
satisfy a piece of knowledge, and what it costs in likelihood, for the base model (``none``), the
hand-written rule (``fixed``) and a constraint learned from a few examples (``learned``).

* image: ``constrained-vae`` on ``sprites``, the knowledge "the shape lies in the left half" (the x
  factor below 0.5). Satisfied: the fraction of 1000 samples (decoder means) whose intensity centroid
  is left of the middle (:func:`dgm.models.knowledge_constraints.centroid`; on the test images it
  agrees with the x factor, printed as a check). Quality: the held-out ELBO (nats per image) on the
  test images that satisfy the knowledge (by their factors) and on all of them.
* text: ``constrained-lm`` on ``fortunes`` cut to ``--text-size`` bytes, the knowledge "the fortune
  starts with 'The '" (regex ``^The ``). Satisfied: the fraction of 500 samples (temperature 1) that
  match; quality: held-out bits per character on the test fortunes that match, and on all of them.

The learned constraint sees ``--examples`` training examples that satisfy the knowledge and nothing
else; the hand-written one is the rule itself (an oracle); every variant trains the same generator
for the same epochs. Prints one markdown table.

    python benchmarks/knowledge_constraints.py              # 25 / 8 epochs: 6.5 min on 1 thread
    python benchmarks/knowledge_constraints.py --uses text --image-epochs 1 --text-epochs 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

MALLOC = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

import torch  # noqa: E402

from dgm import run  # noqa: E402
from dgm.models.knowledge_constraints import centroid  # noqa: E402
from dgm.models.language import real_tokens  # noqa: E402

CONSTRAINTS = ("none", "fixed", "learned")
TEXT_TEMPLATE = "^The "


def train(model: str, data: run.DataConfig, constraint: str, epochs: int, settings: dict, out: Path,
          args: argparse.Namespace, batch_size: int = 128):
    config = run.RunConfig(model, data=data)
    config.train.epochs = epochs
    config.train.batch_size = batch_size
    config.train.progress = False
    config.train.sample_every = 0
    config.train.seed = args.seed
    for key, value in {**settings, "constraint": constraint, "examples": args.examples, "alpha": args.alpha,
                         "pr_weight": args.pr_weight}.items():
        config.set(f"model.{key}", value)
    start = time.perf_counter()
    model, _ = run.train(config, out / f"{config.model}-{constraint}")
    return model.eval(), config, (time.perf_counter() - start) / 60


def image_row(constraint: str, args: argparse.Namespace) -> list[str]:
    data = run.DataConfig("sprites")
    settings = {"latent_dim": 10, "hidden": (256,), "proposals": 64, "constraint_hidden": 64}
    model, config, minutes = train("constrained-vae", data, constraint, args.image_epochs, settings, Path(args.out), args)
    test = run.load_data(config, "test").with_representation(model.spec.representation)
    with torch.inference_mode():
        samples = model.sample(1000, generator=torch.Generator().manual_seed(args.seed))
        satisfied = (centroid(samples)[:, 0] < 0.5).float().mean()
        x = test.tensors(args.eval_images)
        left = test.factors[:len(x.x), 3] < 8  # the x factor's first 8 of 16 positions: centre < 0.5
        torch.manual_seed(args.seed)
        elbo = model.elbo(x.x)
    return ["image (sprites, left half)", constraint, f"{satisfied:.3f}", f"{elbo[left].mean():.1f} nats",
            f"{elbo.mean():.1f} nats", f"{minutes:.1f}"]


def text_row(constraint: str, args: argparse.Namespace) -> list[str]:
    data = run.DataConfig("fortunes", size=args.text_size)
    settings = {"width": 64, "hidden": 128, "layers": 1, "template": TEXT_TEMPLATE, "proposals": 32,
                "constraint_hidden": 32}
    model, config, minutes = train("constrained-lm", data, constraint, args.text_epochs, settings, Path(args.out), args,
                                   batch_size=32)
    test = run.load_data(config, "test")
    with torch.inference_mode():
        g = torch.Generator().manual_seed(args.seed)
        samples = torch.cat([model.sample(100, generator=g) for _ in range(5)])
        satisfied = model.rule(samples).float().mean()
        x = test.tensors(args.eval_lines)
        mask = real_tokens(x.x, x.mask)
        nats, units = model.log_prob(x.x, mask=mask), model.scored_units(mask.sum(1)).float()
        match = model.rule(x.x)

    def bits(rows):
        return f"{-nats[rows].sum() / units[rows].sum() / torch.log(torch.tensor(2.0)):.3f} bits/char"

    return [f"text (fortunes <= {args.text_size} bytes, {TEXT_TEMPLATE!r})", constraint, f"{satisfied:.3f}",
            bits(match), bits(torch.ones_like(match)), f"{minutes:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uses", nargs="+", default=["image", "text"], choices=["image", "text"])
    parser.add_argument("--constraints", nargs="+", default=list(CONSTRAINTS), choices=CONSTRAINTS)
    parser.add_argument("--image-epochs", type=int, default=25, help="passes over the 10k sprites")
    parser.add_argument("--text-epochs", type=int, default=8, help="passes over the fortunes")
    parser.add_argument("--text-size", type=int, default=64, help="bytes per fortune (longer ones are cut)")
    parser.add_argument("--examples", type=int, default=64, help="examples the learned constraint sees")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--pr-weight", type=float, default=4.0, help="lambda: weight of KL(p || q) beside the base loss")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--eval-lines", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/dgm-knowledge-constraints")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| use | constraint | satisfied | held-out quality, satisfying examples | held-out quality, all | "
          f"train min |  <- {args.image_epochs}/{args.text_epochs} epochs, {args.examples} examples, "
          f"alpha {args.alpha}, lambda {args.pr_weight}, {torch.get_num_threads()} thread(s)")
    print("|---|---|---|---|---|---|")
    if "image" in args.uses:  # the measurement's check: the centroid rule against the x factor
        test = run.load_data(run.RunConfig("vae", data=run.DataConfig("sprites")), "test")
        agree = ((centroid(test.raw.float())[:, 0] < 0.5) == (test.factors[:, 3] < 8)).float().mean()
        print(f"  centroid rule agrees with the x factor on {agree:.4f} of the test sprites; "
              f"{(test.factors[:, 3] < 8).float().mean():.3f} of them are in the left half", file=sys.stderr)
    for use in args.uses:
        for constraint in args.constraints:
            row = image_row(constraint, args) if use == "image" else text_row(constraint, args)
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
