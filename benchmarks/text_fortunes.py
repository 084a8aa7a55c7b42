"""Benchmark: text models on the fortunes corpus: held-out bits per character beside compressors.

Data: ``fortunes`` (Debian's fortune-mod database, one sequence per fortune of up to 256 bytes,
90/10 holdout: 11,601 training and 1,289 held-out fortunes). Every model trains on the same split
with the same optimiser (Adam, lr 1e-3 with a cosine schedule after 200 warm-up steps, batch 64,
seed 0, ``--epochs`` passes; the outline GAN's autoencoder ``--epochs`` then its GAN ``--gan-epochs``,
the topic model ``--topic-epochs``) and is scored on the whole held-out split by ``dgm.evaluate``:

* ``lstm-lm``, ``transformer-lm`` (bytes) and ``transformer-lm-bpe`` (1024 byte-level BPE merges learnt
  from the training split): exact held-out bits per character (per-subword NLL summed over a
  fortune's one BPE spelling, an upper bound for the BPE row);
* ``sentence-vae``: its IWAE bound (``--k`` importance samples), an upper bound on bits per character;
* ``outline-gan``: the Fréchet distance between its sentence embeddings of held-out and generated
  fortunes, the bits per character of its samples under the held-out judge (the
  ``transformer-lm-bpe`` row's model, the best language model here), and self-BLEU-4 of its
  samples, beside the same three numbers for ``lstm-lm`` samples;
* ``prodlda``: held-out topic perplexity (an upper bound, from the ELBO) and NPMI coherence.

A character is a byte of the text, and each fortune's end counts as one more (its end token, the
newline of a file with one fortune a line). The compressors see the same held-out bytes written that
way: ``xz -9e`` and ``zstd --ultra -22`` of the held-out text alone, and of the training text
followed by the held-out text minus the training text alone (the cost of the held-out text given the
training text, the compressor's analogue of a model trained on it).

    python benchmarks/text_fortunes.py --out runs/bench-text          # every row, ~2 h on 2 cores
    python benchmarks/text_fortunes.py --epochs 1 --gan-epochs 1 --topic-epochs 1 --max-steps 3 --k 2 --samples 20  # smoke run

Writes ``OUT/results.json`` (rows of earlier calls with other ``--models`` are kept, and those of
the ``--merge`` folders joined) and prints a markdown table. docs/benchmarks.md's rows came from::

    python benchmarks/text_fortunes.py --models lstm-lm transformer-lm-bpe --epochs 3 --out runs/bench-text
    python benchmarks/text_fortunes.py --models sentence-vae outline-gan prodlda --epochs 3 --gan-epochs 10 --out runs/bench-text-b
    python benchmarks/text_fortunes.py --models --merge runs/bench-text-b --out runs/bench-text   # the sample rows
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch

import dgm
from dgm.data.sequences import unpack
from dgm.run import DataConfig, RunConfig, load_data
from dgm.train import TrainConfig
from tables import markdown_table  # benchmarks/tables.py, beside this script

MODELS = {  # row: (registry name, model settings; the rest are each model's defaults)
    "lstm-lm": ("lstm-lm", {}),
    "transformer-lm": ("transformer-lm", {}),
    "transformer-lm-bpe": ("transformer-lm", {"merges": 1024}),
    "sentence-vae": ("sentence-vae", {}),
    "outline-gan": ("outline-gan", {}),  # its autoencoder trains --epochs, then its GAN --gan-epochs
    "prodlda": ("prodlda", {}),  # trains --topic-epochs (an MLP over word counts: seconds per epoch)
}
JUDGE = "transformer-lm-bpe"  # the held-out language model that scores samples (the best of this page)


def compressed_size(command: list[str], data: bytes) -> int:
    return len(subprocess.run(command, input=data, capture_output=True, check=True).stdout)


def compressors(train: list[bytes], test: list[bytes]) -> list[dict]:
    """Bits per character of the held-out text by xz and zstd at their maximum levels (module docstring)."""
    held_out, context = b"".join(t + b"\n" for t in test), b"".join(t + b"\n" for t in train)
    rows = []
    for name, command in (("xz -9e", ["xz", "-9e", "-c"]), ("zstd --ultra -22", ["zstd", "--ultra", "-22", "-c"])):
        if shutil.which(command[0]) is None:
            continue
        alone = compressed_size(command, held_out)
        given = compressed_size(command, context + held_out) - compressed_size(command, context)
        rows.append({"row": name, "bits_per_char": 8 * alone / len(held_out),
                     "bits_per_char_given_train": 8 * given / len(held_out)})
    return rows


def row_settings(row: str, args: argparse.Namespace) -> tuple[str, dict, int]:
    """The model, its settings and its epochs in all, for a row."""
    name, settings = MODELS[row]
    if row == "outline-gan":
        return name, {**settings, "autoencoder_epochs": args.epochs}, args.epochs + args.gan_epochs
    return name, settings, args.topic_epochs if row == "prodlda" else args.epochs


def train_row(row: str, args: argparse.Namespace, out: Path) -> tuple[dgm.models.GenerativeModel, dict]:
    name, settings, epochs = row_settings(row, args)
    config = RunConfig(name, settings, DataConfig("fortunes"),
                       TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=200,
                                   seed=0, progress=False, sample_every=epochs, device=args.device,
                                   max_steps_per_epoch=args.max_steps))
    start = time.perf_counter()
    model, run_dir = dgm.train(config, out / row)
    seconds = time.perf_counter() - start
    return model, {"row": row, "model": name, "settings": settings, "epochs": epochs, "train_seconds": round(seconds, 1),
                   "parameters": sum(p.numel() for p in model.parameters()), "run": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--merge", nargs="*", default=[], help="result folders of other calls whose rows (and "
                        "trained runs) join this one's, e.g. rows trained at the same time in another process")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--gan-epochs", type=int, default=20, help="epochs of the outline GAN's GAN stage")
    parser.add_argument("--topic-epochs", type=int, default=20, help="epochs of the topic model")
    parser.add_argument("--k", type=int, default=100, help="importance samples of the sentence VAE's IWAE bound")
    parser.add_argument("--samples", type=int, default=1000, help="samples per model for the sample metrics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="train.device of every run (cuda on a GPU)")
    parser.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs only)")
    parser.add_argument("--out", default="runs/bench-text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "results.json"
    results = {}
    for earlier in [record, *(Path(d) / "results.json" for d in args.merge)]:
        if earlier.exists():
            results.update({r["row"]: r for r in json.loads(earlier.read_text())["rows"]})
    train_split, test = dgm.data.load("fortunes"), dgm.data.load("fortunes", "test")
    for row in compressors(unpack(train_split.raw, train_split.lengths), unpack(test.raw, test.lengths)):
        results[row["row"]] = row
    models = {}
    for row in args.models:
        model, result = train_row(row, args, out)
        models[row] = model
        name, settings, _ = row_settings(row, args)
        config = RunConfig(name, settings, DataConfig("fortunes"))
        held_out = load_data(config, "test")
        if row == "prodlda":
            metrics = ["topic_perplexity", "topic_coherence"]
        elif row == "outline-gan":
            metrics = []
        else:
            metrics = ["nll"]
        for r in dgm.evaluate(model, held_out, metrics, k=args.k, progress=False) if metrics else []:
            result[f"{r.metric} [{r.unit}]"] = r.value
            result[f"{r.metric} [{r.unit}] qualifier"] = r.qualifier
        results[row] = result
        record.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                                      "epochs": args.epochs, "rows": list(results.values())}, indent=2))
    if all(row in models or "run" in results.get(row, {}) for row in ("outline-gan", "lstm-lm", JUDGE)):
        results.update(sample_rows(models, results, test, args))
    else:
        print(f"(the sample rows need trained outline-gan, lstm-lm and {JUDGE} runs; --merge the folders that hold them)")
    record.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                                  "epochs": args.epochs, "rows": list(results.values())}, indent=2))
    print(markdown_table(list(results.values()), skip=("model", "settings", "run")))


def sample_rows(models: dict, results: dict, test: dgm.data.Dataset, args: argparse.Namespace) -> dict:
    """The outline GAN's samples beside the LSTM's: embedding FID, bits/char under the judge, self-BLEU."""
    from dgm.data.pictures import decode_tokens
    from dgm.eval.text_quality import embedding_frechet_distance, sample_perplexity, self_bleu

    judge = models.get(JUDGE) or dgm.load(results[JUDGE]["run"])
    outline = models.get("outline-gan") or dgm.load(results["outline-gan"]["run"])
    rows = {}
    for row in ("outline-gan", "lstm-lm"):
        model = models.get(row) or dgm.load(results[row]["run"])
        x = model.sample(args.samples, generator=torch.Generator().manual_seed(0))
        result = results[row] if row in results else {"row": row}
        held_out = test.tensors()
        result["samples: embedding FID"] = embedding_frechet_distance(outline, held_out.x, x, real_mask=held_out.mask)
        result["samples: bits/char under the judge"] = sample_perplexity(judge, x).bits_per_char
        result["samples: self-BLEU-4"] = self_bleu(decode_tokens(x))
        rows[row] = result
    return rows


if __name__ == "__main__":
    main()
