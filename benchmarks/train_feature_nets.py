"""Train dgm's domain feature networks and ship them inside the package.

Writes ``src/dgm/eval/weights/<name>.safetensors`` and ``<name>.json`` (the card: input shape,
width, test accuracy, this command). The networks are plain classifiers; FID/KID/precision-recall
use their penultimate features and IS their class posteriors (see ``dgm/eval/features.py``).

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/train_feature_nets.py --nets fmnist-net,digits-net
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

import dgm
from dgm.eval.features import DOMAIN_NETS, WEIGHTS_DIR, Classifier, FeatureNetCard
from dgm.train.checkpoint import save_tensors

SETTINGS = {  # name: (epochs, batch size, learning rate, max shift of the augmentation in pixels)
    "fmnist-net": (20, 128, 2e-3, 1),
    "digits-net": (150, 64, 2e-3, 1),
}


def shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (zero padding): the one augmentation."""
    if max_shift == 0:
        return x
    padded = F.pad(x, [max_shift] * 4)
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + h, dx:dx + w]


@torch.no_grad()
def accuracy(net: Classifier, data: dgm.data.Dataset) -> float:
    net.eval()
    batch = data.tensors()
    correct = sum((net(batch.x[i:i + 1000]).argmax(-1) == batch.y[i:i + 1000]).sum().item()
                  for i in range(0, len(batch.x), 1000))
    return correct / len(batch.x)


def train(name: str, seed: int = 0) -> FeatureNetCard:
    spec = DOMAIN_NETS[name]
    epochs, batch_size, lr, max_shift = SETTINGS[name]
    train_data = dgm.data.load(spec["dataset"], "train", representation="unit")
    test_data = dgm.data.load(spec["dataset"], "test", representation="unit")
    torch.manual_seed(seed)
    net = Classifier(spec["in_shape"], train_data.spec.num_classes, width=spec["width"], features=spec["features"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(train_data) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for batch in train_data.batches(batch_size, shuffle=True, drop_last=True, generator=generator):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(shift(batch.x, max_shift, generator))
            loss = F.cross_entropy(logits.float(), batch.y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
              f"test accuracy {accuracy(net, test_data):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    net.eval()
    info = FeatureNetCard(name, spec["in_shape"], train_data.spec.num_classes, spec["width"], spec["features"],
                          spec["dataset"], round(accuracy(net, test_data), 4),
                          "python benchmarks/train_feature_nets.py " + " ".join(sys.argv[1:]))
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    save_tensors(net.state_dict(), WEIGHTS_DIR / f"{name}.safetensors")
    (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(DOMAIN_NETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.nets.split(","):
        info = train(name)
        print(f"{name}: test accuracy {info.test_accuracy:.4f} -> {WEIGHTS_DIR / name}.safetensors")


if __name__ == "__main__":
    main()
