"""Sample-quality metrics on feature arrays: FID, KID, Inception Score, precision and recall.

Everything here is pure numerics on ``(N, F)`` arrays of features (torch tensors; numpy arrays are
converted), with no network in sight: :mod:`dgm.eval.features` turns images into features, and the
metric registry combines the two. Statistics are accumulated and compared in float64, because FID
and KID are small differences of large numbers.

* :func:`frechet_distance` — FID (Heusel et al. 2017) between two :class:`GaussianStats`, which
  :class:`StreamingStats` accumulates batch by batch, so 10k+ examples never need to be held at once.
* :func:`kid` — Kernel Inception Distance (Binkowski et al. 2018), torch-fidelity's protocol.
* :func:`inception_score` — IS (Salimans et al. 2016) from class posteriors.
* :func:`precision_recall` — improved precision and recall (Kynkaanniemi et al. 2019).
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch
from torch import Tensor

from dgm.errors import DgmError

ArrayLike = Tensor | np.ndarray


def as_features(x: ArrayLike, name: str = "features", dtype: torch.dtype = torch.float64) -> Tensor:
    """``x`` as a CPU tensor of ``dtype`` with shape ``(N, F)``; a :class:`DgmError` if it is not a
    finite 2-D array (NaN features mean the samples diverged, and every metric would be NaN)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, Tensor):
        raise DgmError(f"{name} must be a torch tensor or numpy array of shape (N, F), got {type(x).__name__}")
    if x.dim() != 2:
        raise DgmError(f"{name} must have shape (N, F), got {tuple(x.shape)}: flatten each example's "
                       "features into one row")
    x = x.detach().to("cpu", dtype)
    if not torch.isfinite(x).all():
        raise DgmError(f"{name} contain NaN or infinite values: check the samples they were computed "
                       "from (a diverged model gives NaN samples)")
    return x


def squared_distances(a: Tensor, b: Tensor, centre: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` between the rows of ``a`` and ``b``.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product, fast) after subtracting ``centre`` (default:
    the mean of ``b``) from both: the expansion cancels catastrophically when the points lie far from
    the origin relative to their spacing, and distances do not change under a common shift. Callers
    that compare distances across batches must pass the same ``centre`` (and dtype) to every batch,
    so that equal pairs give equal numbers. Clamped at 0 against rounding.
    """
    c = b.mean(0) if centre is None else centre
    a, b = a - c, b - c
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0)


# ----------------------------------------------------------------------------------------- FID


@dataclass
class GaussianStats:
    """Mean and covariance of a set of features: everything FID needs of that set.

    Attributes:
        mean: ``(F,)`` float64.
        cov: ``(F, F)`` float64, unbiased (``ddof=1``, like ``np.cov`` and pytorch-fid).
        n: the number of examples the statistics were computed from.
    """

    mean: Tensor
    cov: Tensor
    n: int

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: ArrayLike, batch_size: int = 10000) -> GaussianStats:
        """The statistics of an ``(N, F)`` array (accumulated in batches, as :class:`StreamingStats`)."""
        x = as_features(features)
        acc = StreamingStats()
        for start in range(0, len(x), batch_size):
            acc.update(x[start:start + batch_size])
        return acc.stats()

    def save(self, path: str | PathLike) -> None:
        """Write to ``path`` as an uncompressed ``.npz`` (``mean``, ``cov``, ``n``), exactly there."""
        # an open file handle stops numpy from appending '.npz' to a path that lacks it
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean.double().numpy(), cov=self.cov.double().numpy(), n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | PathLike) -> GaussianStats:
        """Read statistics written by :meth:`save`; a :class:`DgmError` for a missing, corrupt or foreign file."""
        try:
            with np.load(path, allow_pickle=False) as z:
                mean, cov, n = z["mean"], z["cov"], z["n"]
        except FileNotFoundError:
            raise DgmError(f"no feature statistics file at {str(path)!r}: compute them first") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DgmError(f"{str(path)!r} is not a dgm feature-statistics file (.npz with mean, cov, n): "
                           f"{type(e).__name__}: {e}; delete it and recompute the statistics") from None
        ok = (mean.ndim == 1 and cov.shape == (mean.shape[0], mean.shape[0]) and n.shape == ()
              and np.issubdtype(mean.dtype, np.floating) and np.issubdtype(cov.dtype, np.floating)
              and np.issubdtype(n.dtype, np.integer) and np.isfinite(mean).all() and np.isfinite(cov).all())
        if not ok:
            raise DgmError(f"{str(path)!r} holds malformed statistics (mean {mean.shape}, cov {cov.shape}, "
                           f"n {n.shape}): delete it and recompute the statistics")
        return cls(torch.from_numpy(mean.astype(np.float64)), torch.from_numpy(cov.astype(np.float64)), int(n))


class StreamingStats:
    """Mean and covariance of features that arrive in batches, accumulated in float64.

    Keeps n, the sum and the sum of outer products of ``x - shift``, where ``shift`` is the first
    batch's mean: accumulating raw sums and forming ``S/n - mean mean^T`` at the end cancels
    catastrophically when features have a large mean relative to their spread (post-ReLU features
    do); shifted sums keep the subtraction small. Memory is ``O(F^2)`` whatever the number of examples.

    Example:
        >>> acc = StreamingStats()
        >>> for x in batches: acc.update(net(x))
        >>> stats = acc.stats()
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None

    def update(self, features: ArrayLike) -> None:
        """Add a batch ``(B, F)`` of features."""
        x = as_features(features)
        if self.shift is None:
            if len(x) == 0:
                return
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        elif x.shape[1] != self.shift.shape[0]:
            raise DgmError(f"a batch of {x.shape[1]}-d features was added to statistics of "
                           f"{self.shift.shape[0]}-d features: use one feature network for the whole set")
        d = x - self.shift
        self.n += len(x)
        self.sum += d.sum(0)
        self.outer += d.T @ d

    def stats(self) -> GaussianStats:
        """The mean and the unbiased (``ddof=1``) covariance of everything added so far."""
        if self.n < 2 or self.shift is None or self.sum is None or self.outer is None:
            raise DgmError(f"a covariance needs at least 2 examples, got {self.n}: add more features")
        m = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(m, m)) / (self.n - 1)
        cov = 0.5 * (cov + cov.T)  # exactly symmetric, as eigh assumes
        return GaussianStats(self.shift + m, cov, self.n)


def _psd_sqrt(s: Tensor) -> Tensor:
    """The symmetric PSD square root of a symmetric matrix, its negative (rounding) eigenvalues set to 0."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets: FID when the features are
    Inception's (Heusel et al. 2017, arXiv:1706.08500):

        d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2}).

    Method: with ``R = S_a^{1/2}`` (from ``eigh`` of ``S_a``, eigenvalues clipped at 0), ``S_a S_b =
    R (R S_b)`` has the same eigenvalues as ``R S_b R``, which is symmetric PSD; so
    ``tr((S_a S_b)^{1/2}) = sum_i sqrt(max(lambda_i(R S_b R), 0))``, computed with ``eigvalsh`` in
    float64. Accuracy: an eigenvalue is known to ``~eps * lambda_max``, so its square root to
    ``~sqrt(eps * lambda_max)``; rank-deficient covariances (many zero eigenvalues) therefore agree
    with an exact computation to ~1e-8 relative. No threshold is applied beyond clipping at 0: one
    would zero genuinely small eigenvalues (a covariance with eigenvalues down to 1e-12 keeps its
    self-distance exactly 0 this way). Why: pytorch-fid takes ``scipy.linalg.sqrtm(S_a @ S_b)`` of a non-symmetric product
    (retrying with ``eps * I`` added when the result is not finite) and drops an imaginary part;
    on near-singular covariances — always the case when F > N, e.g. 2048 Inception features of
    fewer than 2048 samples — that square root is ill-conditioned and can come back complex or
    inaccurate. The symmetric eigenproblem is backward stable, has no complex parts, and needs no
    ``eps`` that would bias the result. The distance is clipped at 0 against rounding.

    Raises:
        DgmError: when the two sets have different feature dimensions.
    """
    if a.dim != b.dim:
        raise DgmError(f"cannot compare statistics of {a.dim}-d features with statistics of {b.dim}-d "
                       "features: compute both with the same feature network")
    mu_a, mu_b = a.mean.double(), b.mean.double()
    s_a, s_b = a.cov.double(), b.cov.double()
    r = _psd_sqrt(0.5 * (s_a + s_a.T))
    m = r @ s_b @ r
    eig = torch.linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = eig.clamp_min(0.0).sqrt().sum()
    diff = mu_a - mu_b
    d2 = diff @ diff + torch.trace(s_a) + torch.trace(s_b) - 2.0 * tr_covmean
    return max(float(d2), 0.0)


# ----------------------------------------------------------------------------------------- KID


def kid_subset_indices(n_a: int, n_b: int, *, subsets: int = 100, subset_size: int = 1000,
                       seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows :func:`kid` uses: for each subset, ``subset_size`` indices into set a and into set b,
    each drawn without replacement, independently, from one ``np.random.RandomState(seed)`` in the
    order a, b, a, b, ... (torch-fidelity's order, so a reference implementation can redraw them)."""
    for n in (n_a, n_b):
        if n < subset_size:
            raise DgmError(f"KID needs at least {subset_size} samples per set for its subsets, got {n}: "
                           "generate more samples or pass a smaller kid_subset_size")
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(subsets):
        ia = rng.choice(n_a, subset_size, replace=False)
        ib = rng.choice(n_b, subset_size, replace=False)
        out.append((ia, ib))
    return out


def polynomial_mmd2(x: Tensor, y: Tensor, *, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0) -> float:
    """Unbiased estimate of MMD^2 between the distributions of the rows of ``x`` and ``y`` (both ``m``
    rows) with the kernel ``k(u, v) = (gamma u.v + coef0)^degree`` (``gamma = 1/F`` by default):

        MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,

    the unbiased estimator of Gretton et al. 2012 (within-set sums over i != j, the cross sum over
    all pairs) that Binkowski et al. 2018 (arXiv:1801.01401) use for KID, as their reference code
    and torch-fidelity compute it. It can be negative: it is unbiased, not clipped.
    """
    m = len(x)
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (g * (x @ x.T) + coef0) ** degree
    k_yy = (g * (y @ y.T) + coef0) ** degree
    k_xy = (g * (x @ y.T) + coef0) ** degree
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(features_a: ArrayLike, features_b: ArrayLike, *, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, arXiv:1801.01401): the unbiased MMD^2
    (:func:`polynomial_mmd2`) with the cubic polynomial kernel ``(x.y / F + 1)^3``, averaged over
    ``subsets`` random subsets of ``subset_size`` examples of each set.

    Defaults are torch-fidelity's (100 subsets of 1000; its default seed is 2020, dgm's 0); subsets
    are drawn as :func:`kid_subset_indices` says. Computed in float64. Unlike FID, the estimate is
    unbiased, so it is comparable across sample sizes and ~0 (possibly negative) for equal distributions.

    Returns:
        ``(mean, std)`` over the subsets; ``std`` is ``np.std`` (ddof=0), as torch-fidelity reports it.
        It is the spread of single-subset estimates, not the standard error of the mean.

    Raises:
        DgmError: when either set has fewer than ``subset_size`` examples, or the feature sizes differ.
    """
    a, b = as_features(features_a, "features_a"), as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise DgmError(f"KID compares features of equal size, got {a.shape[1]} and {b.shape[1]}: compute "
                       "both sets with the same feature network")
    if subsets < 1 or subset_size < 2:
        raise DgmError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    mmds = np.array([polynomial_mmd2(a[torch.from_numpy(ia)], b[torch.from_numpy(ib)], degree=degree,
                                     gamma=gamma, coef0=coef0)
                     for ia, ib in kid_subset_indices(len(a), len(b), subsets=subsets,
                                                      subset_size=subset_size, seed=seed)])
    return float(mmds.mean()), float(mmds.std())


# ------------------------------------------------------------------------------------------ IS


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, arXiv:1606.03498):

        IS = exp(E_x KL(p(y|x) || p(y))),

    with ``p(y)`` the marginal of the split's posteriors, computed on each of ``splits`` contiguous,
    equal-as-possible splits of the rows in the given order (as the authors' code does; no shuffling,
    so the result depends only on the rows and their order), ``0 log 0 = 0``, in float64. It ranges
    from 1 (every posterior the same) to C (confident, class-balanced posteriors).

    Args:
        probs: ``(N, C)`` class posteriors: softmax outputs, not logits.

    Returns:
        ``(mean, std)`` of the per-split scores (``std`` with ddof=0, like the reference code).

    Raises:
        DgmError: when rows are not probability vectors or ``N < splits``.
    """
    p = as_features(probs, "class probabilities")
    if splits < 1 or len(p) < splits:
        raise DgmError(f"the Inception Score needs at least as many samples as splits, got {len(p)} samples "
                       f"for {splits} splits: generate more samples or use fewer splits")
    sums = p.sum(1)
    if (p < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3, rtol=0.0):
        raise DgmError("the Inception Score needs class probabilities (rows >= 0 summing to 1), got rows "
                       f"summing to {sums.min().item():.4g}..{sums.max().item():.4g}: pass softmax outputs, "
                       "not logits")
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0, keepdim=True)
        # xlogy gives 0 log 0 = 0; where p(y|x) > 0, p(y) > 0 too
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(math.exp(kl.mean().item()))
    s = np.array(scores)
    return float(s.mean()), float(s.std())


# -------------------------------------------------------------------------- precision and recall


def kth_neighbour_sq_distances(x: Tensor, k: int, batch_size: int = 10000) -> Tensor:
    """Squared distance from each row of ``x`` to its ``k``-th nearest other row (float64, batched)."""
    centre = x.mean(0)
    out = []
    for start in range(0, len(x), batch_size):
        sq = squared_distances(x[start:start + batch_size], x, centre)
        # the (k+1)-th smallest includes the point itself at distance 0 (exactly one self-entry,
        # so duplicates of a point still count as its neighbours)
        out.append(sq.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(queries: Tensor, balls: Tensor, radii_sq: Tensor, batch_size: int) -> float:
    """Fraction of ``queries`` within the ball of at least one row of ``balls`` (``d <= r``)."""
    centre = balls.mean(0)
    inside = 0
    for start in range(0, len(queries), batch_size):
        sq = squared_distances(queries[start:start + batch_size], balls, centre)
        inside += int((sq <= radii_sq[None, :]).any(1).sum())
    return inside / len(queries)


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3,
                     batch_size: int = 10000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, arXiv:1904.06991).

    Each set's manifold is the union of balls around its points, the radius of a point being the
    distance to its ``k``-th nearest neighbour within its own set (itself excluded). Precision is the
    fraction of fake samples inside at least one real ball (``d <= radius``): are samples realistic?
    Recall is the fraction of real examples inside at least one fake ball: is the data covered?

    Distances are computed in float64 (one matrix product per block of ``batch_size`` rows) and
    compared squared; radii and memberships use the same routine and the same centring, so a
    point's membership never flips on rounding differences between the two. Memory per block:
    ``batch_size x max(N, M) x 8`` bytes.

    Raises:
        DgmError: when a set has fewer than ``k + 1`` points or the feature sizes differ.
    """
    r, f = as_features(real, "real features"), as_features(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise DgmError(f"precision/recall compares features of equal size, got {r.shape[1]} and {f.shape[1]}: "
                       "compute both sets with the same feature network")
    if k < 1:
        raise DgmError(f"precision/recall needs k >= 1, got {k}")
    for name, x in (("real", r), ("fake", f)):
        if len(x) < k + 1:
            raise DgmError(f"precision/recall with k={k} needs at least {k + 1} {name} points, got {len(x)}: "
                           "use more samples or a smaller k")
    radii_real = kth_neighbour_sq_distances(r, k, batch_size)
    radii_fake = kth_neighbour_sq_distances(f, k, batch_size)
    precision = _coverage(f, r, radii_real, batch_size)
    recall = _coverage(r, f, radii_fake, batch_size)
    return precision, recall
