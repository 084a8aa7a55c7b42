"""FID, KID, IS and precision/recall (dgm.eval.fidelity): known answers, estimator properties, and
parity with independent numpy/scipy/sklearn references written here from the papers and the
reference implementations (pytorch-fid, torch-fidelity, Kynkaanniemi et al.'s code)."""
from __future__ import annotations

import inspect
import math
import warnings
from math import comb

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

from dgm.errors import DgmError
from dgm.eval.fidelity import (GaussianStats, StreamingStats, frechet_distance, inception_score, kid,
                               kid_subset_indices, precision_recall)



@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices: one thread is as fast, and on a busy machine OpenMP threads that wait for a
    busy core make these tests ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ references


def fid_reference(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance: sqrtm of the product, eps*I retry, real part."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_of_samples_exact(xa: np.ndarray, xb: np.ndarray) -> float:
    """FID of the empirical (ddof=1) statistics via an SVD instead of any matrix square root: with
    centred data A, B, the non-zero eigenvalues of S_a S_b are the squared singular values of
    A B^T / sqrt((n_a - 1)(n_b - 1)), so tr((S_a S_b)^{1/2}) is that matrix's nuclear norm (computed
    from the QR factors' R_a R_b^T when n > F). Exact also when F > n (rank-deficient covariances)."""
    a, b = xa - xa.mean(0), xb - xb.mean(0)
    sa, sb = a.T @ a / (len(a) - 1), b.T @ b / (len(b) - 1)
    if min(len(a), len(b)) > a.shape[1]:  # A B^T = Q_a (R_a R_b^T) Q_b^T: same singular values, F x F
        a, b = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((len(xa) - 1) * (len(xb) - 1))
    diff = xa.mean(0) - xb.mean(0)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * nuclear)


def stats_of(x: np.ndarray) -> GaussianStats:
    return GaussianStats(torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False)), len(x))


def mmd2_reference(f1: np.ndarray, f2: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """torch-fidelity's polynomial_mmd + mmd2 (unbiased): off-diagonal within-set sums over m(m-1)
    minus twice the full cross sum over m^2."""
    gamma = 1.0 / f1.shape[1]
    k_xx = (f1 @ f1.T * gamma + coef0) ** degree
    k_yy = (f2 @ f2.T * gamma + coef0) ** degree
    k_xy = (f1 @ f2.T * gamma + coef0) ** degree
    m = k_xx.shape[0]
    kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    return float((kt_xx_sum + kt_yy_sum) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid_reference(f1: np.ndarray, f2: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """torch-fidelity's kid_features_to_metric, in float64."""
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = mmd2_reference(a.astype(np.float64), b.astype(np.float64))
    return float(np.mean(mmds)), float(np.std(mmds))


def population_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 with k = (x.y/F + 1)^3 through its explicit feature map: k = sum_j C(3,j) (x.y/F)^j and
    (x.y)^j = <x^{(x)j}, y^{(x)j}>, so MMD^2 = sum_j C(3,j) F^-j ||E x^{(x)j} - E y^{(x)j}||^2; the plug-in
    with a huge sample is biased by O(1/n) only."""
    f = x.shape[1]
    out = 0.0
    for j, (mx, my) in enumerate([(x.mean(0), y.mean(0)),
                                  (np.einsum("ni,nj->ij", x, x) / len(x), np.einsum("ni,nj->ij", y, y) / len(y)),
                                  (np.einsum("ni,nj,nk->ijk", x, x, x) / len(x),
                                   np.einsum("ni,nj,nk->ijk", y, y, y) / len(y))], start=1):
        out += comb(3, j) * f ** -j * float(((mx - my) ** 2).sum())
    return out


def is_reference(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """The Salimans et al. code: contiguous splits, exp(mean KL(p(y|x) || p(y)))."""
    scores = []
    n = len(probs)
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.: radii from sklearn's k+1 nearest neighbours (the first is the point itself)."""
    r_real = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, -1]
    r_fake = NearestNeighbors(n_neighbors=k + 1).fit(fake).kneighbors(fake)[0][:, -1]
    d = pairwise_distances(fake, real)  # (M, N)
    precision = float((d <= r_real[None, :]).any(1).mean())
    recall = float((d.T <= r_fake[None, :]).any(1).mean())
    return precision, recall


def random_cov(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * eigenvalues) @ q.T


# ------------------------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(0)
    for f, n in ((32, 1000), (128, 50)):  # full rank, and rank-deficient (F > n)
        x = rng.standard_normal((n, f)) @ rng.standard_normal((f, f)) + 3.0
        s = GaussianStats.from_features(x)
        scale = 2 * float(torch.trace(s.cov))
        assert 0.0 <= frechet_distance(s, s) < 1e-8 * scale


def test_fid_of_true_parameters_matches_the_closed_form() -> None:
    # covariances diagonal in one shared (random) basis commute: tr((S_a S_b)^1/2) = sum sqrt(a b),
    # so FID = |mu_a - mu_b|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(1)
    f = 64
    a, b = rng.uniform(0.1, 3.0, f), rng.uniform(0.1, 3.0, f)
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    mu_a, mu_b = rng.standard_normal(f), rng.standard_normal(f)
    closed = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    sa, sb = (q * a) @ q.T, (q * b) @ q.T
    got = frechet_distance(GaussianStats(torch.from_numpy(mu_a), torch.from_numpy(sa), 0),
                           GaussianStats(torch.from_numpy(mu_b), torch.from_numpy(sb), 0))
    assert got == pytest.approx(closed, rel=1e-10)
    assert got == pytest.approx(fid_reference(mu_a, sa, mu_b, sb), rel=1e-8)


def test_fid_of_samples_approaches_the_fid_of_the_true_gaussians() -> None:
    # F=64, n=20000 per set: the plug-in FID is biased upwards by O(F/n) relative; measured ~+0.5..1.5%
    # over seeds, so a 3% tolerance is a real check of the estimate, not of noise
    rng = np.random.default_rng(2)
    f, n = 64, 20000
    a, b = np.linspace(0.5, 2.0, f), np.linspace(3.0, 1.0, f)
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    mu_b = np.full(f, 0.1)
    closed = float((mu_b ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    xa = (rng.standard_normal((n, f)) * np.sqrt(a)) @ q.T
    xb = (rng.standard_normal((n, f)) * np.sqrt(b)) @ q.T + mu_b
    got = frechet_distance(GaussianStats.from_features(xa), GaussianStats.from_features(xb))
    assert abs(got - closed) < 0.03 * closed
    assert got == pytest.approx(fid_of_samples_exact(xa, xb), rel=1e-8)


def test_fid_parity_with_pytorch_fid_reference() -> None:
    rng = np.random.default_rng(3)
    xa = np.maximum(rng.standard_normal((700, 48)) @ rng.standard_normal((48, 48)), 0).astype(np.float32)
    xb = np.maximum(rng.standard_normal((500, 48)) @ rng.standard_normal((48, 48)) + 0.3, 0).astype(np.float32)
    xa64, xb64 = xa.astype(np.float64), xb.astype(np.float64)
    ref = fid_reference(xa64.mean(0), np.cov(xa64, rowvar=False), xb64.mean(0), np.cov(xb64, rowvar=False))
    got = frechet_distance(GaussianStats.from_features(torch.from_numpy(xa)), GaussianStats.from_features(xb))
    assert got == pytest.approx(ref, rel=1e-4)
    assert got == pytest.approx(fid_of_samples_exact(xa64, xb64), rel=1e-8)


def test_fid_is_stable_for_rank_deficient_covariances() -> None:
    # F=256 features of n=100 samples: both covariances have rank 99
    rng = np.random.default_rng(4)
    xa = rng.standard_normal((100, 256))
    xb = rng.standard_normal((100, 256)) * 1.5 + 0.2
    got = frechet_distance(stats_of(xa), stats_of(xb))
    exact = fid_of_samples_exact(xa, xb)
    assert math.isfinite(got) and got >= 0
    # the ~157 zero eigenvalues of R S_b R come out as +-eps-level noise whose square roots add up
    # to ~1e-8 relative: the floor of any eigenvalue-based square root in float64
    assert got == pytest.approx(exact, rel=1e-6)
    # pytorch-fid's sqrtm route on the same input (it may warn; it agrees here to a looser tolerance)
    ref = fid_reference(xa.mean(0), np.cov(xa, rowvar=False), xb.mean(0), np.cov(xb, rowvar=False))
    assert got == pytest.approx(ref, rel=1e-4)


def test_fid_is_stable_for_eigenvalues_down_to_1e_12() -> None:
    rng = np.random.default_rng(5)
    f = 64
    a = np.logspace(0, -12, f)
    b = rng.permutation(np.logspace(0.5, -12, f))
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    mu = torch.zeros(f, dtype=torch.float64)
    sa, sb = (q * a) @ q.T, (q * b) @ q.T
    sa_t, sb_t = torch.from_numpy(sa), torch.from_numpy(sb)
    # commuting: closed form
    closed = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(GaussianStats(mu, sa_t, 0), GaussianStats(mu, sb_t, 0))
    assert math.isfinite(got) and got >= 0
    assert got == pytest.approx(closed, rel=1e-8)
    # identical near-singular covariances: exactly 0 up to rounding of the traces
    assert 0.0 <= frechet_distance(GaussianStats(mu, sa_t, 0), GaussianStats(mu, sa_t, 0)) < 1e-12
    # non-commuting (independent bases): symmetric in its arguments although the method is not,
    # and agrees with the sqrtm reference to its accuracy
    sc = torch.from_numpy(random_cov(rng, b))
    ab = frechet_distance(GaussianStats(mu, sa_t, 0), GaussianStats(mu, sc, 0))
    ba = frechet_distance(GaussianStats(mu, sc, 0), GaussianStats(mu, sa_t, 0))
    assert math.isfinite(ab) and ab >= 0
    assert ab == pytest.approx(ba, rel=1e-8)
    z = np.zeros(f)
    assert ab == pytest.approx(fid_reference(z, sa, z, sc.numpy()), rel=1e-4)


def test_fid_rejects_mismatched_dimensions() -> None:
    s8 = GaussianStats(torch.zeros(8, dtype=torch.float64), torch.eye(8, dtype=torch.float64), 10)
    s9 = GaussianStats(torch.zeros(9, dtype=torch.float64), torch.eye(9, dtype=torch.float64), 10)
    with pytest.raises(DgmError, match="same feature network"):
        frechet_distance(s8, s9)


def test_streaming_stats_equal_numpy_over_the_whole_set() -> None:
    rng = np.random.default_rng(6)
    # a large offset relative to the spread: the case where unshifted sums cancel
    x = rng.standard_normal((1234, 20)) @ rng.standard_normal((20, 20)) + 1e4
    acc = StreamingStats()
    for start, size in ((0, 1), (1, 300), (301, 0), (301, 933)):
        acc.update(torch.from_numpy(x[start:start + size]).float() if size == 0 else x[start:start + size])
    s = acc.stats()
    assert s.n == len(x) and s.mean.dtype == torch.float64 and s.cov.shape == (20, 20)
    np.testing.assert_allclose(s.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-9)
    assert torch.equal(s.cov, s.cov.T)
    with pytest.raises(DgmError, match="one feature network"):
        acc.update(np.zeros((2, 21)))
    with pytest.raises(DgmError, match="at least 2 examples"):
        StreamingStats().stats()


def test_gaussian_stats_save_load(tmp_path) -> None:
    rng = np.random.default_rng(7)
    s = GaussianStats.from_features(rng.standard_normal((50, 6)))
    path = tmp_path / "stats.npz"
    s.save(path)
    t = GaussianStats.load(path)
    assert t.n == 50 and torch.equal(t.mean, s.mean) and torch.equal(t.cov, s.cov)
    plain = tmp_path / "stats_without_suffix"
    s.save(plain)
    assert plain.exists() and GaussianStats.load(plain).n == 50

    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    np.savez(tmp_path / "pickled.npz", mean=np.array([{"a": 1}], dtype=object), cov=np.eye(1), n=np.int64(1))
    np.savez(tmp_path / "shapes.npz", mean=np.zeros(3), cov=np.eye(4), n=np.int64(1))
    for name in ("corrupt.npz", "foreign.npz", "pickled.npz", "shapes.npz", "missing.npz"):
        with pytest.raises(DgmError):
            GaussianStats.load(tmp_path / name)


# ------------------------------------------------------------------------------------------- KID


def test_kid_parity_with_torch_fidelity_reference() -> None:
    rng = np.random.default_rng(8)
    f1 = rng.standard_normal((500, 32)).astype(np.float32)
    f2 = (rng.standard_normal((600, 32)) * 1.2 + 0.1).astype(np.float32)
    got = kid(torch.from_numpy(f1), f2, subsets=30, subset_size=300, seed=2020)
    ref = kid_reference(f1, f2, subsets=30, subset_size=300, seed=2020)
    assert got[0] == pytest.approx(ref[0], rel=1e-4)
    assert got[1] == pytest.approx(ref[1], rel=1e-4)
    assert ref[0] > 10 * ref[1] / math.sqrt(30)  # the sets differ: a non-trivial comparison
    # torch-fidelity's defaults
    defaults = inspect.signature(kid).parameters
    assert (defaults["subsets"].default, defaults["subset_size"].default, defaults["degree"].default,
            defaults["gamma"].default, defaults["coef0"].default) == (100, 1000, 3, None, 1.0)
    # the helper draws the same rows as the reference's RandomState sequence
    rs = np.random.RandomState(5)
    for ia, ib in kid_subset_indices(1100, 1200, subsets=3, subset_size=10, seed=5):
        np.testing.assert_array_equal(ia, rs.choice(1100, 10, replace=False))
        np.testing.assert_array_equal(ib, rs.choice(1200, 10, replace=False))


def test_kid_of_one_distribution_is_about_zero() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    mean, std = kid(a, b, subsets=100, subset_size=100)
    assert abs(mean) < 3 * std / math.sqrt(100)


def test_kid_is_unbiased() -> None:
    # each repetition draws fresh sets of m=20 and takes one unbiased MMD^2 estimate (one subset =
    # the whole set); the biased (V-statistic) estimate would average ~2.97 for the pair below
    rng = np.random.default_rng(10)
    f, m, reps = 4, 20, 2000
    mu, sd = np.array([0.5, 0.0, 0.0, 0.0]), 1.3
    big = 1_000_000
    population = population_mmd2(rng.standard_normal((big, f)), rng.standard_normal((big, f)) * sd + mu)
    null, alt = [], []
    for r in range(reps):
        x = rng.standard_normal((m, f))
        null.append(kid(x, rng.standard_normal((m, f)), subsets=1, subset_size=m, seed=r)[0])
        alt.append(kid(x, rng.standard_normal((m, f)) * sd + mu, subsets=1, subset_size=m, seed=r)[0])
    null, alt = np.array(null), np.array(alt)
    assert abs(null.mean()) < 4 * null.std() / math.sqrt(reps)
    assert abs(alt.mean() - population) < 4 * alt.std() / math.sqrt(reps)
    assert 0.5 < population < 1.2  # a clearly non-zero target (0.83 for this pair)


def test_kid_needs_enough_samples() -> None:
    x = np.zeros((999, 4))
    with pytest.raises(DgmError) as e:
        kid(x, np.zeros((2000, 4)))
    assert str(e.value) == ("KID needs at least 1000 samples per set for its subsets, got 999: generate more "
                            "samples or pass a smaller kid_subset_size")
    with pytest.raises(DgmError, match="got 10:"):
        kid(np.zeros((50, 4)), np.zeros((10, 4)), subset_size=20)
    with pytest.raises(DgmError, match="equal size"):
        kid(np.zeros((50, 4)), np.zeros((50, 5)), subset_size=20)


# -------------------------------------------------------------------------------------------- IS


def test_inception_score_known_answers() -> None:
    c = 10
    one_hot = torch.eye(c)[torch.arange(1000) % c]  # each contiguous split of 100 is balanced
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(c, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    same = torch.softmax(torch.randn(1, c), 1).repeat(500, 1)
    mean, std = inception_score(same, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_parity_with_reference() -> None:
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((1003, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = inception_score(torch.from_numpy(probs), splits=10)
    ref = is_reference(probs, 10)
    assert got[0] == pytest.approx(ref[0], rel=1e-10) and got[1] == pytest.approx(ref[1], rel=1e-8)


def test_inception_score_errors() -> None:
    with pytest.raises(DgmError, match="softmax"):
        inception_score(torch.randn(100, 10))
    with pytest.raises(DgmError, match="splits"):
        inception_score(torch.full((5, 4), 0.25), splits=10)


# ---------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint_sets() -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((300, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_hand_made_1d() -> None:
    # k=1. real radii: all 1. fake radii: all 0.2 (pairs 0.2 apart).
    # precision: 0.4, 0.6 (near 0 / 1), 2.9, 3.1 (near 3) are in a real ball; 7.0, 7.2 are not -> 4/6.
    # recall: only real 3 is within 0.2 of a fake point (2.9 at 0.1) -> 1/4.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    fake = torch.tensor([[0.4], [0.6], [2.9], [3.1], [7.0], [7.2]], dtype=torch.float64)
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(4 / 6) and r == pytest.approx(1 / 4)
    # k=2: real radii 2,1,1,2 (ends reach two neighbours); fake radii 2.5,2.3,2.3,2.5,3.9,4.1
    p, r = precision_recall(real, fake, k=2)
    assert p == pytest.approx(4 / 6) and r == pytest.approx(1.0)


def test_precision_recall_parity_with_sklearn_reference() -> None:
    rng = np.random.default_rng(13)
    real = rng.standard_normal((600, 16)).astype(np.float32)
    fake = (rng.standard_normal((500, 16)) * 0.8 + 0.4).astype(np.float32)
    ref = pr_reference(real.astype(np.float64), fake.astype(np.float64), k=3)
    got = precision_recall(real, torch.from_numpy(fake), k=3)
    assert 0.05 < ref[0] < 0.95 and 0.05 < ref[1] < 0.95  # non-trivial fractions
    assert got[0] == pytest.approx(ref[0], rel=1e-4) and got[1] == pytest.approx(ref[1], rel=1e-4)
    assert precision_recall(real, fake, k=3, batch_size=97) == got


def test_precision_recall_errors() -> None:
    with pytest.raises(DgmError, match="at least 4 fake points"):
        precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3)
    with pytest.raises(DgmError, match="equal size"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(DgmError, match="NaN"):
        precision_recall(np.full((10, 2), np.nan), np.zeros((10, 2)))


def test_feature_cache_key_hashes_every_byte_of_the_weights(tmp_path, monkeypatch):
    from dgm.eval.features import FeatureExtractor, cache_path

    monkeypatch.setenv("DGM_CACHE", str(tmp_path))
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 10))  # a 64 KiB weight matrix
    images = torch.zeros(4, 1, 8, 8)
    before = cache_path(FeatureExtractor("net", net, None), images, "test")
    with torch.no_grad():
        net[0].weight.view(-1)[-1] += 1e-3  # the last element: 64 KiB - 4 bytes into the tensor
    after = cache_path(FeatureExtractor("net", net, None), images, "test")
    assert net[0].weight.numel() * 4 > 4096 and after != before
    assert cache_path(FeatureExtractor("net", net, None), images, "test") == after  # and it is deterministic


def test_frechet_reference_known_answers():
    """FID against a fixed reference set through a feature network that returns the pixels: 0 for the
    reference itself; |c|^2 for the reference shifted by c (same covariance); (a - 1)^2 (|mu|^2 + tr S)
    for the reference scaled by a (mean a mu, covariance a^2 S)."""
    from dgm.eval.features import FeatureExtractor, FrechetReference

    class Pixels(torch.nn.Module):  # features = the pixels themselves
        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))  # the extractor reads the device off a parameter

        def forward(self, x):
            return {"pool": x.flatten(1), "logits_unbiased": x.flatten(1)}

    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(400, 1, 1, 3, generator=gen) * torch.tensor([1.0, 0.5, 2.0])  # (N, C, H, W)
    fid = FrechetReference(FeatureExtractor("pixels", Pixels(), None), reference)
    f = reference.flatten(1).double()
    mu, trace = f.mean(0), f.T.cov().trace()
    assert fid(reference) == pytest.approx(0.0, abs=1e-5)
    shift = torch.tensor([0.3, -0.2, 0.1])
    assert fid(reference + shift.view(1, 1, 1, 3)) == pytest.approx(shift.pow(2).sum().item(), rel=1e-4)
    assert fid(1.5 * reference) == pytest.approx(0.25 * (mu.pow(2).sum() + trace).item(), rel=1e-4)
