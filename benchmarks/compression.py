"""Benchmark: rate-distortion on Fashion-MNIST with real bytes (``dgm compress``, dgm.apps.compress):
a VAE (Gaussian latent, posterior mean quantised to a grid of step Delta and coded with the prior's
bin masses) at several steps and a VQ-VAE (its 7x7 code grid coded with its learned autoregressive
prior), each test image compressed to a file of its own and decoded back, against PNG, WebP and JPEG
(Pillow, each test image a file of its own) on the same test images. Bits per image are real file
sizes (our 25-byte header included; the model's rate R of eq. (1) printed beside), distortion is
the MSE of the 8-bit pictures on the [0, 1] scale and the FID[fmnist-net] of the decoded pictures
against the same test images. ``--conv-draw RUN`` adds a trained conv DRAW's conceptual compression
(keeping its first k steps; rate = the sum of their KLs, no file), ``--dplc RUN`` / ``--autoencoder
RUN`` trained dplc runs (coded to real bytes with their uniform tables). A ladder VAE (two Gaussian
layers) is coded top-down (eq. 4 of dgm.apps.compress) with both layers and with its top layer only
(conceptual). The codecs run at full size and downscaled (1/2, 1/4 of the side) before coding, so
their curves reach the distortions of the small codes; a second table reads each codec's bits at each
model point's MSE and FID off its curve (equal distortion). Prints the markdown tables and writes the
plot (rate-MSE and rate-FID panels).

    python benchmarks/compression.py --vq-examples 15000 --vq-set model.width 32 --vq-set model.num_res_blocks 1
                                                      # ~12 min on one (shared) thread
    python benchmarks/compression.py --vae-epochs 1 --vq-examples 1000 --test 100   # ~3 min
    python benchmarks/compression.py --reuse          # code again with the runs in --out
    python benchmarks/compression.py --reuse --conv-draw runs/bench-compression/conv-draw \
        --dplc runs/bench-compression/dplc-m8-L4 --autoencoder runs/bench-compression/autoencoder-m8-L4
                                                      # add benchmarks/compression_models.py's runs
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
from dgm.apps.compress import (codec_bits_at, codec_points, compress, from_8bit, mse, plot_curves,  # noqa: E402
                               rate_distortion, to_8bit)
from dgm.eval.features import FrechetReference, feature_extractor  # noqa: E402


def train(model: str, out: Path, epochs: int, examples: int | None, settings: dict, seed: int,  # noqa: ANN201
          reuse: bool = False):
    if reuse and (out / "weights.safetensors").exists():  # a run of an earlier call: code with it again
        config, _ = run.read_config(out)
        return run.load(out).eval(), 0.0, run.load_data(config, "test")
    config = run.RunConfig(model, data=run.DataConfig("fashion-mnist"))
    config.train.epochs = epochs
    config.train.progress = False
    config.train.sample_every = 0
    config.train.seed = seed
    if examples:
        config.set("data.max_examples", examples)
    for key, value in settings.items():
        config.set(key, value)
    start = time.perf_counter()
    trained, _ = run.train(config, out)
    return trained.eval(), (time.perf_counter() - start) / 60, run.load_data(config, "test")


def trained(path: str, n: int):  # noqa: ANN201
    """A run trained elsewhere (e.g. by benchmarks/compression_models.py) and its first ``n`` test images."""
    config, _ = run.read_config(path)
    return run.load(path).eval(), run.load_data(config, "test").tensors(n).x


@torch.inference_mode()
def conceptual_points(draw, x: torch.Tensor, fid) -> list[dict[str, float]]:  # noqa: ANN001
    """conv DRAW's conceptual compression on ``x``: for k = 1..T, the posterior means of the first k steps
    (the rest from the learned priors' means) at rate sum_{t<=k} KL_t (bits-back, no file)."""
    original = to_8bit(x, draw.spec)
    rates = torch.cat([draw.compression_rates(b) for b in x.split(250)]).mean(0)  # (T,) bits
    points = []
    for k in range(1, len(rates) + 1):
        decoded = to_8bit(torch.cat([draw.conceptual_reconstructions(b, k) for b in x.split(250)]), draw.spec)
        points.append({"keep": k, "rate": rates[k - 1].item(), "mse": mse(decoded, original),
                       "fid": fid(from_8bit(decoded))})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae-epochs", type=int, default=3)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--steps", type=float, nargs="+", default=[2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--vq-epochs", type=int, default=3, help="VQ-VAE: epochs in all (the prior gets the last one)")
    parser.add_argument("--vq-examples", type=int, default=5000, help="VQ-VAE: training images")
    parser.add_argument("--test", type=int, default=500, help="test images compressed")
    parser.add_argument("--out", default="/tmp/dgm-compression")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vq-set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a setting of the VQ-VAE run, e.g. --vq-set model.width 32")
    parser.add_argument("--ladder-dims", default="32,16", help="the ladder VAE's latent sizes, bottom first ('' : none)")
    parser.add_argument("--ladder-epochs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="code with the runs already in --out instead of training")
    parser.add_argument("--conv-draw", metavar="RUN", help="a trained conv-draw run: its conceptual compression curve")
    parser.add_argument("--dplc", metavar="RUN", action="append", default=[], help="a trained dplc run (repeatable)")
    parser.add_argument("--autoencoder", metavar="RUN", action="append", default=[],
                        help="a trained dplc run with adversarial=false (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    curves, rows = {}, []

    vae, minutes, test = train("vae", out / "vae", args.vae_epochs, None,
                               {"model.likelihood": "logistic", "model.latent_dim": args.latent_dim}, args.seed, args.reuse)
    x = test.tensors(args.test).x
    fid = FrechetReference(feature_extractor("fmnist-net", vae.spec), from_8bit(to_8bit(x, vae.spec)))
    start = time.perf_counter()
    curves[f"VAE d={args.latent_dim}"] = points = rate_distortion(vae, x, tuple(args.steps), fid=fid)
    print(f"  vae: trained {minutes:.1f} min, coded in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    rows += [(f"VAE d={args.latent_dim}, step {p['step']:g}", p) for p in points]

    vq, minutes, _ = train("vqvae", out / "vqvae", args.vq_epochs, args.vq_examples,
                           {"model.vqvae_epochs": max(1, args.vq_epochs - 1), **dict(args.vq_set)}, args.seed, args.reuse)
    start = time.perf_counter()
    curves[f"VQ-VAE 7x7, K={vq.config.num_codes}"] = points = rate_distortion(vq, x, fid=fid)
    print(f"  vqvae: trained {minutes:.1f} min, coded in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    rows += [("VQ-VAE 7x7 codes, learned prior", p) for p in points]

    if args.ladder_dims:
        ladder, minutes, _ = train("ladder-vae", out / "ladder", args.ladder_epochs, None,
                                   {"model.likelihood": "logistic", "model.latent_dims": args.ladder_dims},
                                   args.seed, args.reuse)
        start = time.perf_counter()
        for layers in (ladder.num_layers, 1):
            name = f"ladder VAE {args.ladder_dims}" + (", top layer only" if layers == 1 else "")
            curves[name] = points = rate_distortion(ladder, x, tuple(args.steps), fid=fid, layers=layers)
            rows += [(f"{name}, step {p['step']:g}", p) for p in points]
        print(f"  ladder: trained {minutes:.1f} min, coded in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)

    if args.conv_draw:
        draw, x_draw = trained(args.conv_draw, args.test)
        name = f"conv DRAW T={draw.config.steps}"
        curves[f"{name} (keep k steps)"] = points = conceptual_points(draw, x_draw, fid)
        rows += [(f"{name}, keep {p['keep']} (KL rate, no file)", p) for p in points]
    for kind, paths in (("DPLC", args.dplc), ("autoencoder", args.autoencoder)):
        for path in paths:
            model, x_model = trained(path, args.test)
            name = f"{kind} m={model.config.code_dim}, L={model.config.levels}"
            curves[name] = points = rate_distortion(model, x_model, fid=fid)
            rows += [(name, p) for p in points]

    # one stream for all the test images: the coder's fixed overhead (~20-30 bits) is paid once
    for label, model, step in [(f"VAE d={args.latent_dim}, step {args.steps[-1]:g}", vae, args.steps[-1]),
                               ("VQ-VAE 7x7 codes, learned prior", vq, 0.25)]:
        stream = compress(model, x, step=step)
        print(f"  one stream of {len(x)} images, {label}: payload {stream.payload_bits / len(x):.1f} bits per "
              f"image, R {stream.rate / len(x):.1f} ({stream.payload_bits / stream.rate - 1:+.2%})", file=sys.stderr)

    codecs = codec_points(to_8bit(x, vae.spec), fid=fid)
    picture = plot_curves(curves, codecs, out / "rd.png", title=f"Fashion-MNIST, {len(x)} test images",
                          fid_name="FID[fmnist-net]")
    print(f"| codec | bits per image (file) | model rate R (bits) | MSE | FID[fmnist-net] |  <- {len(x)} test images, "
          f"{torch.get_num_threads()} thread(s); plot: {picture}")
    print("|---|---|---|---|---|")
    for label, p in rows:
        file = f"{p['file']:.0f}" if "file" in p else "-"
        print(f"| {label} | {file} | {p['rate']:.0f} | {p['mse']:.4f} | {p['fid']:.1f} |")
    for label, bits, error, distance in codecs:
        print(f"| {label} | {bits:.0f} | - | {error:.4f} | {distance:.1f} |")

    def at(fmt: str, value: float, column: int) -> str:
        bits = codec_bits_at(codecs, fmt, value, column)
        return "-" if bits is None else f"{bits:.0f}"

    print("\n| model point | its bits (file) | MSE | WebP bits at that MSE | JPEG bits at that MSE | FID "
          "| WebP bits at that FID | JPEG bits at that FID |")
    print("|---|---|---|---|---|---|---|---|")
    for label, p in rows:
        file = f"{p['file']:.0f}" if "file" in p else f"({p['rate']:.0f}, KL)"
        print(f"| {label} | {file} | {p['mse']:.4f} | {at('WebP', p['mse'], 2)} | {at('JPEG', p['mse'], 2)} "
              f"| {p['fid']:.1f} | {at('WebP', p['fid'], 3)} | {at('JPEG', p['fid'], 3)} |")


if __name__ == "__main__":
    main()
