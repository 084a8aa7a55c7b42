"""Representation probes: how much label information a model's latent codes carry.

Both probes fit a simple classifier on the codes of training examples and report its accuracy on
the codes of test examples: a *linear probe* (logistic regression on standardised codes; the
linear evaluation protocol of representation learning, e.g. Chen et al. 2020, SimCLR,
arXiv:2002.05709) asks whether the classes are linearly separable in the code, *k-NN accuracy* whether
codes of one class lie near each other. Neither trains the encoder.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from dgm.errors import DgmError
from dgm.eval.fidelity import ArrayLike


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _check(train_z: ArrayLike, train_y: ArrayLike, test_z: ArrayLike, test_y: ArrayLike,
           probe: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays as numpy (codes ``(N, D)`` float64, labels ``(N,)``), or a :class:`DgmError`."""
    zs, ys = [_as_numpy(train_z), _as_numpy(test_z)], [_as_numpy(train_y), _as_numpy(test_y)]
    for split, z, y in (("train", zs[0], ys[0]), ("test", zs[1], ys[1])):
        if z.ndim != 2:
            raise DgmError(f"the {probe} needs {split} codes of shape (N, D), got {z.shape}: flatten each "
                           "example's code into one row")
        if y.ndim != 1:
            raise DgmError(f"the {probe} needs {split} labels of shape (N,), got {y.shape}: pass class indices")
        if len(z) != len(y):
            raise DgmError(f"the {probe} got {len(z)} {split} codes but {len(y)} {split} labels: encode "
                           "the same examples the labels belong to")
        if len(z) == 0:
            raise DgmError(f"the {probe} got no {split} examples")
        if not np.isfinite(z).all():
            raise DgmError(f"the {split} codes contain NaN or infinite values: check the encoder")
    if zs[0].shape[1] != zs[1].shape[1]:
        raise DgmError(f"train codes are {zs[0].shape[1]}-d but test codes {zs[1].shape[1]}-d: encode both "
                       "splits with the same model")
    classes = np.unique(ys[0])
    if len(classes) < 2:
        raise DgmError(f"the {probe} needs at least two classes among the training labels, got only "
                       f"{classes.tolist()}: use a labelled split with several classes")
    return zs[0].astype(np.float64), ys[0], zs[1].astype(np.float64), ys[1]


def linear_probe(train_z: ArrayLike, train_y: ArrayLike, test_z: ArrayLike, test_y: ArrayLike, *,
                 seed: int = 0) -> float:
    """Test accuracy of multinomial logistic regression (scikit-learn ``LogisticRegression``,
    ``max_iter=1000``, default L2 penalty ``C=1``) fit on the training codes, both splits
    standardised with the training split's mean and standard deviation (so the fixed penalty means
    the same whatever the scale of the code)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ztr, ytr, zte, yte = _check(train_z, train_y, test_z, test_y, "linear probe")
    scaler = StandardScaler().fit(ztr)
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(scaler.transform(ztr), ytr)
    return float(clf.score(scaler.transform(zte), yte))


def knn_accuracy(train_z: ArrayLike, train_y: ArrayLike, test_z: ArrayLike, test_y: ArrayLike, *,
                 k: int = 5) -> float:
    """Test accuracy of a ``k``-nearest-neighbour classifier (scikit-learn ``KNeighborsClassifier``,
    Euclidean distance, majority vote) with the training codes as its memory; codes are used as
    they are, since their geometry is what the probe measures."""
    from sklearn.neighbors import KNeighborsClassifier

    ztr, ytr, zte, yte = _check(train_z, train_y, test_z, test_y, "k-NN probe")
    if k < 1 or len(ztr) < k:
        raise DgmError(f"the k-NN probe with k={k} needs at least {max(k, 1)} training examples, got "
                       f"{len(ztr)}: use more training examples or a smaller k (k >= 1)")
    clf = KNeighborsClassifier(n_neighbors=k).fit(ztr, ytr)
    return float(clf.score(zte, yte))


def error_rate(predicted: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> tuple[float, list[float]]:
    """Test error in % of ``predicted`` class indices against ``labels``, overall and per true class
    (NaN for a class absent from ``labels``)."""
    p, y = _as_numpy(predicted).astype(np.int64), _as_numpy(labels).astype(np.int64)
    if p.shape != y.shape or p.ndim != 1 or len(y) == 0:
        raise DgmError(f"need one predicted class per label, got {p.shape} predictions for {y.shape} labels")
    k = num_classes or int(max(p.max(), y.max())) + 1
    wrong = p != y
    per_class = [float(100 * wrong[y == c].mean()) if (y == c).any() else float("nan") for c in range(k)]
    return float(100 * wrong.mean()), per_class


def labelled_probe_error(train_z: ArrayLike, train_y: ArrayLike, test_z: ArrayLike, test_y: ArrayLike, *,
                         seed: int = 0) -> float:
    """Test error in % of the :func:`linear_probe` fit on the codes of the labelled training examples
    alone: a representation's semi-supervised classifier (Kingma et al. 2014's M1 + a classifier), to
    compare with a model's own q(y|x) at the same number of labels."""
    return 100 * (1 - linear_probe(train_z, train_y, test_z, test_y, seed=seed))
