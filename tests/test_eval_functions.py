"""Mode coverage (dgm.eval.toys), representation probes (dgm.eval.probes) and the memorization
summary (dgm.eval.memorization) on hand-made and synthetic data with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from dgm.errors import DgmError
from dgm.eval.memorization import memorization_summary, nearest_neighbours
from dgm.eval.probes import knn_accuracy, linear_probe
from dgm.eval.toys import mode_coverage


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices: one thread is as fast, and immune to a busy machine's OpenMP stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RING8 = np.array([[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)])
GRID25 = np.array([[x, y] for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], dtype=float)

# ------------------------------------------------------------------------------------ mode coverage


def test_samples_on_three_of_eight_modes() -> None:
    samples = np.repeat(RING8[[0, 2, 5]], 10, axis=0)
    out = mode_coverage(samples, RING8, 0.01)
    assert out["modes_captured"] == 3
    assert out["high_quality"] == 1.0
    assert out["reverse_kl"] == pytest.approx(math.log(8 / 3), rel=1e-12)
    assert out["counts"] == [10, 0, 10, 0, 0, 10, 0, 0]


def test_reverse_kl_uses_high_quality_samples_only() -> None:
    # PacGAN's histogram: off-mode samples count against high_quality, not in q
    on = np.repeat(RING8[[1, 4]], [30, 10], axis=0)
    off = np.full((60, 2), 0.5)  # 0.5 from the centre of the ring: ~0.5 from every mode, > 3 * 0.01
    out = mode_coverage(np.concatenate([on, off]), RING8, 0.01)
    assert out["high_quality"] == pytest.approx(0.4)
    assert out["modes_captured"] == 2
    q = np.array([0, 30, 0, 0, 10, 0, 0, 0]) / 40
    assert out["reverse_kl"] == pytest.approx(scipy.stats.entropy(q, np.full(8, 1 / 8)), rel=1e-12)


def test_samples_far_from_all_modes() -> None:
    out = mode_coverage(torch.full((50, 2), 10.0), GRID25, 0.05)
    assert out["high_quality"] == 0.0 and out["modes_captured"] == 0
    assert out["counts"] == [0] * 25 and math.isnan(out["reverse_kl"])


def test_balanced_draw_from_the_mixture() -> None:
    # n per mode from N(mode, sd^2 I): in 2-D P(|e| < 3 sd) = 1 - exp(-9/2) = 0.98889
    rng = np.random.default_rng(0)
    n = 400
    for modes, sd in ((RING8, 0.01), (GRID25, 0.05)):
        samples = np.repeat(modes, n, axis=0) + rng.standard_normal((len(modes) * n, 2)) * sd
        out = mode_coverage(samples, modes, sd)
        assert out["modes_captured"] == len(modes)
        p = 1 - math.exp(-4.5)
        assert abs(out["high_quality"] - p) < 4 * math.sqrt(p * (1 - p) / len(samples))
        assert 0.0 <= out["reverse_kl"] < 2e-3


def test_mode_coverage_errors() -> None:
    with pytest.raises(DgmError, match="positive"):
        mode_coverage(RING8, RING8, 0.0)
    with pytest.raises(DgmError, match="2-d"):
        mode_coverage(np.zeros((5, 3)), RING8, 0.01)
    with pytest.raises(DgmError, match="no samples"):
        mode_coverage(np.zeros((0, 2)), RING8, 0.01)


# ------------------------------------------------------------------------------------------ probes


def blobs(rng: np.random.Generator, n: int, classes: int, dim: int = 5, sep: float = 10.0):
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim)) * sep
    return centres[y] + rng.standard_normal((n, dim)), y


def test_probes_on_separable_data() -> None:
    rng = np.random.default_rng(1)
    z, y = blobs(rng, 800, classes=4)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    assert linear_probe(zt[:600], yt[:600], zt[600:], yt[600:]) >= 0.99
    assert knn_accuracy(z[:600], y[:600], z[600:], y[600:]) >= 0.99


def test_probes_on_random_labels_are_at_chance() -> None:
    rng = np.random.default_rng(2)
    for classes in (2, 4):
        z, y = rng.standard_normal((3000, 8)), rng.integers(0, classes, 3000)
        chance, tol = 1 / classes, 4 * math.sqrt(0.25 / 1000)  # 4 standard errors on 1000 test examples
        assert abs(linear_probe(z[:2000], y[:2000], z[2000:], y[2000:]) - chance) < tol
        assert abs(knn_accuracy(z[:2000], y[:2000], z[2000:], y[2000:]) - chance) < tol


def test_probe_errors() -> None:
    z, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(DgmError, match="two classes"):
        linear_probe(z, np.zeros(10), z, y)
    with pytest.raises(DgmError, match="10 train codes but 9 train labels"):
        knn_accuracy(z, y[:9], z, y)
    with pytest.raises(DgmError, match="at least 20 training examples"):
        knn_accuracy(z, y, z, y, k=20)
    with pytest.raises(DgmError, match=r"shape \(N, D\)"):
        linear_probe(np.zeros(10), y, z, y)
    with pytest.raises(DgmError, match="same model"):
        linear_probe(z, y, np.zeros((10, 4)), y)


# ------------------------------------------------------------------------------------ memorization


def test_nearest_neighbours_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    q, ref = rng.standard_normal((300, 6)) + 50.0, rng.standard_normal((500, 6)) + 50.0
    d, i = nearest_neighbours(q, torch.from_numpy(ref), batch_size=64)
    full = np.linalg.norm(q[:, None, :] - ref[None, :, :], axis=2)
    np.testing.assert_array_equal(i.numpy(), full.argmin(1))
    np.testing.assert_allclose(d.numpy(), full.min(1), rtol=1e-9)


def test_memorization_summary_copies_vs_fresh_samples() -> None:
    rng = np.random.default_rng(4)
    train, test = rng.standard_normal((3000, 8)), rng.standard_normal((2000, 8))
    copies = memorization_summary(train[:1000], train, test)
    assert copies["copy_fraction"] == 1.0 and copies["median_ratio"] == 0.0
    near = memorization_summary(train[:1000] + 1e-3 * rng.standard_normal((1000, 8)), train, test)
    assert near["copy_fraction"] == 1.0 and near["median_ratio"] < 0.01
    fresh = memorization_summary(rng.standard_normal((2000, 8)), train, test)
    assert 0.0 <= fresh["copy_fraction"] < 0.03  # ~0.01 by construction
    assert 0.9 < fresh["median_ratio"] < 1.1
    assert set(fresh["sample_quantiles"]) == {"1%", "5%", "25%", "50%"}
    assert (fresh["n_samples"], fresh["n_train"], fresh["n_test"]) == (2000, 3000, 2000)
    assert fresh["test_quantiles"]["1%"] <= fresh["test_quantiles"]["50%"]


def test_memorization_errors() -> None:
    with pytest.raises(DgmError, match="same feature network"):
        memorization_summary(np.zeros((5, 3)), np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(DgmError, match="NaN"):
        nearest_neighbours(np.full((2, 3), np.nan), np.zeros((5, 3)))
