"""Parity: dgm's FID Inception-v3 (and sample-quality metrics) against torch-fidelity 0.4.0.

Runs in its OWN virtual environment, because torch-fidelity needs torchvision, whose registry wheel
is built for CUDA torch and fails to import next to the CPU torch dgm uses::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install torch==2.13.0 numpy scipy tqdm pillow
    /tmp/tfenv/bin/pip install --no-deps torch-fidelity==0.4.0
    /tmp/tfenv/bin/pip install safetensors scikit-learn
    /tmp/tfenv/bin/pip install --no-deps -e /work/main
    /tmp/tfenv/bin/python benchmarks/parity_torch_fidelity.py

(a) Features: both networks load the same random-weight ``.pth`` (the real file's keys and shapes;
    the pretrained weights cannot be downloaded here) and see the same uint8 images of several
    sizes; we report the largest absolute and relative differences of the 2048-d pool features and
    of ``logits_unbiased``, and of the TF1.x resize on its own.
(b) Metrics: if ``dgm.eval.fidelity`` exists, FID, KID, precision/recall and IS of dgm and of
    torch-fidelity on the same random feature arrays.

Prints markdown tables (for docs/parity.md). ``--write-keys FILE`` instead writes torch-fidelity's
state-dict key -> shape table (tests/data/inception_keys.json, used by tests/test_inception.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch


def stub_torchvision() -> None:
    """Put a minimal ``torchvision`` into ``sys.modules`` before torch-fidelity is imported.

    torch-fidelity imports torchvision at module level (its CIFAR/STL dataset wrappers subclass
    torchvision datasets; the VGG16, CLIP and DINOv2 extractors and the image-folder loader use
    torchvision.models / transforms). None of that code runs in this comparison, but the real
    torchvision cannot be imported next to CPU torch. So the stub only has to satisfy the imports:
    the three dataset classes (subclassed at import time) and the submodules; calling anything in
    it fails loudly.
    """
    if "torchvision" in sys.modules:
        return

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchvision is stubbed out in this parity script")

    def any_attribute(name: str):
        if name.startswith("__"):  # keep the import machinery's probes (__path__, ...) honest
            raise AttributeError(name)
        return unavailable

    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("CIFAR10", "CIFAR100", "STL10"):
        setattr(datasets, name, type(name, (), {"__init__": unavailable}))
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    models = types.ModuleType("torchvision.models")
    for mod in (transforms, functional, models):
        mod.__getattr__ = any_attribute  # type: ignore[method-assign]
    transforms.functional = functional
    tv.datasets, tv.transforms, tv.models = datasets, transforms, models
    tv.__version__ = "0.0-stub"
    sys.modules.update({"torchvision": tv, "torchvision.datasets": datasets, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.models": models})


stub_torchvision()
import torch_fidelity  # noqa: E402
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: E402
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x  # noqa: E402

from dgm.eval.inception import load_inception, random_inception_weights, resize_bilinear_tf1  # noqa: E402


def tf_extractor(weights: Path) -> FeatureExtractorInceptionV3:
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                                       feature_extractor_weights_path=str(weights))


def write_keys(path: Path, weights: Path) -> None:
    """torch-fidelity's state-dict key -> shape table. Loading dgm's random weights into
    torch-fidelity's module (strict) already proves the names agree; the table lets dgm's tests
    check it without torch-fidelity installed."""
    net = tf_extractor(weights)
    table = {k: list(v.shape) for k, v in net.state_dict().items()}
    doc = {
        "provenance": f"state_dict() of torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3 "
                      f"(torch-fidelity {torch_fidelity.__version__}, torch {torch.__version__}), written by "
                      f"'python benchmarks/parity_torch_fidelity.py --write-keys tests/data/inception_keys.json' "
                      f"in the torch-fidelity virtual environment",
        "note": "the *.num_batches_tracked buffers belong to the module but are absent from the weights file "
                "pt_inception-2015-12-05-6726825d.pth (torch-fidelity's utils/util_convert_inception_weights.py "
                "writes only conv weights, BatchNorm weight/bias/running_mean/running_var and fc weight/bias)",
        "keys": table,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != "keys"]
    keys = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items())
    path.write_text("{\n" + ",\n".join(lines) + ',\n "keys": {\n' + keys + "\n }\n}\n")  # one key a line
    print(f"wrote {len(table)} keys to {path}")


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|)."""
    d = (a.double() - b.double()).abs().max().item()
    return d, d / max(b.double().abs().max().item(), 1e-30)


def images(seed: int) -> dict[str, torch.Tensor]:
    """uint8 test batches: smooth random fields plus noise (so resizing matters), several sizes."""
    g = torch.Generator().manual_seed(seed)

    def batch(n: int, c: int, h: int, w: int) -> torch.Tensor:
        coarse = torch.rand(n, c, max(h // 4, 2), max(w // 4, 2), generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        x = 255 * (0.8 * smooth + 0.2 * torch.rand(n, c, h, w, generator=g))
        return x.round().clamp(0, 255).to(torch.uint8)

    return {"28x28 gray": batch(4, 1, 28, 28), "32x32 RGB": batch(4, 3, 32, 32), "64x64 RGB": batch(4, 3, 64, 64),
            "299x299 RGB": batch(2, 3, 299, 299), "512x384 RGB": batch(2, 3, 512, 384)}


def feature_parity(weights: Path) -> list[str]:
    tf_net = tf_extractor(weights)
    dgm_net = load_inception(weights)
    rows = ["| input | pool max abs diff | pool max rel diff | logits_unbiased max abs diff | "
            "logits_unbiased max rel diff | pool range |",
            "|---|---|---|---|---|---|"]
    for name, x in images(0).items():
        x_rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # torch-fidelity takes 3 channels only
        with torch.no_grad():
            tf_pool, tf_unb, _ = tf_net(x_rgb)
        for label, inp in ((name, x), (f"{name}, as float in [0, 1]", x.float() / 255)):
            out = dgm_net(inp)
            pa, pr = diff(out.pool, tf_pool)
            la, lr = diff(out.logits_unbiased, tf_unb)
            rows.append(f"| {label} (B={len(x)}) | {pa:.2e} | {pr:.2e} | {la:.2e} | {lr:.2e} | "
                        f"{tf_pool.min().item():.3g}..{tf_pool.max().item():.3g} |")
            if name not in ("28x28 gray", "64x64 RGB"):
                break  # the float path is shown on two sizes
    return rows


def resize_parity() -> list[str]:
    g = torch.Generator().manual_seed(1)
    rows = ["| resize | max abs diff (0..255 input) |", "|---|---|"]
    for (h, w), out in (((28, 28), 299), ((32, 32), 299), ((64, 48), 299), ((512, 384), 299), ((7, 5), 13)):
        x = torch.rand(2, 3, h, w, generator=g) * 255
        ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(out, out), align_corners=False)
        rows.append(f"| {h}x{w} -> {out}x{out} | {(resize_bilinear_tf1(x, (out, out)) - ref).abs().max().item():.2e} |")
    return rows


# --- (b) metrics on feature arrays -------------------------------------------------------------------
def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def metric_parity(n: int, dim: int, seed: int = 0) -> list[str]:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    from dgm.eval import fidelity

    rng = np.random.default_rng(seed)
    # Non-negative, correlated features like pooled ReLU activations; "fake" slightly shifted and
    # rescaled, so that precision and recall are strictly between 0 and 1.
    mix = rng.standard_normal((dim, dim)) / math.sqrt(dim)
    real = np.abs(rng.standard_normal((n, dim)) @ mix).astype(np.float32)
    fake = np.abs((1.02 * rng.standard_normal((n, dim)) + 0.02) @ mix).astype(np.float32)
    t_real, t_fake = torch.from_numpy(real), torch.from_numpy(fake)
    rows = [f"| metric (N={n} vs {n}, D={dim}) | dgm | torch-fidelity | relative difference |", "|---|---|---|---|"]

    def row(name: str, ours: float, theirs: float, note: str = "") -> None:
        rows.append(f"| {name} | {ours:.10g} | {theirs:.10g} | {rel(ours, theirs):.1e}{note} |")

    def dgm_stats(x: np.ndarray) -> fidelity.GaussianStats:
        acc = fidelity.StreamingStats()  # in two batches, to exercise the streaming accumulator
        acc.update(x[: len(x) // 2])
        acc.update(x[len(x) // 2:])
        return acc.stats()

    # FID. torch-fidelity: float32 mean, float64 np.cov, eigvals of the non-symmetric product.
    theirs = fid_statistics_to_metric(fid_features_to_statistics(t_fake), fid_features_to_statistics(t_real),
                                      verbose=False)["frechet_inception_distance"]
    ours = fidelity.frechet_distance(dgm_stats(fake), dgm_stats(real))
    row("FID", ours, theirs)
    # the same with float64 features, which removes torch-fidelity's float32 mean from the difference
    theirs = fid_statistics_to_metric(fid_features_to_statistics(t_fake.double()),
                                      fid_features_to_statistics(t_real.double()),
                                      verbose=False)["frechet_inception_distance"]
    row("FID, torch-fidelity given float64 features", ours, theirs)

    # KID. dgm draws subsets in torch-fidelity's order, so the same seed gives the same subsets;
    # torch-fidelity's kernels are float32 numpy, dgm's float64.
    kid_kw = dict(kid_subsets=1, kid_subset_size=n, rng_seed=2020, verbose=False)
    kid_tf = kid_features_to_metric(t_fake, t_real, **kid_kw)
    ours = fidelity.kid(fake, real, subsets=1, subset_size=n, seed=2020)[0]
    row("KID, 1 subset of size N (deterministic)", ours, kid_tf["kernel_inception_distance_mean"])
    # torch-fidelity's kernels follow the features' dtype: float64 features remove its float32 rounding
    kid_tf = kid_features_to_metric(t_fake.double(), t_real.double(), **kid_kw)
    row("KID, same, torch-fidelity given float64 features", ours, kid_tf["kernel_inception_distance_mean"])
    subsets, size = 100, min(1000, n // 2)
    kid_tf = kid_features_to_metric(t_fake, t_real, kid_subsets=subsets, kid_subset_size=size, rng_seed=2020,
                                    verbose=False)
    theirs, theirs_std = kid_tf["kernel_inception_distance_mean"], kid_tf["kernel_inception_distance_std"]
    row(f"KID, {subsets} subsets of {size}, same seed (2020)",
        fidelity.kid(fake, real, subsets=subsets, subset_size=size, seed=2020)[0], theirs)
    # different seeds: two independent subset draws; standard error of their difference
    ours, ours_std = fidelity.kid(fake, real, subsets=subsets, subset_size=size, seed=0)
    se = math.sqrt((ours_std**2 + theirs_std**2) / subsets)
    row(f"KID, {subsets} subsets of {size}, seeds 0 vs 2020", ours, theirs,
        f" (= {abs(ours - theirs) / se:.2f} standard errors of the difference)")

    # precision / recall (k = 3); torch-fidelity's argument order is (generated, real)
    precision, recall = calculate_precision_recall_part(t_fake, t_real, neighborhood=3)
    p_ours, r_ours = fidelity.precision_recall(real, fake, k=3)
    row("precision (k=3)", p_ours, precision)
    row("recall (k=3)", r_ours, recall)

    # Inception Score of random logits over 1008 classes; torch-fidelity unshuffled (dgm never shuffles)
    logits = torch.from_numpy(rng.standard_normal((n, 1008)).astype(np.float32)) * 3
    theirs = isc_features_to_metric(logits, splits=10, shuffle=False)["inception_score_mean"]
    row("Inception Score (10 splits)", fidelity.inception_score(torch.softmax(logits.double(), 1), splits=10)[0],
        theirs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-keys", type=Path, help="write torch-fidelity's key -> shape table here and exit")
    parser.add_argument("--skip-features", action="store_true", help="only compare the metrics")
    parser.add_argument("--n", type=int, default=2500, help="feature vectors per set for the metric comparison")
    args = parser.parse_args()

    print(f"torch-fidelity {torch_fidelity.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads\n")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random-inception.pth"
        # a plain dict of tensors, without num_batches_tracked: the layout of the real weights file
        torch.save(random_inception_weights(seed=0), weights)
        if args.write_keys:
            write_keys(args.write_keys, weights)
            return
        if not args.skip_features:
            start = time.time()
            print("Features (random weights, the same .pth file loaded by both):\n")
            print("\n".join(feature_parity(weights)))
            print("\nTF1.x bilinear resize alone (float32 input):\n")
            print("\n".join(resize_parity()))
            print(f"\n({time.time() - start:.0f} s)")

    if importlib.util.find_spec("dgm.eval.fidelity") is None:
        print("\ndgm.eval.fidelity not found: metric comparison skipped")
        return
    for n, dim in ((args.n, 2048), (1000, 64)):
        start = time.time()
        print("\n" + "\n".join(metric_parity(n, dim)))
        print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
