"""Benchmark: the mixture-density LSTM (Graves 2013) on Hershey pen strokes: held-out NLL per stroke point.

Data: ``hershey`` (the letters and digits of 9 Hershey fonts, ``apt-get install hershey-fonts-data``;
the distinct glyphs split 90/10, each drawn 16 times slanted, scaled and jittered for training and
8 times for the held-out split, whose glyphs no training copy shows). Offsets are in units of 10 font
units (``spec.extras["scale"]``), so the NLL is of a density over offsets in those units.

Rows:

* ``mdn-rnn``: the model's defaults (2 LSTM layers of 128 with skip connections, 20 bivariate
  Gaussians), Adam lr 3e-3, cosine schedule after 100 warm-up steps, gradient norm clipped at 1,
  batch 64, seed 0, ``--epochs`` passes; exact held-out NLL by ``dgm.evaluate`` (nats per stroke
  point: the sum of ``-log p(x)`` over held-out glyphs divided by their points), and the same on the
  first 1000 training sequences;
* ``independent points``: no sequence model: every point drawn independently from one 20-component
  Gaussian mixture over (dx, dy) fitted by EM (scikit-learn) to the training offsets, a Bernoulli
  pen-up bit at its training frequency and the end bit at its training frequency per stroke end:
  what the LSTM gains by reading the strokes so far.

    python benchmarks/handwriting.py --out runs/bench-handwriting   # 5 epochs, 395 steps: 2-15 min on 2 shared cores
    python benchmarks/handwriting.py --epochs 1 --max-steps 5 --out /tmp/hw   # smoke run

``--synthesis`` (Graves 2013, section 5): ``hershey-words`` (random strings of 2-6 letters and digits
written in the fonts of ``hershey``, held out by string), rows:

* ``mdn-rnn, window K=10``: the defaults plus the soft window of 10 Gaussians over the string, Adam
  lr 3e-3, 50 warm-up steps then cosine, gradient norm clipped at 1, batch 16, seed 0, ``--epochs``
  passes (``--max-steps`` per epoch); held-out ``log p(x | text)`` by ``conditional_log_prob``, nats
  per stroke point, and the same with each word given another held-out word's string;
* ``mdn-rnn, no text``: the same network without the window, same training: what reading the text is
  worth.

    python benchmarks/handwriting.py --synthesis --epochs 3 --threads 1 --out runs/bench-synthesis   # 843 steps, ~8 min
    python benchmarks/handwriting.py --synthesis --epochs 1 --max-steps 3 --out /tmp/hws   # smoke run

The figure (``--figure``, default ``docs/images/handwriting_synthesis.png``): held-out words, then 4
samples of each of :data:`STRINGS` at bias 0 and at bias 1.

Writes ``OUT/results.json``, the samples figure (``--figure``, default
``docs/images/handwriting_samples.png``: held-out glyphs, then samples at bias 0 and at bias 1) and
prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import dgm
from dgm.data.pictures import sample_picture
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig
from tables import markdown_table  # benchmarks/tables.py, beside this script


def independent_points(train: dgm.data.Dataset, test: dgm.data.Dataset, components: int = 20) -> dict:
    """Held-out nats per point of the points-drawn-independently baseline (module docstring)."""
    from sklearn.mixture import GaussianMixture

    def rows(data: dgm.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        batch = data.tensors()
        last = torch.arange(batch.x.shape[1]) == data.lengths[:, None] - 1
        return batch.x[batch.mask].double().numpy(), last[batch.mask].numpy()

    (x, last), (x_test, last_test) = rows(train), rows(test)
    mixture = GaussianMixture(components, covariance_type="full", random_state=0).fit(x[:, :2])
    pen = x[:, 2].mean()  # P(e = 1)
    stop = last.sum() / x[:, 2].sum()  # P(end of sequence | end of stroke)
    e = x_test[:, 2] > 0.5
    log_p = (mixture.score_samples(x_test[:, :2]) + np.where(e, math.log(pen), math.log(1 - pen))
             + np.where(e, np.where(last_test, math.log(stop), math.log(1 - stop)), 0.0))
    return {"row": "independent points", "test nats/point": float(-log_p.mean()), "points": int(len(x_test))}


def figure(test: dgm.data.Dataset, model: dgm.models.GenerativeModel, path: Path, columns: int = 16) -> None:
    """Held-out glyphs, then samples at bias 0 and at bias 1 (Graves's section 5.4), one titled panel each."""
    spec, batch, g = test.spec, test.tensors(2 * columns), torch.Generator().manual_seed(0)
    panels = [("held-out glyphs (augmented)", sample_picture(batch.x, spec, mask=batch.mask, nrow=columns))]
    for bias in (0.0, 1.0):
        x = model.sample(3 * columns, generator=g, bias=bias)
        panels.append((f"samples, bias {bias:g}", sample_picture(x, spec, nrow=columns)))
    save_panels(panels, path)


STRINGS = ("dgm", "2026", "Graves", "hello")  # written by the synthesis figure


def synthesis_figure(test: dgm.data.Dataset, model: dgm.models.GenerativeModel, path: Path,
                     per_string: int = 4) -> None:
    """Held-out words, then ``per_string`` samples of each of :data:`STRINGS` at bias 0 and at bias 1."""
    spec, batch, g = test.spec, test.tensors(2 * per_string), torch.Generator().manual_seed(0)
    columns = 2 * per_string
    panels = [("held-out words (augmented)", sample_picture(batch.x, spec, mask=batch.mask, nrow=columns))]
    texts = [t for t in STRINGS for _ in range(per_string)]
    for bias in (0.0, 1.0):
        x = model.sample(len(texts), condition=texts, generator=g, bias=bias)
        panels.append((f"samples of {', '.join(map(repr, STRINGS))} ({per_string} each), bias {bias:g}",
                       sample_picture(x, spec, nrow=columns)))
    save_panels(panels, path)


def save_panels(panels: list, path: Path) -> None:
    """Titled pictures one above the other, as a grey PNG."""
    width, title = max(p.width for _, p in panels), 16
    canvas = Image.new("L", (width, sum(p.height + title for _, p in panels)), 255)  # grey: a small PNG
    draw, top = ImageDraw.Draw(canvas), 0
    for text, picture in panels:
        draw.text((4, top + 2), text, fill=40)
        canvas.paste(picture.convert("L"), (0, top + title))
        top += picture.height + title
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def synthesis(args: argparse.Namespace, out: Path) -> None:
    """The ``--synthesis`` rows (module docstring)."""
    rows, model = [], None
    for row, settings in (("mdn-rnn, window K=10", {"window_components": 10}), ("mdn-rnn, no text", {})):
        config = RunConfig("mdn-rnn", settings, DataConfig("hershey-words"),
                           TrainConfig(epochs=args.epochs, batch_size=16, lr=3e-3, schedule="cosine", warmup_steps=50,
                                       grad_clip=1.0, seed=0, progress=False, sample_every=0, device=args.device,
                                       max_steps_per_epoch=args.max_steps))
        start = time.perf_counter()
        trained, run_dir = dgm.train(config, out / ("synthesis" if settings else "no-text"))
        seconds = time.perf_counter() - start
        test = load_data(config, "test").to(trained.device)
        trained.eval()
        with torch.inference_mode():
            log_p = torch.cat([trained.log_prob(b.x, mask=b.mask, captions=b.captions if settings else None)
                               for b in test.batches(100)])
            # each word scored with the next word's string: what the model reads from the right text
            wrong = torch.cat([trained.log_prob(b.x, mask=b.mask, captions=b.captions.roll(1, 0))
                               for b in test.batches(100)]) if settings else None
        points = test.lengths.sum()
        rows.append({"row": row, "epochs": args.epochs, "train_seconds": round(seconds, 1), "run": str(run_dir),
                     "parameters": sum(p.numel() for p in trained.parameters()),
                     "test nats/point": float(-log_p.double().sum() / points)})
        if settings:
            rows[-1]["test nats/point, another word's text"] = float(-wrong.double().sum() / points)
        model = model or trained
    synthesis_figure(test, model, Path(args.figure or "docs/images/handwriting_synthesis.png"))
    (out / "results.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                  "threads": args.threads, "rows": rows}, indent=2))
    print(markdown_table(rows, skip=("run",)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-handwriting")
    parser.add_argument("--figure", default=None, help="default docs/images/handwriting_samples.png "
                        "(--synthesis: docs/images/handwriting_synthesis.png)")
    parser.add_argument("--synthesis", action="store_true", help="text-conditioned rows on hershey-words (section 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.synthesis:
        return synthesis(args, out)
    config = RunConfig("mdn-rnn", {}, DataConfig("hershey"),
                       TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, schedule="cosine", warmup_steps=100,
                                   grad_clip=1.0, seed=0, progress=False, sample_every=args.epochs,
                                   device=args.device, max_steps_per_epoch=args.max_steps))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / "mdn-rnn")
    seconds = time.perf_counter() - start
    train, test = load_data(config, "train"), load_data(config, "test")
    row = {"row": "mdn-rnn", "epochs": args.epochs, "train_seconds": round(seconds, 1), "run": str(run_dir),
           "parameters": sum(p.numel() for p in model.parameters())}
    for name, split in (("test", test), ("train", train.subset(1000))):
        for r in dgm.evaluate(model, split, ["nll"], progress=False):
            if r.unit == "nats/point":
                row[f"{name} nats/point"] = r.value
                row[f"{name} nats/point qualifier"] = f"{r.qualifier}; {r.split}"
    rows = [row, independent_points(train, test)]
    figure(test, model, Path(args.figure or "docs/images/handwriting_samples.png"))
    (out / "results.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                  "threads": args.threads, "rows": rows}, indent=2))
    print(markdown_table(rows, skip=("run",)))


if __name__ == "__main__":
    main()
