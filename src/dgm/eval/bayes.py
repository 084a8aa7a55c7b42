"""Generative classifiers: class-conditional likelihoods turned into p(y | x) by Bayes' rule, and the
calibration of any classifier's probabilities.

A model of p(x | y) classifies by

    p(y | x) = p(x | y) p(y) / sum_y' p(x | y') p(y'),

computed in log space (a log-sum-exp over the K classes). Where log p(x | y) is a bound (the
conditional VAE's IWAE bound, the conditional DDPM's variational bound), the classes are compared
under *common random numbers*: every class's bound is computed from the same random stream (the
same importance draws, timesteps and noise), so the comparison does not carry K independent Monte
Carlo errors.

Calibration: the expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
Networks", arXiv:1706.04599, eq. 3) over equal-width bins of the top-class confidence, and the
negative log-likelihood of the true class.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dgm.data.core import Dataset
from dgm.errors import DgmError
from dgm.eval.core import CONDITIONAL_LIKELIHOODS, progress_bar
from dgm.eval.fidelity import ArrayLike
from dgm.models.base import GenerativeModel, capabilities

CALIBRATION_BINS = 15  # Guo et al. 2017's M


def conditional_estimator(model: GenerativeModel, k: int = 1) -> str:
    """The capability that scores log p(x | y) for ``model``: exact when it has it, else the IWAE
    bound when ``k > 1`` (or no ELBO), else the ELBO; a :class:`DgmError` when it has none."""
    have = capabilities(model)
    usable = [c for c in CONDITIONAL_LIKELIHOODS if c in have]
    if not usable:
        raise DgmError(f"model {model.name!r} has no class-conditional likelihood log p(x|y), so Bayes' rule "
                       f"cannot classify with it: train a conditional model (cvae, pixelcnn or gated-pixelcnn "
                       f"or ddpm with --set model.conditional=true)")
    if not model.spec.num_classes or model.num_classes != model.spec.num_classes:
        raise DgmError(f"model {model.name!r} conditions on something other than the class (a caption, known "
                       f"factors), so Bayes' rule over its classes cannot run: train it conditioned on the labels")
    if usable[0] == "conditional_iwae_bound" and k == 1 and "conditional_elbo" in usable:
        return "conditional_elbo"  # the IWAE bound at k = 1 is the ELBO with a sampled KL: take the analytic one
    return usable[0]


def class_log_likelihoods(model: GenerativeModel, x: Tensor, *, k: int = 1, seed: int = 0) -> Tensor:
    """log p(x | y) (or the model's bound on it) for every class y, nats ``(B, K)``; each class's
    estimate drawn from the same random stream (seeded with ``seed``: common random numbers)."""
    how = conditional_estimator(model, k)
    K = model.spec.num_classes
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    columns = []
    for c in range(K):
        y = torch.full((len(x),), c, dtype=torch.long, device=x.device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if how == "conditional_iwae_bound":
                columns.append(model.conditional_iwae_bound(x, y, k))
            else:
                columns.append(getattr(model, how)(x, y))
    return torch.stack(columns, 1).float()


def bayes_log_posterior(log_likelihoods: Tensor, log_prior: Tensor) -> Tensor:
    """log p(y | x) = log p(x | y) + log p(y) - log sum_y' p(x | y') p(y'), ``(B, K)`` from
    ``log_likelihoods`` ``(B, K)`` and the prior ``log_prior`` ``(K,)`` (normalised here)."""
    if log_likelihoods.ndim != 2 or log_prior.shape != log_likelihoods.shape[1:]:
        raise DgmError(f"Bayes' rule needs (B, K) log-likelihoods and a (K,) prior, got "
                       f"{tuple(log_likelihoods.shape)} and {tuple(log_prior.shape)}")
    joint = log_likelihoods + (log_prior - log_prior.logsumexp(0))
    return joint - joint.logsumexp(1, keepdim=True)


def class_log_prior(labels: Tensor, num_classes: int) -> Tensor:
    """log p(y) from the class frequencies of ``labels`` (the labelled training examples), add-one
    smoothed so that no class is impossible, ``(K,)``."""
    counts = torch.bincount(labels.long().flatten(), minlength=num_classes).double() + 1
    return (counts / counts.sum()).log()


def bayes_probabilities(model: GenerativeModel, data: Dataset, log_prior: Tensor, *, k: int = 1, seed: int = 0,
                        batch_size: int = 100, progress: bool = False) -> tuple[Tensor, Tensor]:
    """p(y | x) by Bayes' rule for every example of ``data`` ``(N, K)``, and its labels ``(N,)``;
    batch i's estimates drawn with seed (seed, i)."""
    probs, labels = [], []
    bar = progress_bar(data.batches(batch_size), enabled=progress, total=data.num_batches(batch_size),
                       desc=f"p(x|y) for {model.spec.num_classes} classes")
    with torch.inference_mode():
        for i, batch in enumerate(bar):
            log_lik = class_log_likelihoods(model, batch.x, k=k, seed=seed * 1_000_003 + i + 1)  # as EvalContext.piece_seed
            probs.append(bayes_log_posterior(log_lik.double(), log_prior.to(log_lik.device)).exp().cpu())
            labels.append(batch.y.cpu())
    return torch.cat(probs), torch.cat(labels)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, bins: int = CALIBRATION_BINS) -> float:
    """ECE in %: sum over equal-width bins B_m of the top-class confidence of |B_m|/n |acc(B_m) -
    conf(B_m)| (Guo et al. 2017, eq. 3); bins are (lo, hi], the first [0, hi]."""
    p, y = _probabilities(probs, labels)
    if bins < 1:
        raise DgmError(f"calibration needs at least one bin, got {bins}")
    confidence, predicted = p.max(1), p.argmax(1)
    correct = (predicted == y).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = 0.0
    for m in range(bins):
        inside = which == m
        if inside.any():
            gap += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(100 * gap / len(y))


def true_class_nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean -log p(y_true | x) in nats (a probability of 0 counts as -log 1e-300, not infinity)."""
    p, y = _probabilities(probs, labels)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)).mean())


def _probabilities(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = probs.detach().cpu().double().numpy() if isinstance(probs, Tensor) else np.asarray(probs, np.float64)
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise DgmError(f"calibration needs (N, K) class probabilities and N labels, got {p.shape} and {y.shape}")
    if not math.isclose(float(p.sum(1).max()), 1.0, abs_tol=1e-6) or not math.isclose(float(p.sum(1).min()), 1.0,
                                                                                      abs_tol=1e-6):
        raise DgmError("the class probabilities of each example must sum to one")
    return p, y.astype(np.int64)
