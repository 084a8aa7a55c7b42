"""MIG, SAP and DCI (dgm.eval.disentanglement) on codes whose answers are known: the factors themselves
(perfectly disentangled), copies of one mixed signal (fully entangled), noise, constant dims, a
hand-computed mutual-information table; then the metrics through dgm.evaluate."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

import dgm
from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError
from dgm.eval.core import METRICS, supported
from dgm.eval.disentanglement import (MIG_BINS, dci, dci_from_importance, discretize, mig, mutual_information,
                                      normalised_mutual_information, sap)
from dgm.models.base import GenerativeModel, create
from conftest import image_dataset

SIZES = (3, 4, 5)  # values of each of the three factors
GRID = np.array(list(itertools.product(*[range(k) for k in SIZES])))  # (60, 3): every combination once
TRAIN = np.concatenate([GRID] * 3)  # (180, 3) the fit part: every combination three times
PERFECT_SAP = float(np.mean([1 - 1 / k for k in SIZES]))  # a stump on an independent dim: balanced accuracy 1/K


def test_perfectly_disentangled_codes_score_one():
    """Codes = the factors: each factor value in its own bin (20 bins over 0..K-1), so MIG is exactly 1;
    each factor's own dim predicts it perfectly and the others at balanced chance 1/K_k exactly (every
    combination equally often), so SAP is mean(1 - 1/K_k); the forests split on the factor's own dim
    only, so D = C = 1 and I = 1."""
    z, ztr = GRID.astype(float), TRAIN.astype(float)
    m = mig(z, GRID)
    assert m.value == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(m.normalised_mi, np.eye(3), atol=1e-12)
    s = sap(ztr, TRAIN, z, GRID)
    assert s.value == pytest.approx(PERFECT_SAP, abs=1e-12)
    np.testing.assert_allclose(s.scores, np.where(np.eye(3, dtype=bool), 1.0, [1 / k for k in SIZES]), atol=1e-12)
    d = dci(ztr, TRAIN, z, GRID)
    assert d.disentanglement == pytest.approx(1, abs=1e-9) and d.completeness == pytest.approx(1, abs=1e-9)
    assert d.informativeness == 1.0
    np.testing.assert_allclose(d.importance, np.eye(3), atol=1e-9)


def test_copies_of_one_mixed_signal_are_fully_entangled():
    """Three identical dims carrying one random mixture of the factors: the top two dims of every factor
    tie, so MIG = SAP = 0 exactly; the forests spread each factor's importance over the copies, so every
    dim serves every factor (D and C near 0), yet the mixture still determines the factors (I = 1)."""
    w = np.random.default_rng(0).normal(size=3)
    signal = lambda v: np.repeat((v @ w)[:, None], 3, axis=1)  # noqa: E731  (N, 3) copies of v.w
    z, ztr = signal(GRID), signal(TRAIN)
    assert mig(z, GRID).value == 0.0
    assert sap(ztr, TRAIN, z, GRID).value == 0.0
    d = dci(ztr, TRAIN, z, GRID)
    assert d.disentanglement < 0.05 and d.completeness < 0.05 and d.informativeness == 1.0


def test_a_random_rotation_of_the_factors_is_partly_entangled():
    M = np.random.default_rng(0).normal(size=(3, 3))  # each dim a mixture of all three factors
    z, ztr = GRID @ M, TRAIN @ M
    assert mig(z, GRID).value < 0.5
    assert sap(ztr, TRAIN, z, GRID).value < 0.5 * PERFECT_SAP
    assert dci(ztr, TRAIN, z, GRID).disentanglement < 0.3


def test_noise_codes_carry_no_factor():
    """Codes independent of the factors: MIG and SAP near 0 (the plug-in MI's small positive bias, the
    stumps' chance fluctuations), D and C near 0, and the forests at chance accuracy mean(1/K_k)."""
    rng = np.random.default_rng(1)
    n = 2000
    factors = lambda: np.stack([rng.integers(k, size=n) for k in SIZES], axis=1)  # noqa: E731
    vtr, vte, ztr, zte = factors(), factors(), rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    assert mig(zte, vte).value < 0.02
    assert sap(ztr, vtr, zte, vte).value < 0.03
    d = dci(ztr, vtr, zte, vte)
    assert d.informativeness == pytest.approx(np.mean([1 / k for k in SIZES]), abs=0.03)
    assert d.disentanglement < 0.05 and d.completeness < 0.05


def test_mutual_information_of_a_hand_computed_table():
    """Four examples, factors (v0, v1) = (0,0), (0,1), (1,0), (1,1); dim 0 = v0, dim 1 = v0 AND v1.
    I(z0; v0) = ln 2, I(z0; v1) = 0; I(z1; v0) = I(z1; v1) = H(1/4) + ln 2 - 1.5 ln 2 (z1's entropy plus
    v's minus their joint's (1/2, 1/4, 1/4)), i.e. 1.5 - 0.75 log2(3) bits = m of v's 1 bit. MIG =
    ((1 - m) + (m - 0)) / 2 = 1/2."""
    v = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    z = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    h_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ln2, m = math.log(2), 1.5 - 0.75 * math.log2(3)
    np.testing.assert_allclose(mutual_information(z, v), [[ln2, 0], [h_quarter - 0.5 * ln2] * 2], atol=1e-12)
    np.testing.assert_allclose(normalised_mutual_information(z, v), [[1, 0], [m, m]], atol=1e-12)
    score = mig(z, v)
    assert score.value == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(score.per_factor, [1 - m, m], atol=1e-12)


def test_normalised_mutual_information_matches_a_reference_from_counts():
    """Against I = H(z) + H(v) - H(z, v) from scipy entropies of the contingency table, with the bins
    computed by floor((z - min) / width) (the maximum into the last bin)."""
    rng = np.random.default_rng(2)
    n, sizes = 500, (2, 7)
    v = np.stack([rng.integers(k, size=n) for k in sizes], axis=1)
    z = np.c_[v[:, 1] + rng.normal(size=n), rng.exponential(size=n), v[:, 0] * rng.normal(size=n)]
    ours = normalised_mutual_information(z, v)
    for i in range(z.shape[1]):
        lo, hi = z[:, i].min(), z[:, i].max()
        bins = np.minimum(np.floor((z[:, i] - lo) / (hi - lo) * MIG_BINS), MIG_BINS - 1).astype(int)
        assert np.array_equal(bins + 1, discretize(z)[:, i])
        for k, size in enumerate(sizes):
            table = np.zeros((MIG_BINS, size))
            np.add.at(table, (bins, v[:, k]), 1)
            h_v = entropy(table.sum(0))
            mi = entropy(table.sum(1)) + h_v - entropy(table.ravel())
            assert ours[i, k] == pytest.approx(mi / h_v, abs=1e-12)


def test_constant_dims_and_constant_factors_have_defined_values():
    """A collapsed dim: one bin (MI 0), inactive for SAP (scores 0), no DCI importance (D_i = 0); a
    factor with one value is left out of the means (NaN); every dim constant: D = C = 0."""
    z, ztr = GRID.astype(float), TRAIN.astype(float)
    z[:, 1] = ztr[:, 1] = 7.0  # dim 1 collapsed: factor 1 is in no dim
    assert mig(z, GRID).value == pytest.approx(2 / 3, abs=1e-12)  # factors 0 and 2 perfect, factor 1 gap 0
    s = sap(ztr, TRAIN, z, GRID)
    assert np.all(s.scores[1] == 0) and s.per_factor[1] == 0
    d = dci(ztr, TRAIN, z, GRID)
    assert np.all(d.importance[1] == 0) and d.per_code[1] == 0 and d.accuracy[1] == pytest.approx(0.25)
    flat = dci(np.zeros_like(ztr), TRAIN, np.zeros_like(z), GRID)
    assert (flat.disentanglement, flat.completeness) == (0.0, 0.0) and np.isnan(flat.per_factor).all()
    one_value = GRID.copy()
    one_value[:, 2] = 0
    score = mig(GRID.astype(float), one_value)
    assert np.isnan(score.per_factor[2]) and score.value == pytest.approx(1, abs=1e-12)
    with pytest.raises(DgmError, match="every factor is constant"):
        mig(z, np.zeros_like(GRID))


def test_dci_of_a_hand_made_importance_matrix():
    """R = [[1, 0], [1, 0], [0, 1]]: dims 0 and 1 each serve factor 0 only (D_i = 1), dim 2 factor 1
    (D = 1); factor 0 is split over two of three dims: C_0 = 1 - log 2 / log 3, C_1 = 1, weighted
    by the factors' shares 2/3 and 1/3."""
    d, c, per_code, per_factor = dci_from_importance(np.array([[1.0, 0], [1, 0], [0, 1]]))
    c0 = 1 - math.log(2) / math.log(3)
    assert d == pytest.approx(1) and np.allclose(per_code, 1)
    np.testing.assert_allclose(per_factor, [c0, 1])
    assert c == pytest.approx(2 / 3 * c0 + 1 / 3)


# --- through dgm.evaluate ----------------------------------------------------------------------------
class Identity(GenerativeModel):
    """encode(x) = x: on data whose examples are their own factors, a perfectly disentangled code."""

    name = "identity"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(None, spec)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x.flatten(1).float()


def factor_data(factors: np.ndarray, *, train: bool) -> Dataset:
    """Vectors that are their factor indices, with the factors' names and sizes in the spec."""
    spec = DataSpec("factor-vectors", (3,), "continuous", levels=None,
                    extras={"factors": ["a", "b", "c"], "factor_sizes": list(SIZES)})
    f = torch.from_numpy(factors)
    return Dataset(f.float(), None, spec, train=train, factors=f)


def by_metric(results):
    return {r.metric: r for r in results}


def test_evaluate_gives_the_known_values_through_the_registry(capsys):
    test, train = factor_data(GRID, train=False), factor_data(TRAIN, train=True)
    model = Identity(test.spec)
    assert {"mig", "sap", "dci"} <= set(supported(model, test.spec))
    results = by_metric(dgm.evaluate(model, test, ["mig", "sap", "dci"], train=train, progress=True))
    assert results["mig"].value == pytest.approx(1) and results["mig"].details["per_factor"] == {"a": 1, "b": 1, "c": 1}
    assert results["sap"].value == pytest.approx(PERFECT_SAP)
    assert [results[f"dci_{x}"].value for x in ("disentanglement", "completeness", "informativeness")] \
        == pytest.approx([1, 1, 1])
    assert results["mig"].split == "test, n=60" and "fit on 180 train codes" in results["sap"].qualifier
    announced = capsys.readouterr().err
    assert "dgm: sap: codes of 180 train and 60 test examples, then thresholds per code dim and factor" in announced
    # MIG fits nothing: it runs without the training split; SAP and DCI say they need it
    assert dgm.evaluate(model, test, ["mig"], progress=False)[0].value == pytest.approx(1)
    with pytest.raises(DgmError, match="needs the training split"):
        dgm.evaluate(model, test, ["dci"], progress=False)


def test_an_untrained_vae_on_sprites_gets_all_three():
    sprites = dgm.data.load("sprites", "test", representation="binary-dynamic")
    test, train = sprites.subset(150), sprites.subset(300)
    vae = create("vae", sprites.spec, latent_dim=3, hidden=(16,))
    assert all(METRICS[m].default for m in ("mig", "sap", "dci"))  # computed whenever the data has factors
    results = by_metric(dgm.evaluate(vae, test, ["mig", "sap", "dci"], train=train, progress=False))
    names = ["mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"]
    assert all(0 <= results[n].value <= 1 for n in names)
    assert set(results["mig"].details["per_factor"]) == {"shape", "scale", "rotation", "x", "y"}


@pytest.mark.parametrize("metric", ["mig", "sap", "dci"])
def test_data_without_factors_is_refused_in_one_line(metric):
    blobs = image_dataset(n=16, representation="binary-dynamic")
    vae = create("vae", blobs.spec, latent_dim=2, hidden=(8,))
    assert metric not in supported(vae, blobs.spec)
    with pytest.raises(DgmError, match="no known generative factors.*such as --data sprites") as error:
        dgm.evaluate(vae, blobs, [metric], train=blobs, progress=False)
    assert "\n" not in str(error.value)
