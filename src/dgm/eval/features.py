"""Feature networks for sample-quality metrics, and cached reference features of data splits.

Inception features of 28x28 grayscale images upsampled to 299x299 say little about clothes or
digits, and the Inception weights cannot be downloaded at run time here. dgm therefore ships small
domain classifiers, trained by ``benchmarks/train_feature_nets.py`` and stored inside the package
as safetensors with a JSON card (test accuracy, training command):

* ``fmnist-net`` — 28x28 grayscale, trained on Fashion-MNIST; features: 128-d penultimate layer;
* ``digits-net`` — 8x8 grayscale, trained on scikit-learn's digits; features: 64-d;
* ``scene-net`` — 32x32 RGB captioned scenes (:mod:`dgm.data.scenes`): one softmax head per
  generative factor, trained on fresh renders of every factor combination (the held-out ones too:
  it is the instrument that reads generated scenes back, not a model of the training split).

A network is picked for a dataset by its name first; by image size only for the networks that
serve any data of their size (``fmnist-net`` serves 28x28 MNIST too; ``scene-net`` reads only
scenes, so CIFAR-10 keeps Inception).

``inception`` (FID's standard Inception-v3, weights from a file the user names) serves any image
size and RGB data. FID/KID/precision-recall use a network's penultimate features, IS its class
posteriors. Every metric names its network: ``FID[fmnist-net, 10k vs test]``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from dgm.data.core import DataSpec
from dgm.errors import DgmError, unknown_name
from dgm.eval.fidelity import GaussianStats, frechet_distance
from dgm.train.distributed import SINGLE, World, gather

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDING_DROPOUT = 0.2  # dropout before the feature layer of the domain classifiers (in training only)
FEATURE_BATCH = 500  # images per forward pass of a feature network
KEY_HEX_DIGITS = 16  # hex digits of a SHA-256 kept in a cache file's name (64 bits: no accidental collisions)


class Classifier(nn.Module):
    """A small VGG-style classifier of ``(C, H, W)`` images in [0, 1]: two conv stages with max
    pooling (one for 8x8 inputs), global average pooling, then ``features`` -> ``classes``.

    ``embed(x)`` gives the penultimate ``features``-d vector (after its activation), ``forward(x)``
    the class logits. With ``heads`` (sizes summing to ``classes``) the logits are several
    softmax heads side by side, one per factor of a scene, and ``read(x)`` gives each head's argmax.
    With ``coordinates`` the input gets two more channels, each pixel's column and row in [-1, 1]
    (CoordConv: Liu et al. 2018, arXiv:1807.03247), so the pooled features can say *where* a thing
    is: which object is the left one, how far the scene is shifted.
    """

    def __init__(self, in_shape: tuple[int, int, int], classes: int = 10, *, width: int = 32,
                 features: int = 128, heads: Sequence[int] = (), coordinates: bool = False) -> None:
        super().__init__()
        self.coordinates = coordinates
        self.heads = tuple(int(k) for k in heads) or (classes,)
        if sum(self.heads) != classes:
            raise DgmError(f"the heads {self.heads} of a classifier must share its {classes} logits: "
                           f"give classes={sum(self.heads)}")
        c, h, _ = in_shape
        stages = 2 if h >= 16 else 1
        layers: list[nn.Module] = []
        ch_in, ch = c + 2 * coordinates, width
        for _ in range(stages):
            layers += [nn.Conv2d(ch_in, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
                       nn.MaxPool2d(2)]
            ch_in, ch = ch, ch * 2
        layers += [nn.Conv2d(ch_in, ch, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.embedding = nn.Sequential(nn.Dropout(EMBEDDING_DROPOUT), nn.Linear(ch, features), nn.SiLU())
        self.head = nn.Linear(features, classes)
        self.in_shape = tuple(in_shape)

    def embed(self, x: Tensor) -> Tensor:
        x = x - 0.5  # centred input
        if self.coordinates:
            b, _, h, w = x.shape
            rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
            cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
            x = torch.cat([x, torch.stack([cols, rows]).expand(b, 2, h, w)], dim=1)
        return self.embedding(self.body(x))  # (B, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))  # (B, classes)

    def split(self, logits: Tensor) -> tuple[Tensor, ...]:
        """The logits ``(B, classes)`` as one ``(B, k)`` block per head."""
        return logits.split(self.heads, dim=-1)

    def read(self, x: Tensor) -> Tensor:
        """The most probable class of each head, ``(B, len(heads))`` int64."""
        return torch.stack([block.argmax(-1) for block in self.split(self(x))], dim=-1)


@dataclass
class FeatureNetCard:
    """What a shipped feature network is: its input, its training, its measured accuracy."""

    name: str
    in_shape: tuple[int, int, int]
    classes: int
    width: int
    features: int
    dataset: str
    test_accuracy: float  # multi-head: the fraction of test images with every specified factor read right
    command: str
    heads: dict[str, int] = field(default_factory=dict)  # name -> classes of each softmax head; {}: one head
    head_accuracy: dict[str, float] = field(default_factory=dict)  # per head, on the test images that show it
    coordinates: bool = False  # CoordConv input channels (Classifier)
    train_seconds: float | None = None  # wall-clock training time, when recorded


#: built-in domain networks (their weights and cards live in WEIGHTS_DIR); ``any_data``: also the
#: default for other data of the same image size (a clothes classifier still gives useful features
#: of digits; a reader of coloured shapes on black says nothing about photographs)
DOMAIN_NETS = {
    "fmnist-net": dict(in_shape=(1, 28, 28), dataset="fashion-mnist", width=32, features=128, any_data=True),
    "digits-net": dict(in_shape=(1, 8, 8), dataset="digits", width=32, features=64, any_data=True),
    "scene-net": dict(in_shape=(3, 32, 32), dataset="scenes", width=16, features=128, any_data=False,
                      coordinates=True),
}


def default_net(spec: DataSpec) -> str:
    """The feature network for ``spec``: the domain network trained on that dataset, else one that
    serves any data of its image size, else Inception."""
    shape = tuple(spec.shape)
    own = [n for n, d in DOMAIN_NETS.items() if d["dataset"] == spec.name and d["in_shape"] == shape]
    same_size = [n for n, d in DOMAIN_NETS.items() if d["any_data"] and d["in_shape"] == shape]
    return (own + same_size + ["inception"])[0]


class FeatureExtractor:
    """A network that maps images in [0, 1] to (features, class probabilities)."""

    def __init__(self, name: str, net: nn.Module, in_shape: tuple[int, ...] | None) -> None:
        self.name = name
        self.net = net.eval()
        self.in_shape = in_shape  # None: any size (the network resizes)

    @torch.inference_mode()
    def __call__(self, images: Tensor, batch_size: int = FEATURE_BATCH, *, progress: bool = False,
                 desc: str = "features") -> tuple[Tensor, Tensor]:
        """Features ``(N, F)`` float64 and class probabilities ``(N, K)`` of images ``(N, C, H, W)`` in
        [0, 1], with a progress bar over the batches when ``progress``."""
        from dgm.eval.core import progress_bar

        device = next(self.net.parameters()).device
        feats, probs = [], []
        starts = range(0, len(images), batch_size)
        for lo in progress_bar(starts, enabled=progress, total=len(starts), desc=f"{desc} ({self.name})"):
            x = images[lo:lo + batch_size].to(device).float()
            f, logits = self._forward(x)
            feats.append(f.double().cpu())
            probs.append(torch.softmax(logits.double(), -1).cpu())
        return torch.cat(feats), torch.cat(probs)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.net, Classifier):
            f = self.net.embed(x)
            return f, self.net.split(self.net.head(f))[0]  # several heads: the first is the class of IS
        out = self.net(x)  # the Inception network returns both
        return out["pool"], out["logits_unbiased"]

    @property
    def fingerprint(self) -> str:
        """A hash of every byte of the weights (with their names, shapes and dtypes), so cached
        reference features are never reused across networks, however small the difference."""
        h = hashlib.sha256()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(f"{k} {tuple(v.shape)} {v.dtype}".encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:KEY_HEX_DIGITS]


def check_input(name: str, in_shape: tuple[int, ...] | None, spec: DataSpec) -> None:
    """One clear error for images a network cannot take: domain networks never resize silently."""
    if not spec.is_image:
        raise DgmError(f"the {name} feature network takes images, but {spec.name!r} has shape {spec.shape}")
    if in_shape is not None and tuple(spec.shape) != tuple(in_shape):
        c, h, w = in_shape
        raise DgmError(f"the {name} feature network takes {c}x{h}x{w} images, not "
                       f"{'x'.join(map(str, spec.shape))}: use --feature-net inception (resizes any image) "
                       f"or a network for this size")


def card(name: str) -> FeatureNetCard:
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.exists():
        raise DgmError(f"the {name} weights are not in this installation ({path} is missing): "
                       f"train them with 'python benchmarks/train_feature_nets.py --nets {name}'")
    raw = json.loads(path.read_text())
    raw["in_shape"] = tuple(raw["in_shape"])
    return FeatureNetCard(**raw)


def load_domain_net(name: str, device: str | torch.device = "cpu") -> Classifier:
    from dgm.train.checkpoint import load_state_dict_checked, load_tensors

    info = card(name)
    net = Classifier(info.in_shape, info.classes, width=info.width, features=info.features,
                     heads=tuple(info.heads.values()), coordinates=info.coordinates)
    weights = WEIGHTS_DIR / f"{name}.safetensors"
    load_state_dict_checked(net, load_tensors(weights), weights)
    return net.to(device).eval()


def feature_extractor(name: str | None, spec: DataSpec, *, inception_weights: str | None = None,
                      device: str | torch.device = "cpu") -> FeatureExtractor:
    """The feature network ``name`` (``None``: :func:`default_net`), checked against the data it will see."""
    if name is None:
        name = default_net(spec)
    if name in DOMAIN_NETS:
        in_shape = DOMAIN_NETS[name]["in_shape"]
        check_input(name, in_shape, spec)
        return FeatureExtractor(name, load_domain_net(name, device), in_shape)
    if name == "inception":
        from dgm.eval.inception import load_inception

        check_input(name, None, spec)
        return FeatureExtractor(name, load_inception(inception_weights, device=device), None)
    raise unknown_name("feature network", name, [*DOMAIN_NETS, "inception"])


class FrechetReference:
    """The FID of any set of images against one fixed set ``reference (N, C, H, W)`` in [0, 1], in the
    features of ``extractor``: the reference's statistics are computed once, so a sweep (the
    reconstructions at every rate of a rate-distortion curve) pays for them once."""

    def __init__(self, extractor: FeatureExtractor, reference: Tensor) -> None:
        self.extractor = extractor
        self.stats = GaussianStats.from_features(extractor(reference)[0])

    def __call__(self, images: Tensor) -> float:
        """FID of ``images (M, C, H, W)`` in [0, 1] against the reference."""
        return frechet_distance(GaussianStats.from_features(self.extractor(images)[0]), self.stats)


# --- cached reference features of data splits ------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("DGM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dgm" / "features"


def cache_path(extractor: FeatureExtractor, images: Tensor, key: str) -> Path:
    """Where the features of ``images`` are cached: ``key`` plus the network's fingerprint and a
    hash of the images themselves (a changed split is never served stale)."""
    digest = hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:KEY_HEX_DIGITS]
    return cache_dir() / f"{extractor.name}-{extractor.fingerprint}-{key}-{digest}.safetensors"


def cached_features(extractor: FeatureExtractor, images: Tensor, key: str, *, progress: bool = False,
                    desc: str = "features", compute: Callable[[], tuple[Tensor, Tensor]] | None = None,
                    world: World = SINGLE) -> tuple[Tensor, Tensor]:
    """Features and probabilities of ``images``, cached on disk (see :func:`cache_path`); computed
    with a progress bar when ``progress``, by ``compute()`` when given (the work spread over the
    processes of ``world``, which agree on whether the cache serves them all; rank 0 writes it)."""
    path = cache_path(extractor, images, key)
    stored = read_cache(path)
    if world.active and not all(gather(stored is not None, world)):  # one process's disk lacks it: all compute
        stored = None
    if stored is not None:
        return stored
    features, probs = compute() if compute is not None else extractor(images, progress=progress, desc=desc)
    if world.writes:
        from dgm.train.checkpoint import save_tensors

        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors({"features": features, "probs": probs}, path)
    return features, probs


def read_cache(path: Path) -> tuple[Tensor, Tensor] | None:
    """The features and probabilities cached at ``path``; None when missing or damaged (recomputed)."""
    if not path.exists():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(str(path))
        return stored["features"], stored["probs"]
    except (SafetensorError, OSError, KeyError):
        return None
