"""Does a model copy its training data? Nearest-training-neighbour distances of samples vs of test data.

A model that generalises produces samples that are about as far from their nearest training example
as held-out test examples are: both are fresh draws from (an approximation of) the data
distribution. A model that memorises produces samples that sit on top of training examples, much
closer than any test example does. Comparing the two distance distributions (in a feature space,
or in pixel space for small data) is the standard check (e.g. the nearest-neighbour figures of
many GAN and diffusion papers; Carlini et al. 2023, arXiv:2301.13188, for extraction).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dgm.errors import DgmError
from dgm.eval.fidelity import ArrayLike, as_features, squared_distances

#: quantiles of the nearest-neighbour distances that :func:`memorization_summary` reports
QUANTILES = (0.01, 0.05, 0.25, 0.5)

#: bytes of one batch's distance matrix: the search holds a few such float64 matrices at a time
#: (4096 queries against 60k training images were ~2 GB each, 12 GB at the peak of a README evaluation)
DISTANCE_BATCH_BYTES = 256 * 2**20


def nearest_neighbours(queries: ArrayLike, reference: ArrayLike, *, batch_size: int | None = None,
                       progress: bool = False, desc: str = "nearest neighbours") -> tuple[Tensor, Tensor]:
    """For each row of ``queries (N, F)``, the Euclidean distance to its nearest row of
    ``reference (M, F)`` and that row's index: ``(distance (N,) float64, index (N,) int64)``.

    Exhaustive search in float64, ``batch_size`` queries at a time (default: as many as keep one
    ``batch_size x M`` float64 matrix within :data:`DISTANCE_BATCH_BYTES`); both sets are centred on
    the reference mean first, so the matrix-product expansion of the distances does not lose
    precision far from the origin. ``progress`` shows a bar over the batches.
    """
    from dgm.eval.core import progress_bar

    q, ref = as_features(queries, "queries"), as_features(reference, "reference")
    if q.shape[1] != ref.shape[1]:
        raise DgmError(f"queries have {q.shape[1]} features, the reference {ref.shape[1]}: use the same "
                       "feature space for both")
    if len(ref) == 0:
        raise DgmError("the reference set is empty: nearest neighbours need at least one reference example")
    centre = ref.mean(0)
    batch_size = batch_size or max(1, DISTANCE_BATCH_BYTES // (8 * len(ref)))
    dists, index = [], []
    starts = range(0, len(q), batch_size)
    for start in progress_bar(starts, enabled=progress, total=len(starts), desc=desc):
        sq = squared_distances(q[start:start + batch_size], ref, centre)
        d, i = sq.min(1)
        dists.append(d.sqrt())
        index.append(i)
    if not dists:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(dists), torch.cat(index)


def memorization_summary(sample_features: ArrayLike, train_features: ArrayLike,
                         test_features: ArrayLike, *, progress: bool = False) -> dict[str, Any]:
    """Nearest-training-neighbour distances of model samples against those of held-out test data.

    Returns a dict with:
        ``sample_quantiles`` / ``test_quantiles``: ``{"1%": ..., "5%": ..., "25%": ..., "50%": ...}``
            of the distance from each sample (each test example) to its nearest training example;
        ``median_ratio``: median sample distance / median test distance. ~1 for a model that
            generalises; well below 1 when samples hug training examples; above 1 when samples are
            off the data (poor quality, not memorisation). NaN when the test median is 0 (the test
            split contains training examples: deduplicate it);
        ``copy_fraction``: the fraction of samples closer to a training example than the 1st
            percentile of test-to-train distances. By construction ~0.01 for samples distributed like
            test data, and ~1 for samples that copy training examples; the excess over 0.01 estimates
            the share of near-copies;
        ``n_samples``, ``n_train``, ``n_test``.

    The test set is the yardstick: use a test split of the same distribution and a size similar to
    the number of samples (the 1st percentile of a few hundred distances is noisy). ``progress``
    shows a bar over the nearest-neighbour searches.
    """
    samples = as_features(sample_features, "sample features")
    train = as_features(train_features, "train features")
    test = as_features(test_features, "test features")
    if not (samples.shape[1] == train.shape[1] == test.shape[1]):
        raise DgmError(f"samples, train and test features have {samples.shape[1]}, {train.shape[1]} and "
                       f"{test.shape[1]} dimensions: compute all three with the same feature network")
    for name, x in (("samples", samples), ("test examples", test)):
        if len(x) == 0:
            raise DgmError(f"no {name} given: the memorization summary needs samples and test examples")
    d_sample, _ = nearest_neighbours(samples, train, progress=progress, desc="nearest neighbours of samples")
    d_test, _ = nearest_neighbours(test, train, progress=progress, desc="nearest neighbours of test data")
    qs = torch.tensor(QUANTILES, dtype=torch.float64)
    q_sample, q_test = torch.quantile(d_sample, qs), torch.quantile(d_test, qs)
    keys = [f"{round(100 * q)}%" for q in QUANTILES]
    med_s, med_t = float(q_sample[-1]), float(q_test[-1])
    threshold = float(q_test[0])
    return {
        "sample_quantiles": dict(zip(keys, q_sample.tolist())),
        "test_quantiles": dict(zip(keys, q_test.tolist())),
        "median_ratio": med_s / med_t if med_t > 0 else float("nan"),
        "copy_fraction": float((d_sample < threshold).double().mean()),
        "n_samples": len(samples),
        "n_train": len(train),
        "n_test": len(test),
    }
