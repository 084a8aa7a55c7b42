"""Benchmark: text-to-image on captioned scenes, zero-shot to compositions never seen in training.

Data: ``scenes`` (32x32 RGB, one or two coloured shapes with a caption each, ``dgm.data.scenes``): the
training split holds no green triangle; the test split does (held-out compositions, the seed's
"implausible scenes"). Rows:

* ``dalle``: the DALL-E-style model (``dgm.models.text_to_image``: VQ-VAE tokens, a transformer over
  [caption, image tokens] with the paper's sparse attention masks, a contrastive reranker);
* ``dalle-dense``: the same with full causal attention (``attention=dense``), the masks' ablation;
* ``dalle-fashion``: the same model on Fashion-MNIST with class-name captions ("ankle boot");
* ``aligndraw``: the alignDRAW baseline (``dgm.models.align_draw``: DRAW's recurrent canvas with
  attention over the caption's words, Mansimov et al. 2016), with a discretized logistic likelihood;
  it has no reranker, so its reranked scores are its plain ones.

Every row trains with Adam (lr 1e-3, cosine schedule after 200 warm-up steps, batch 64, seed 0),
``--tokenizer-epochs`` of the VQ-VAE and reranker, then the transformer for the rest of ``--epochs``,
and is scored by ``dgm.evaluate`` on the test split: ``caption_match`` (the fraction of images, one
per test caption, whose factors as read back by the shipped ``scene-net`` classifier all match the
caption, on seen and on held-out captions, without and with reranking 8 candidates) and ``fid``
(Fréchet distance of ``scene-net`` features of ``--samples`` joint samples against the test split).

    python benchmarks/text_to_image.py --out runs/bench-t2i                         # every row on the CPU
    python benchmarks/text_to_image.py --models dalle --device cuda --out runs/bench-t2i-gpu   # on a GPU
    python benchmarks/text_to_image.py --epochs 2 --tokenizer-epochs 1 --max-steps 3 --samples 50  # smoke run

Writes ``OUT/results.json`` (rows of earlier calls are kept) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dgm
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig
from tables import markdown_table  # benchmarks/tables.py, beside this script

ROWS = {  # row: (model, dataset, model settings; the rest are the model's defaults)
    "dalle": ("dalle", "scenes", {}),
    "dalle-dense": ("dalle", "scenes", {"attention": "dense"}),
    "dalle-fashion": ("dalle", "fashion-mnist", {}),
    "aligndraw": ("aligndraw", "scenes", {"likelihood": "logistic"}),
}


def run_row(row: str, args: argparse.Namespace, out: Path) -> dict:
    name, dataset, settings = ROWS[row]
    if name == "dalle":
        settings = {**settings, "tokenizer_epochs": args.tokenizer_epochs}
    config = RunConfig(name, settings, DataConfig(dataset),
                       TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=200,
                                   seed=0, progress=False, sample_every=args.epochs, device=args.device,
                                   max_steps_per_epoch=args.max_steps))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / row)
    seconds = time.perf_counter() - start
    result = {"row": row, "data": dataset, "settings": settings, "epochs": args.epochs,
              "train_seconds": round(seconds, 1), "parameters": sum(p.numel() for p in model.parameters()),
              "run": str(run_dir)}
    test = load_data(config, "test", device=args.device)
    start = time.perf_counter()
    for r in dgm.evaluate(model, test, ["caption_match", "fid"], num_samples=args.samples, progress=False):
        result[r.metric] = r.value
        result[f"{r.metric} qualifier"] = f"{r.qualifier}; {r.split}"
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    if name == "dalle" and dataset == "scenes":
        result["tokenizer_match"] = tokenizer_match(model, test)
    draw_figure(model, out / f"{row}-captions.png")
    return result


def tokenizer_match(model: dgm.models.GenerativeModel, test: dgm.data.Dataset) -> float:
    """The fraction of test scenes whose VQ-VAE reconstruction (encode, nearest codes, decode) the reader
    still reads as their caption: the ceiling the transformer's samples can reach."""
    from dgm.data import to_unit
    from dgm.data.captions import caption_vocabulary
    from dgm.eval.captions import scene_matches
    from dgm.eval.features import load_domain_net

    batch = test.tensors()
    with torch.inference_mode():
        rebuilt = torch.cat([model.tokenizer.decode(model.tokenizer.codes(x)) for x in batch.x.split(500)])
    net = load_domain_net("scene-net", rebuilt.device)
    matches, _ = scene_matches(net, to_unit(rebuilt, model.spec), caption_vocabulary(model.spec).decode(batch.captions.cpu()))
    return float(matches.mean())


def draw_figure(model: dgm.models.GenerativeModel, path: Path) -> None:
    """Eight images for each of the model's figure captions (held-out compositions among them on
    scenes): the rows of plain samples, then the same captions reranked (best of 8)."""
    from dgm.data import to_unit
    from dgm.io.images import grid, save

    from dgm.data.captions import caption_vocabulary

    captions = caption_vocabulary(model.spec).encode(model.figure_captions()).to(model.device)
    captions = captions.repeat_interleave(8, 0)
    g = torch.Generator().manual_seed(0)
    plain = model.sample_captioned(captions, generator=g)
    reranked = model.sample_captioned(captions, generator=g, rerank=8) if model.name == "dalle" else plain[:0]
    save(grid(to_unit(torch.cat([plain, reranked]), model.spec).cpu(), nrow=8, scale=2), path)
    path.with_suffix(".txt").write_text("\n".join(model.figure_captions()) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ROWS), choices=ROWS)
    parser.add_argument("--epochs", type=int, default=12, help="epochs in all")
    parser.add_argument("--tokenizer-epochs", type=int, default=4, help="of them, the VQ-VAE's and reranker's")
    parser.add_argument("--samples", type=int, default=2000, help="joint samples for FID")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="train.device of every run (cuda on a GPU)")
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-t2i")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "results.json"
    results = {r["row"]: r for r in json.loads(record.read_text())["rows"]} if record.exists() else {}
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    for row in args.models:
        results[row] = run_row(row, args, out)
        record.write_text(json.dumps({"machine": machine, "threads": args.threads, "device": args.device,
                                      "rows": list(results.values())}, indent=2))
    print(markdown_table(list(results.values()), skip=("data", "settings", "run")))


if __name__ == "__main__":
    main()
