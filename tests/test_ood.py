"""Likelihood-based OOD tests (dgm.apps.ood): AUROC against a pairwise count, the typicality score,
the sets made in the run's shape, and `dgm ood` end to end (a digits VAE tells noise apart)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dgm import run
from dgm.apps.ood import auroc, in_shape_of, ood_set, typicality_scores
from dgm.cli import main
from dgm.data.core import DataSpec


def pairwise_auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2, by counting every pair."""
    diff = positives[:, None] - negatives[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_auroc_is_the_probability_that_a_positive_outscores_a_negative() -> None:
    rng = np.random.default_rng(0)
    negatives, positives = rng.normal(size=200), rng.normal(0.7, size=150).round(1)
    assert auroc(negatives.round(1), positives) == pytest.approx(pairwise_auroc(negatives.round(1), positives))
    assert auroc(np.zeros(3), np.ones(4)) == 1.0 and auroc(np.ones(3), np.zeros(4)) == 0.0
    assert auroc(np.ones(3), np.ones(4)) == 0.5


def test_the_typicality_score_is_the_distance_to_the_entropy() -> None:
    nll = np.array([90.0, 100.0, 130.0])
    assert typicality_scores(nll, 100.0).tolist() == [10.0, 0.0, 30.0]  # a too-likely input is atypical too


def test_sets_are_made_in_the_run_s_shape_and_representation() -> None:
    config = run.RunConfig("vae", data=run.DataConfig("digits"))
    test = run.load_data(config, "test").subset(20)
    for name in ("noise", "inverted"):
        made = ood_set(name, test, config, seed=0)
        assert made.spec.shape == test.spec.shape and made.spec.representation == test.spec.representation
        assert len(made) == 20 and made.spec.num_classes is None
    inverted = ood_set("inverted", test, config, seed=0)
    assert torch.equal(inverted.raw.long(), test.spec.levels - 1 - test.raw.long())
    small = torch.rand(5, 1, 8, 8)
    big = in_shape_of(small, DataSpec(name="rgb", shape=(3, 28, 28)))  # grey to RGB, 8x8 up to 28x28
    assert big.shape == (5, 3, 28, 28) and torch.allclose(big[:, 0], big[:, 2])
    flat = in_shape_of(torch.full((2, 3, 28, 28), 0.25), test.spec)  # area-averaged down to 8x8, grey
    assert flat.shape == (2, 1, 8, 8) and torch.allclose(flat, torch.tensor(0.25))


def test_dgm_ood_tells_noise_from_digits_and_records_it(tmp_path) -> None:
    out = tmp_path / "r"
    assert main(["train", "vae", "--data", "digits", "--epochs", "3", "--quiet", "--out", str(out)]) == 0
    assert main(["ood", str(out), "--against", "noise,inverted", "--max-examples", "100", "--k", "10",
                 "--quiet"]) == 0
    results = {r["metric"]: r for r in json.loads((out / "eval.json").read_text())}
    assert results["ood_auroc_noise"]["value"] > 0.95
    assert results["ood_typicality_auroc_noise"]["value"] > 0.95
    noise = results["ood_auroc_noise"]["details"]
    assert noise["bits_per_dim_ood"] > noise["bits_per_dim_test"]
    assert main(["ood", str(out), "--against", "digits"]) == 2  # its own data
    assert main(["ood", str(out), "--against", "no-such-data"]) == 2
    assert main(["ood", str(out), "--against", ","]) == 2
