"""Likelihood-based out-of-distribution tests: does the model give data unlike its training data a
lower likelihood?

Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan 2019, "Do Deep Generative Models Know What
They Don't Know?" (ICLR, arXiv:1810.09136): flows, VAEs and PixelCNNs trained on Fashion-MNIST give
MNIST digits a *higher* likelihood than their own test set, so thresholding p(x) fails. Their
follow-up (Nalisnick et al. 2019, arXiv:1906.02994) tests *typicality* instead: an input is out of
distribution when its negative log-likelihood is far from the model's entropy, estimated as the mean
NLL of held-out training data::

    likelihood test:   score(x) = -log p(x)
    typicality test:   score(x) = | -log p(x) - H_hat |,   H_hat = mean of -log p over M training examples

(the single-input version, M = 1 in their notation for the test batch). Each score is summarised by
the AUROC of telling the run's test split (negatives) from an out-of-distribution set (positives):
1 separates them, 0.5 is chance, below 0.5 the score ranks the OOD set as *more* typical.

``dgm ood RUN --against noise,inverted,digits`` works for every model with a likelihood (exact
``log_prob``, else the IWAE bound with ``--k`` samples, else the ELBO), on image data. The sets are
made in the run's own shape and representation: ``noise`` (uniform levels), ``inverted`` (the test
images, 1 - x), or any image dataset of ``dgm list`` resized to the run's size (area averaging down,
bilinear up; channels averaged or repeated). The AUROCs go into the run's ``eval.json``
(``ood_auroc_SET`` and ``ood_typicality_auroc_SET``) beside the bits/dim of both sides.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE
from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel

def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """The area under the ROC curve of ``score`` telling positives from negatives (higher = positive),
    ties counted half: the probability that a random positive outscores a random negative."""
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(truth, np.r_[negatives, positives]))


def typicality_scores(nll: np.ndarray, entropy: float) -> np.ndarray:
    """``| -log p(x) - H_hat |`` of every input (Nalisnick et al. 2019, arXiv:1906.02994)."""
    return np.abs(nll - entropy)


def in_shape_of(images: Tensor, spec: DataSpec) -> Tensor:
    """Images ``(N, C', H', W')`` in [0, 1] resized and recoloured to ``spec``'s ``(C, H, W)``."""
    C, H, W = spec.shape
    if images.shape[1] != C:  # grey (the channels' mean) repeated into each channel
        images = images.mean(1, keepdim=True).expand(-1, C, -1, -1)
    if images.shape[2:] != (H, W):
        down = images.shape[2] > H
        images = F.interpolate(images, size=(H, W), mode="area" if down else "bilinear",
                               **({} if down else {"align_corners": False}))
    return images.clamp(0, 1)


def unit_images(data: Dataset) -> Tensor:
    """The stored images of a split as [0, 1] floats, whatever its representation."""
    return data.raw.float().cpu() / (data.spec.levels - 1)


def as_dataset(images: Tensor, like: Dataset, name: str) -> Dataset:
    """[0, 1] images in the shape of ``like`` as a test split in its representation (stored as its levels)."""
    levels = like.spec.levels
    raw = (images * (levels - 1)).round().to(torch.uint8)
    spec = DataSpec(**{**like.spec.to_json(), "name": name, "num_classes": None, "class_names": None,
                       "extras": {}})
    return Dataset(raw.contiguous(), None, spec, train=False)


def ood_set(name: str, test: Dataset, run_config, *, seed: int) -> Dataset:  # noqa: ANN001 (a dgm.RunConfig)
    """The out-of-distribution set ``name`` with as many images as ``test``, in its shape and representation."""
    n, spec = len(test), test.spec
    if name == "noise":
        raw = torch.randint(0, spec.levels, (n, *spec.shape), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.uint8)
        return as_dataset(raw.float() / (spec.levels - 1), test, "uniform noise")
    if name == "inverted":
        return as_dataset(1 - unit_images(test), test, f"{spec.name}, inverted")
    from dgm import data

    if name == run_config.data.name:
        raise DgmError(f"{name!r} is the run's own data: name another dataset (or noise, inverted)")
    other = data.load(name, "test")
    if not other.spec.is_image:
        raise DgmError(f"{name!r} is not image data: name an image dataset of 'dgm list' (or noise, inverted)")
    images = in_shape_of(unit_images(other.subset(n)), spec)
    return as_dataset(images, test, f"{name} as {'x'.join(map(str, spec.shape[1:]))}")


def log_likelihoods(model: GenerativeModel, data: Dataset, *, k: int, seed: int, progress: bool) -> tuple[Tensor, str]:
    """log p(x) of every example, ``(N,)``, by the estimate ``dgm eval``'s nll takes (exact, else the
    IWAE bound with ``k`` samples, else the ELBO; each batch from its own seed), and what it is."""
    from dgm.eval.core import EvalContext
    from dgm.eval.metrics import best_log_px

    with torch.inference_mode():
        return best_log_px(model, EvalContext(data.to(model.device), seed=seed, progress=progress, k=k))


@dataclass
class OODTest:
    """The two tests against one set, and the bits/dim of both sides."""

    name: str
    auroc_likelihood: float
    auroc_typicality: float
    bits_in: float  # mean bits/dim of the run's test split
    bits_out: float  # ... and of the OOD set


def ood_tests(model: GenerativeModel, test: Dataset, train: Dataset, sets: dict[str, Dataset], *, k: int = 100,
              seed: int = 0, progress: bool = False) -> tuple[list[OODTest], str]:
    """The likelihood and typicality tests of ``model`` telling ``test`` from each of ``sets``; the
    entropy of the typicality test from ``len(test)`` training examples."""
    from dgm.eval.likelihood import bits_per_dim

    def bits(nll_nats: np.ndarray) -> float:
        value = bits_per_dim(float(nll_nats.mean()), model.spec, model.likelihood_kind)
        return value if value is not None else float(nll_nats.mean()) / (math.log(2) * model.spec.dim)

    def nll(data: Dataset) -> tuple[np.ndarray, str]:
        log_px, what = log_likelihoods(model, data, k=k, seed=seed, progress=progress)
        return -log_px.double().cpu().numpy(), what

    (inside, what), entropy = nll(test), float(nll(train.subset(len(test)))[0].mean())
    results = []
    for name, data in sets.items():
        outside, _ = nll(data)
        results.append(OODTest(name, auroc(inside, outside),
                               auroc(typicality_scores(inside, entropy), typicality_scores(outside, entropy)),
                               bits(inside), bits(outside)))
    return results, what


@register_app
class OOD(App):
    name = "ood"
    description = "out-of-distribution tests by likelihood and typicality: AUROC against noise, inverted or other data"
    requires_any = frozenset({"log_prob", "iwae_bound", "elbo"})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        parser.add_argument("--against", default="noise,inverted",
                            help="comma-separated: noise, inverted, or image datasets of 'dgm list' (e.g. digits)")
        parser.add_argument("--max-examples", type=POSITIVE, default=1000,
                            help="test images (and as many of each OOD set and of training data)")
        parser.add_argument("--k", type=POSITIVE, default=100, help="importance samples of IWAE bounds")

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        from dgm import run
        from dgm.eval import Result
        from dgm.eval.core import record_results

        if not model.spec.is_image:
            raise DgmError(f"the OOD tests make image sets, and {model.spec.name!r} is not image data")
        names = [s.strip() for s in args.against.split(",") if s.strip()]
        if not names:
            raise DgmError("name at least one set to test against: --against noise,inverted,digits")
        config, _ = run.read_config(args.run)
        test = run.load_data(config, "test").subset(args.max_examples)
        train = run.load_data(config, "train")
        sets = {name: ood_set(name, test, config, seed=args.seed) for name in names}
        tests, what = ood_tests(model, test, train, sets, k=args.k, seed=args.seed, progress=not args.quiet)
        split = f"test, n={len(test)}"
        results = []
        for t in tests:
            details = {"bits_per_dim_test": t.bits_in, "bits_per_dim_ood": t.bits_out, "ood_set": sets[t.name].spec.name}
            results += [Result(f"ood_auroc_{t.name}", t.auroc_likelihood, "", f"AUROC of -log p(x), {what}, test vs "
                               f"{sets[t.name].spec.name}", split, details),
                        Result(f"ood_typicality_auroc_{t.name}", t.auroc_typicality, "",
                               f"AUROC of |-log p(x) - H|, {what}, H from {len(test)} training examples, test vs "
                               f"{sets[t.name].spec.name}", split, details)]
        record_results(args.run, results)
        lines = [f"{args.run}: {what}, {len(test)} test images vs each set -> eval.json"]
        lines += [f"  {t.name}: bits/dim test {t.bits_in:.3f}, {t.name} {t.bits_out:.3f}; AUROC likelihood "
                  f"{t.auroc_likelihood:.3f}, typicality {t.auroc_typicality:.3f}" for t in tests]
        return "\n".join(lines)
