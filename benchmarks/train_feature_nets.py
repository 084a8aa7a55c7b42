"""Train dgm's domain feature networks and ship them inside the package.

Writes ``src/dgm/eval/weights/<name>.safetensors`` and ``<name>.json`` (the card: input shape,
width, test accuracy, this command). The networks are plain classifiers; FID/KID/precision-recall
use their penultimate features and IS their class posteriors (see ``dgm/eval/features.py``).

``scene-net`` reads every factor of ``dgm.data.scenes`` (one softmax head each). It is the
instrument that reads generated scenes back (``caption_match``), so it learns from fresh renders of
factors drawn uniformly over *all* combinations, the compositions held out of the training split
included, and its card records how often it reads every factor a caption fixes on a fresh draw.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        python benchmarks/train_feature_nets.py --nets fmnist-net,digits-net,scene-net
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

import dgm
from dgm.data import scenes
from dgm.eval.captions import factor_matches
from dgm.eval.features import DOMAIN_NETS, WEIGHTS_DIR, Classifier, FeatureNetCard
from dgm.train.checkpoint import save_tensors

SETTINGS = {  # name: (epochs, batch size, learning rate, max shift of the augmentation in pixels)
    "fmnist-net": (20, 128, 2e-3, 1),
    "digits-net": (150, 64, 2e-3, 1),
}
SCENE_SETTINGS = dict(steps=2000, batch_size=64, lr=5e-3)  # a fresh batch of scenes every step
SCENE_TEST = 10_000  # scenes of the fresh test draw the card's accuracies are measured on
SCENE_TEST_SEED = 1_000_003  # its seed, apart from the training stream's


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


def optimizer_and_schedule(net: torch.nn.Module, lr: float, steps: int):
    """AdamW with a cosine decay over ``steps``."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    return optimizer, schedule


def ship(net: Classifier, info: FeatureNetCard) -> None:
    """Write the weights and the card into the package."""
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    save_tensors(net.state_dict(), WEIGHTS_DIR / f"{info.name}.safetensors")
    (WEIGHTS_DIR / f"{info.name}.json").write_text(json.dumps(asdict(info), indent=2) + "\n")


def command() -> str:
    return "python benchmarks/train_feature_nets.py " + " ".join(sys.argv[1:])


def train(name: str, seed: int = 0) -> FeatureNetCard:
    if name == "scene-net":
        return train_scene_net(name, seed)
    spec = DOMAIN_NETS[name]
    epochs, batch_size, lr, max_shift = SETTINGS[name]
    train_data = dgm.data.load(spec["dataset"], "train", representation="unit")
    test_data = dgm.data.load(spec["dataset"], "test", representation="unit")
    torch.manual_seed(seed)
    net = Classifier(spec["in_shape"], train_data.spec.num_classes, width=spec["width"], features=spec["features"],
                     coordinates=spec.get("coordinates", False))
    optimizer, schedule = optimizer_and_schedule(net, lr, epochs * (len(train_data) // batch_size))
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
                          spec["dataset"], round(accuracy(net, test_data), 4), command())
    ship(net, info)
    return info


# --- scene-net: every factor of a scene, from fresh renders ------------------------------------------------
def draw_scenes(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of factors drawn uniformly over every combination (held-out ones too), as images
    ``(n, 3, 32, 32)`` in [0, 1] and factors ``(n, K)``; object B's factors are 0 in one-object scenes
    (their canonical value: the image cannot show them)."""
    factors = np.stack([rng.integers(k, size=n) for k in scenes.FACTOR_SIZES], axis=1)
    factors[np.ix_(factors[:, 0] == 0, scenes.B_FACTORS)] = 0
    return torch.from_numpy(scenes.render(factors)).float() / 255, torch.from_numpy(factors)


def shown(factors: torch.Tensor) -> torch.Tensor:
    """``(n, K)`` bool: the factors an image shows, those its caption fixes and the position."""
    out = torch.from_numpy(scenes.specified(factors.numpy()))
    out[:, [scenes.FACTORS.index("shift_x"), scenes.FACTORS.index("shift_y")]] = True
    return out


@torch.no_grad()
def read_accuracy(net: Classifier, x: torch.Tensor, factors: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The fraction of scenes with every caption-specified factor read right, and per factor the
    fraction read right among the scenes that show it."""
    net.eval()
    read = torch.cat([net.read(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    right = read == factors
    per_factor = {name: round(right[show, k].double().mean().item(), 4)
                  for k, (name, show) in enumerate(zip(scenes.FACTORS, shown(factors).T))}
    every = factor_matches(read.numpy(), factors.numpy(), scenes.specified(factors.numpy())).mean()
    return round(float(every), 4), per_factor


def train_scene_net(name: str, seed: int) -> FeatureNetCard:
    spec = DOMAIN_NETS[name]
    steps, batch_size, lr = SCENE_SETTINGS["steps"], SCENE_SETTINGS["batch_size"], SCENE_SETTINGS["lr"]
    heads = dict(zip(scenes.FACTORS, scenes.FACTOR_SIZES))
    torch.manual_seed(seed)
    net = Classifier(spec["in_shape"], sum(heads.values()), width=spec["width"], features=spec["features"],
                     heads=tuple(heads.values()), coordinates=spec["coordinates"])
    optimizer, schedule = optimizer_and_schedule(net, lr, steps)
    rng = np.random.default_rng(seed)
    test_x, test_factors = draw_scenes(SCENE_TEST, np.random.default_rng(SCENE_TEST_SEED))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        net.train()
        x, factors = draw_scenes(batch_size, rng)
        # every head learns on every scene: an absent object B has the canonical factors 0
        loss = sum(F.cross_entropy(logits, factors[:, k]) for k, logits in enumerate(net.split(net(x))))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % (steps // 10) == 0 or step == steps:
            every, per_factor = read_accuracy(net, test_x[:2000], test_factors[:2000])
            print(f"{name} step {step}/{steps}: loss {loss.item():.3f}, all specified read {every:.4f}, "
                  f"worst factor {min(per_factor.values()):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = round(time.perf_counter() - start)
    every, per_factor = read_accuracy(net, test_x, test_factors)
    info = FeatureNetCard(name, spec["in_shape"], sum(heads.values()), spec["width"], spec["features"],
                          spec["dataset"], every, command(), heads=heads, head_accuracy=per_factor,
                          coordinates=spec["coordinates"], train_seconds=seconds)
    ship(net, info)
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
