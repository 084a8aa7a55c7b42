"""Classical latent-variable baselines with exact likelihoods, fitted in one call (closed form or EM)
instead of by gradient steps, so every leaderboard has a classical row: probabilistic PCA, factor
analysis and a Gaussian mixture.

Probabilistic PCA (Tipping & Bishop 1999, "Probabilistic principal component analysis", J. R.
Statist. Soc. B 61(3), 611-622) and factor analysis (Ghahramani & Hinton 1996, "The EM algorithm for
mixtures of factor analyzers", CRG-TR-96-1; Bishop 2006, PRML 12.2) are one linear-Gaussian model
with different noise::

    z ~ N(0, I_q),   x = W z + mu + eps,   eps ~ N(0, Psi)
    p(x)     = N(x; mu, C),   C = W W^T + Psi
    E[z | x] = M^-1 W^T Psi^-1 (x - mu),   M = I_q + W^T Psi^-1 W

(T&B write M = W^T W + s2 I, which is s2 times this M when Psi = s2 I.) log p(x) is evaluated with
the Woodbury identity in O(D q) per example (:func:`dgm.nn.distributions.lowrank_normal_log_prob`).

* PPCA, Psi = s2 I: the maximum-likelihood solution is the eigendecomposition of the sample
  covariance S = 1/N sum_n (x_n - mu)(x_n - mu)^T = U L U^T, eigenvalues l_1 >= ... >= l_D::

      mu = mean of the x_n,   s2 = 1/(D - q) sum_{j > q} l_j,   W = U_q (L_q - s2 I)^1/2 R   (T&B eq. 7, 8)

  with the rotation R = I.
* Factor analysis, Psi = diag(psi): no closed form. Fitted by the iteration scikit-learn's
  ``FactorAnalysis`` uses (Barber 2012, "Bayesian Reasoning and Machine Learning", 21.2.2), an
  alternating maximisation whose fixed points are the stationary points of the likelihood, as
  those of EM are: given Psi, the best W comes from the top q eigenpairs (lambda_j, u_j) of the
  whitened covariance Psi^-1/2 S Psi^-1/2, then psi is matched to the variances the factors leave::

      W   = Psi^1/2 U_q (Lambda_q - I)^1/2        (a column with lambda_j <= 1 is 0)
      psi = max(diag(S - W W^T), min_variance)

A Gaussian mixture (Dempster, Laird & Rubin 1977; Bishop 2006, PRML 9.2)::

    p(x) = sum_k pi_k N(x; m_k, S_k),   S_k = L_k L_k^T

is fitted by EM in scikit-learn's ``GaussianMixture`` and held as logits, means and Cholesky factors
L_k, so its log-density (a logsumexp of triangular solves) and its samples are torch code and its
loss stays differentiable.

All three are densities over continuous values: 8-bit images are read uniformly dequantized, (k +
u) / L with u ~ U[0, 1) (the ``dequantized`` representation), and the evaluator turns the density
into bits per dimension of the discrete data, as for the flows.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, Dataset
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, rand, randn, register
from dgm.models.refusals import refuse_variable_length
from dgm.nn.distributions import lowrank_normal_log_prob, normal_log_prob
from dgm.settings import PositiveFloat, PositiveInt

#: why the classical models refuse token sequences and point sets
PADDING_REASON = "its Gaussian covers every position of a fixed-size example, so it would model the padding as data"
#: examples scored at a time when fit reports the training log-likelihood (a mixture whitens (K, rows, D))
CHUNK = 4096
#: floor of PPCA's s2: data spanning q dimensions or fewer would leave s2 = 0 and log s2 = -inf
MIN_S2 = 1e-12


def initial_moments(spec: DataSpec) -> tuple[float, float]:
    """The mean and variance of every coordinate before fitting: those of U[0, 1) for dequantized
    images (1/2, 1/12), of a standard normal for continuous data; an unfitted model's loss is finite."""
    return (0.0, 1.0) if spec.representation == "continuous" else (0.5, 1 / 12)


def sample_covariance(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean ``(D,)`` and the covariance S = 1/N sum_n (x_n - mean)(x_n - mean)^T ``(D, D)`` of
    the rows of ``X`` ``(N, D)``: the maximum-likelihood estimates, as T&B's S (divided by N)."""
    mean = X.mean(0)
    centred = X - mean
    return mean, centred.T @ centred / len(X)


def iteration_bar(total: int, progress: bool, desc: str) -> Any:
    """A tqdm bar over EM iterations, shown when ``progress`` (and a no-op otherwise)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, leave=False, desc=desc, unit="iteration", dynamic_ncols=True)


class ClassicalModel(GenerativeModel):
    """What the classical baselines share: continuous data, :meth:`fit` of the whole training split
    in one call (:meth:`estimate` in float64 numpy, copied into the parameters), and the negative
    log-likelihood as :meth:`loss`, so they also train by gradients. ``forward`` is the model's
    generative map from standard noise to data, which :meth:`sample` draws the noise for."""

    def __init__(self, config: Any, spec: DataSpec) -> None:
        super().__init__(config, spec)
        expected = self.default_representation(config, spec)
        if spec.representation != expected:
            raise DgmError(f"model {self.name!r} is a density over continuous values and reads the {expected!r} "
                           f"representation, got {spec.representation!r}: drop the data.representation setting")

    @classmethod
    def default_representation(cls, config: Any, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        return "continuous" if spec.levels is None else "dequantized"

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        log_p = self.log_prob(batch.x)
        return Loss(-log_p.mean(), {"log_likelihood": log_p.mean()})

    def fit(self, data: Dataset, *, generator: torch.Generator, progress: bool = False) -> dict[str, float]:
        """Set the parameters to their maximum-likelihood values on the whole split ``data``, read
        once in the model's representation (dequantized afresh from ``generator``); returns the mean
        log-likelihood of that draw under the fitted model (nats), and the iterations it took."""
        n = len(data)
        if n < 2:
            raise DgmError(f"model {self.name!r} fits a mean and a covariance and needs at least 2 training "
                           f"examples, got {n}: use a larger training split")
        x = data.present(torch.arange(n, device=data.device), generator)  # (N, *shape)
        estimate, info = self.estimate(x.flatten(1).double().cpu().numpy(), generator=generator, progress=progress)
        with torch.no_grad():
            for name, value in estimate.items():  # float64 estimates into the parameters' dtype and device
                getattr(self, name).copy_(torch.as_tensor(value))
            log_p = torch.cat([self.log_prob(chunk.to(self.device)) for chunk in x.split(CHUNK)])
        return {"train_log_likelihood": float(log_p.mean()), **info}

    def estimate(self, X: np.ndarray, *, generator: torch.Generator,
                 progress: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The maximum-likelihood parameters for the training rows ``X`` ``(N, D)`` (float64), by
        parameter name, and the numbers to log (``iterations``, ``converged``)."""
        raise NotImplementedError

    def refuse_condition(self, condition: Tensor | None) -> None:
        if condition is not None:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (--class)")


# --- factor analysis and probabilistic PCA --------------------------------------------------------
@dataclass
class PPCAConfig:
    """Settings of :class:`PPCA` (``--set model.KEY=VALUE``)."""

    latent_dim: PositiveInt = 16  # q, the dimension of z; below the data's dimension D


@dataclass
class FAConfig(PPCAConfig):
    """Settings of :class:`FactorAnalysis` (``--set model.KEY=VALUE``)."""

    max_iter: PositiveInt = 1000  # iterations at most (scikit-learn's default)
    # stop when an iteration raises the mean log-likelihood by less than this many nats per example
    # (scikit-learn's tol=0.01 counts the sum over the examples, which tightens as the data grows)
    tol: PositiveFloat = 1e-4
    # floor of each psi_d. Without one, a coordinate a factor explains exactly (a Heywood case) or a
    # constant one of continuous data gets psi_d -> 0 and an infinite density. A constant 8-bit pixel,
    # dequantized, still varies by 1/(12 * 256^2) ~ 1.3e-6, so this floor leaves honest fits alone
    min_variance: PositiveFloat = 1e-6


@register
class FactorAnalysis(ClassicalModel):
    """Factor analysis: x = W z + mu + eps, z ~ N(0, I_q), eps ~ N(0, diag psi) (see the module).

    Example:
        >>> data = dgm.data.load("digits", representation="dequantized")
        >>> fa = dgm.create("fa", data.spec, latent_dim=8)
        >>> fa.fit(data, generator=torch.Generator().manual_seed(0))["train_log_likelihood"]
    """

    name = "fa"
    Config = FAConfig
    description = "factor analysis: linear-Gaussian latents with per-pixel noise, fitted by EM (exact likelihood)"

    def __init__(self, config: PPCAConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        D, q = spec.dim, config.latent_dim
        if q >= D:
            raise DgmError(f"model {self.name!r} needs latent_dim below the data's {D} dimensions, got {q}: "
                           f"pass --set model.latent_dim={D - 1} or less")
        mean, variance = initial_moments(spec)
        self.W = nn.Parameter(0.01 * torch.randn(D, q))  # (D, q) factor loadings; small: near-independent pixels
        self.mu = nn.Parameter(torch.full((D,), mean))  # (D,)
        self.init_noise(variance)

    def init_noise(self, variance: float) -> None:
        """The noise parameter, log psi ``(D,)``: one variance per coordinate."""
        self.log_psi = nn.Parameter(torch.full((self.spec.dim,), math.log(variance)))

    def noise_variance(self) -> Tensor:
        """The diagonal of Psi, ``(D,)``."""
        return self.log_psi.exp()

    # --- fitting ----------------------------------------------------------------------------------
    def estimate(self, X: np.ndarray, *, generator: torch.Generator,
                 progress: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        c = self.config
        mu, S = sample_covariance(X)
        variance = np.diag(S)
        # start from each coordinate's own variance, so the fit does not depend on the units of each
        psi = np.maximum(variance, c.min_variance)
        old, converged = -np.inf, False
        with iteration_bar(c.max_iter, progress, "factor analysis") as bar:
            for iteration in range(1, c.max_iter + 1):  # scikit-learn's loop, per example
                W, log_likelihood = self.best_loadings(S, psi)
                bar.update()
                if log_likelihood - old < c.tol:
                    converged = True
                    break
                old = log_likelihood
                psi = np.maximum(variance - (W ** 2).sum(1), c.min_variance)  # diag(S - W W^T)
        return ({"W": W, "mu": mu, "log_psi": np.log(psi)},
                {"iterations": float(iteration), "converged": float(converged)})

    def best_loadings(self, S: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, float]:
        """The W ``(D, q)`` that maximises the likelihood given Psi (Barber 21.2.2), and the mean
        log-likelihood at (W, Psi): with lambda_j the top q eigenvalues of A = Psi^-1/2 S Psi^-1/2,
        log|C| = sum log psi + sum log max(lambda_j, 1) and tr(C^-1 S) = tr A - sum (lambda_j - min(lambda_j, 1))."""
        import scipy.linalg

        D, q = S.shape[0], self.config.latent_dim
        sqrt_psi = np.sqrt(psi)
        A = S / np.outer(sqrt_psi, sqrt_psi)  # Psi^-1/2 S Psi^-1/2, (D, D)
        lam, U = scipy.linalg.eigh(A, subset_by_index=(D - q, D - 1))  # the top q, ascending
        lam, U = lam[::-1], np.ascontiguousarray(U[:, ::-1])  # the strongest factor first
        W = sqrt_psi[:, None] * U * np.sqrt(np.maximum(lam - 1, 0))
        log_det = np.log(psi).sum() + np.log(np.maximum(lam, 1)).sum()
        trace = np.trace(A) - (lam - np.minimum(lam, 1)).sum()
        return W, -0.5 * (D * math.log(2 * math.pi) + log_det + trace)

    # --- the density, codes and samples -----------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        return lowrank_normal_log_prob(x.flatten(1), self.mu, self.W, self.noise_variance())

    def encode(self, x: Tensor) -> Tensor:
        """E[z | x] = M^-1 W^T Psi^-1 (x - mu), ``(B, q)``."""
        scaled = self.W / self.noise_variance()[:, None]  # Psi^-1 W, (D, q)
        M = torch.eye(self.config.latent_dim, dtype=self.W.dtype, device=self.W.device) + self.W.mT @ scaled
        return torch.linalg.solve(M, ((x.flatten(1).to(self.W.dtype) - self.mu) @ scaled).mT).mT

    def decode(self, z: Tensor) -> Tensor:
        """E[x | z] = W z + mu, ``(B, *spec.shape)``."""
        return (z @ self.W.mT + self.mu).view(-1, *self.spec.shape)

    def forward(self, z: Tensor, eps: Tensor) -> Tensor:
        """x = W z + mu + Psi^1/2 eps for z ``(n, q)`` and eps ``(n, D)`` standard normal."""
        return self.decode(z) + (self.noise_variance().sqrt() * eps).view(-1, *self.spec.shape)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        self.refuse_condition(condition)
        z = randn((n, self.config.latent_dim), like=self.W, generator=generator)
        return self(z, randn((n, self.spec.dim), like=self.W, generator=generator))


@register
class PPCA(FactorAnalysis):
    """Probabilistic PCA (Tipping & Bishop 1999): factor analysis with isotropic noise Psi = s2 I,
    whose maximum-likelihood fit is the eigendecomposition of the sample covariance (T&B eq. 7, 8).

    Example:
        >>> data = dgm.data.load("digits", representation="dequantized")
        >>> ppca = dgm.create("ppca", data.spec, latent_dim=8)
        >>> ppca.fit(data, generator=torch.Generator().manual_seed(0))["train_log_likelihood"]
    """

    name = "ppca"
    Config = PPCAConfig
    description = "probabilistic PCA: linear-Gaussian latents with isotropic noise, in closed form (exact likelihood)"

    def init_noise(self, variance: float) -> None:
        """The noise parameter, log s2 ``()``: one variance for every coordinate."""
        self.log_s2 = nn.Parameter(torch.tensor(math.log(variance)))

    def noise_variance(self) -> Tensor:
        return self.log_s2.exp().expand(self.spec.dim)

    def estimate(self, X: np.ndarray, *, generator: torch.Generator,
                 progress: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        q = self.config.latent_dim
        mu, S = sample_covariance(X)
        L, U = np.linalg.eigh(S)  # ascending
        L, U = L[::-1], U[:, ::-1]  # l_1 >= ... >= l_D
        s2 = max(L[q:].mean(), MIN_S2)  # T&B eq. 8: the mean of the discarded eigenvalues
        W = U[:, :q] * np.sqrt(np.maximum(L[:q] - s2, 0))  # T&B eq. 7 with R = I
        return {"W": np.ascontiguousarray(W), "mu": mu, "log_s2": np.log(s2)}, {"iterations": 0.0}


# --- the Gaussian mixture -------------------------------------------------------------------------
@dataclass
class GMMConfig:
    """Settings of :class:`GaussianMixture` (``--set model.KEY=VALUE``)."""

    components: PositiveInt = 10  # K, the mixture components
    covariance: Literal["full", "diag"] = "full"  # each component's covariance: full, or diagonal
    # EM iterations at most. scikit-learn's default is 100, but on Fashion-MNIST (784-d, 60k, 10 full
    # covariances) each takes ~44 CPU-seconds and the last 35 of 55 gain 0.004 bits/dim: 20 fits in
    # ~12 CPU-minutes instead of ~36 (docs/benchmarks.md)
    max_iter: PositiveInt = 20
    tol: PositiveFloat = 1e-3  # stop when EM changes the mean log-likelihood by less (nats per example; scikit-learn's)
    # added to every covariance's diagonal, so it stays invertible where a component's pixels are
    # constant; below the 1/(12 * 256^2) ~ 1.3e-6 variance of a dequantized 8-bit pixel (scikit-learn's)
    reg_covar: PositiveFloat = 1e-6
    init: Literal["kmeans", "random"] = "kmeans"  # EM's start: the clusters of k-means, or random responsibilities


@register
class GaussianMixture(ClassicalModel):
    """A mixture of K Gaussians with full or diagonal covariances, fitted by EM (scikit-learn).

    Example:
        >>> data = dgm.data.load("moons")
        >>> gmm = dgm.create("gmm", data.spec, components=8)
        >>> gmm.fit(data, generator=torch.Generator().manual_seed(0))["train_log_likelihood"]
    """

    name = "gmm"
    Config = GMMConfig
    description = "Gaussian mixture with full or diagonal covariances, fitted by EM (exact likelihood)"

    def __init__(self, config: GMMConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        K, D = config.components, spec.dim
        mean, variance = initial_moments(spec)
        self.logits = nn.Parameter(torch.zeros(K))  # log pi_k up to a constant
        self.means = nn.Parameter(mean + 0.1 * math.sqrt(variance) * torch.randn(K, D))  # (K, D), apart
        self.log_scale = nn.Parameter(torch.full((K, D), 0.5 * math.log(variance)))  # log of L_k's diagonal
        # the strict lower triangle of L_k (the rest is unused): any value gives a valid covariance
        self.register_parameter("scale_tril", nn.Parameter(torch.zeros(K, D, D)) if config.covariance == "full"
                                else None)

    def cholesky(self) -> Tensor:
        """L_k ``(K, D, D)``, with S_k = L_k L_k^T: exp(log_scale) on the diagonal, scale_tril below."""
        return self.scale_tril.tril(-1) + torch.diag_embed(self.log_scale.exp())

    def whiten(self, r: Tensor) -> Tensor:
        """L_k^-1 r_k for residuals ``r`` ``(K, B, D)``."""
        if self.scale_tril is None:
            return r * (-self.log_scale).exp()[:, None]
        return torch.linalg.solve_triangular(self.cholesky(), r.mT, upper=False).mT

    def colour(self, eps: Tensor) -> Tensor:
        """L_k eps for standard normal ``eps`` ``(n, D)``, every component: ``(K, n, D)``."""
        if self.scale_tril is None:
            return eps * self.log_scale.exp()[:, None]
        return eps @ self.cholesky().mT

    # --- fitting ----------------------------------------------------------------------------------
    def estimate(self, X: np.ndarray, *, generator: torch.Generator,
                 progress: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        from sklearn import mixture
        from sklearn.exceptions import ConvergenceWarning

        c = self.config
        if len(X) < c.components:
            raise DgmError(f"model {self.name!r} with components={c.components} needs at least as many training "
                           f"examples, got {len(X)}: use fewer components or a larger split")
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator, device=generator.device))
        em = mixture.GaussianMixture(c.components, covariance_type=c.covariance, tol=c.tol, reg_covar=c.reg_covar,
                                     max_iter=c.max_iter, init_params=c.init, random_state=seed)
        with iteration_bar(c.max_iter, progress, "Gaussian mixture EM") as bar, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # logged as converged = 0 instead
            # scikit-learn calls this (private) hook after every EM iteration; it only prints
            em._print_verbose_msg_iter_end = lambda n_iter, change: bar.update()
            em.fit(X)
        if c.covariance == "full":
            L = np.linalg.cholesky(em.covariances_)  # (K, D, D), as scikit-learn factors them
            factors = {"log_scale": np.log(np.diagonal(L, axis1=1, axis2=2)), "scale_tril": np.tril(L, -1)}
        else:
            factors = {"log_scale": 0.5 * np.log(em.covariances_)}
        return ({"logits": np.log(em.weights_), "means": em.means_, **factors},
                {"iterations": float(em.n_iter_), "converged": float(em.converged_)})

    # --- the density and samples ------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """log sum_k pi_k N(x; m_k, S_k), with log N = sum_d log N(L_k^-1 (x - m_k); 0, 1)_d - log|L_k|."""
        r = x.flatten(1).to(self.means.dtype) - self.means[:, None]  # (K, B, D)
        log_normal = normal_log_prob(self.whiten(r)).sum(-1) - self.log_scale.sum(-1)[:, None]  # (K, B)
        return (self.logits.log_softmax(0)[:, None] + log_normal).logsumexp(0)

    def forward(self, k: Tensor, eps: Tensor) -> Tensor:
        """x = m_k + L_k eps for components ``k`` ``(n,)`` and standard normal ``eps`` ``(n, D)``."""
        n = len(k)
        return (self.means[k] + self.colour(eps)[k, torch.arange(n, device=k.device)]).view(n, *self.spec.shape)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling: k ~ pi (by inverting its CDF), then x ~ N(m_k, S_k)."""
        self.refuse_condition(condition)
        u = rand((n, 1), like=self.logits, generator=generator)
        k = (u > self.logits.softmax(0).cumsum(0)).sum(-1).clamp(max=self.config.components - 1)
        return self(k, randn((n, self.spec.dim), like=self.means, generator=generator))
