"""Known answers for the classical baselines (dgm.models.classical): PPCA against the Tipping & Bishop
closed form computed here with numpy, factor analysis against scikit-learn's FactorAnalysis, the
Gaussian mixture against scikit-learn's score_samples, every log-density against scipy, and the
stationarity of the maximum-likelihood fit by autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from conftest import image_dataset
from dgm.data.core import Batch, Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, create, fits_in_closed_form
from dgm.nn.distributions import lowrank_normal_log_prob


def vectors(X: np.ndarray) -> Dataset:
    """A continuous training split holding the rows of ``X`` (float32, as the data layer stores them)."""
    spec = DataSpec("vectors", (X.shape[1],), "continuous", levels=None)
    return Dataset(torch.as_tensor(X, dtype=torch.float32), None, spec, train=True)


def factor_data(n: int = 500, D: int = 10, q: int = 3, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian rows: q factors and noise of a different variance in each coordinate."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, q))
    noise = rng.uniform(0.1, 1.0, size=D)
    return rng.normal(size=(n, q)) @ W.T + np.sqrt(noise) * rng.normal(size=(n, D)) + rng.normal(size=D)


def jittered_digits(n: int = 300) -> np.ndarray:
    """The first ``n`` of scikit-learn's 8x8 digits (levels 0..16) with uniform jitter, so no pixel is constant."""
    from sklearn.datasets import load_digits

    X = load_digits().data[:n]
    return X + np.random.default_rng(0).uniform(size=X.shape)


def fitted(name: str, data: Dataset, seed: int = 0, **config) -> tuple[torch.nn.Module, dict[str, float]]:
    """A model fitted to ``data`` in float64 (the parameters take the estimates without rounding)."""
    torch.manual_seed(0)
    model = create(name, data.spec, **config).double()
    return model, model.fit(data, generator=torch.Generator().manual_seed(seed))


def covariance_of(model) -> np.ndarray:  # noqa: ANN001
    W = model.W.detach()
    return (W @ W.T + torch.diag(model.noise_variance().detach())).numpy()


# --- PPCA ---------------------------------------------------------------------------------------------
def test_ppca_fit_is_the_tipping_bishop_closed_form():
    data, q = vectors(factor_data()), 3
    model, info = fitted("ppca", data, latent_dim=q)
    X = data.raw.double().numpy()
    mu = X.mean(0)
    S = (X - mu).T @ (X - mu) / len(X)
    lam, U = np.linalg.eigh(S)  # ascending: the top q are the last
    s2 = lam[:-q].mean()  # T&B eq. 8
    W = U[:, -q:] * np.sqrt(lam[-q:] - s2)  # T&B eq. 7, R = I
    np.testing.assert_allclose(model.mu.detach().numpy(), mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.log_s2.exp().item(), s2, rtol=1e-12)
    np.testing.assert_allclose((model.W @ model.W.T).detach().numpy(), W @ W.T, rtol=0, atol=1e-10)
    assert info["iterations"] == 0 and fits_in_closed_form(model)


@pytest.mark.parametrize("name, config", [("ppca", {}), ("fa", {"tol": 1e-12})])
def test_the_fit_is_a_stationary_point_of_the_likelihood(name, config):
    data = vectors(factor_data())
    model, _ = fitted(name, data, latent_dim=3, **config)
    x = data.raw.double()
    model.zero_grad()
    model.log_prob(x).mean().backward()
    for parameter_name, p in model.named_parameters():
        assert p.grad.abs().max() < 1e-6, (parameter_name, p.grad.abs().max())
    # and a true maximum along a random direction: a step either way lowers the likelihood
    with torch.no_grad():
        best = model.log_prob(x).mean()
        step = {n: 1e-3 * torch.randn_like(p) for n, p in model.named_parameters()}
        for sign in (1, -1):
            for n, p in model.named_parameters():
                p.add_(sign * step[n])
            assert model.log_prob(x).mean() < best
            for n, p in model.named_parameters():
                p.sub_(sign * step[n])


@pytest.mark.parametrize("name", ["ppca", "fa"])
def test_log_prob_is_the_gaussian_with_covariance_w_wt_plus_noise(name):
    data = vectors(factor_data())
    model, _ = fitted(name, data, latent_dim=3)
    x = torch.randn(50, 10, dtype=torch.float64) * 2
    reference = multivariate_normal(model.mu.detach().numpy(), covariance_of(model)).logpdf(x.numpy())
    np.testing.assert_allclose(model.log_prob(x).detach().numpy(), reference, rtol=1e-6, atol=0)


def test_lowrank_log_prob_keeps_float32_inputs_exact():
    """The Woodbury difference is taken in float64: small noise next to a large low-rank part."""
    g = torch.Generator().manual_seed(0)
    W, diag = torch.randn(64, 4, generator=g), torch.full((64,), 1e-5)
    mean, x = torch.rand(64, generator=g), torch.rand(8, 64, generator=g)
    W64 = W.double()
    reference = multivariate_normal(mean.double().numpy(), (W64 @ W64.T + torch.diag(diag.double())).numpy())
    out = lowrank_normal_log_prob(x, mean, W, diag)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference.logpdf(x.double().numpy()), rtol=1e-6)


def test_ppca_codes_are_the_posterior_mean():
    data = vectors(factor_data())
    model, _ = fitted("ppca", data, latent_dim=3)
    x = data.raw[:20].double()
    W, s2 = model.W.detach(), model.log_s2.exp().detach()
    M = W.T @ W + s2 * torch.eye(3)  # T&B's M
    expected = torch.linalg.solve(M, W.T @ (x - model.mu.detach()).T).T
    torch.testing.assert_close(model.encode(x), expected, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(model.decode(expected), expected @ W.T + model.mu.detach())


# --- factor analysis ----------------------------------------------------------------------------------
@pytest.mark.parametrize("X, q", [(factor_data(), 3), (jittered_digits(), 10)], ids=["gaussian", "digits"])
def test_factor_analysis_matches_scikit_learn(X, q):
    from sklearn.decomposition import FactorAnalysis

    data = vectors(X)
    tol, max_iter = 1e-5, 1000
    model, info = fitted("fa", data, latent_dim=q, tol=tol, max_iter=max_iter)
    X = data.raw.double().numpy()
    # the same start (each coordinate's variance) and stopping rule (scikit-learn's tol is on the sum)
    reference = FactorAnalysis(q, tol=tol * len(X), max_iter=max_iter, noise_variance_init=X.var(0),
                               svd_method="lapack").fit(X)
    assert info["converged"] == 1 and info["iterations"] == reference.n_iter_
    np.testing.assert_allclose(info["train_log_likelihood"], reference.score(X), rtol=1e-6)
    np.testing.assert_allclose(model.log_prob(data.raw.double()).detach().numpy(), reference.score_samples(X),
                               rtol=1e-6)
    # W is defined up to a rotation: compare the covariances W W^T + Psi
    np.testing.assert_allclose(covariance_of(model), reference.get_covariance(), rtol=1e-5, atol=1e-8)


# --- the Gaussian mixture -----------------------------------------------------------------------------
def mixture_data(n: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.random(n) < 0.3
    a = rng.normal(size=(n, 2)) @ np.array([[1.0, 0.0], [0.8, 0.5]]) + np.array([3.0, 1.0])
    b = rng.normal(size=(n, 2)) * np.array([0.5, 1.5]) - np.array([1.0, 2.0])
    return np.where(k[:, None], a, b)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_mixture_log_prob_is_scikit_learns_score_samples(covariance):
    from sklearn.mixture import GaussianMixture

    data = vectors(mixture_data())
    model, info = fitted("gmm", data, seed=3, components=3, covariance=covariance)
    X = data.raw.double().numpy()
    # fit draws scikit-learn's seed first from its generator (continuous data: no dequantization draws)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    reference = GaussianMixture(3, covariance_type=covariance, random_state=seed).fit(X)
    assert info["iterations"] == reference.n_iter_
    points = np.concatenate([X, 3 * np.random.default_rng(1).normal(size=(50, 2))])
    np.testing.assert_allclose(model.log_prob(torch.as_tensor(points)).detach().numpy(),
                               reference.score_samples(points), rtol=1e-6)
    # in float32, as trained, the density keeps its digits
    torch.manual_seed(0)
    single = create("gmm", data.spec, components=3, covariance=covariance)
    single.fit(data, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(single.log_prob(torch.as_tensor(points, dtype=torch.float32)).detach().numpy(),
                               reference.score_samples(points), rtol=1e-4)


def moments_error(samples: torch.Tensor, mean: np.ndarray, covariance: np.ndarray) -> tuple[float, float]:
    """The largest deviations of the samples' mean and covariance from ``mean`` and ``covariance``,
    in standard errors (those of a Gaussian's sample covariance: (S_ii S_jj + S_ij^2) / n)."""
    x = samples.flatten(1).double().numpy()
    n = len(x)
    mean_z = np.abs(x.mean(0) - mean) / np.sqrt(np.diag(covariance) / n)
    variances = np.diag(covariance)
    cov_se = np.sqrt((np.outer(variances, variances) + covariance ** 2) / n)
    cov_z = np.abs(np.cov(x.T, bias=True) - covariance) / cov_se
    return mean_z.max(), cov_z.max()


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_mixture_samples_have_the_mixtures_moments(covariance):
    data = vectors(mixture_data())
    model, _ = fitted("gmm", data, components=2, covariance=covariance)
    pi = model.logits.softmax(0).detach().numpy()
    means = model.means.detach().numpy()
    L = model.cholesky().detach().numpy() if covariance == "full" else \
        np.stack([np.diag(s) for s in model.log_scale.exp().detach().numpy()])
    mean = pi @ means
    second = sum(p * (l @ l.T + np.outer(m, m)) for p, l, m in zip(pi, L, means))
    samples = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 2)
    mean_z, cov_z = moments_error(samples, mean, second - np.outer(mean, mean))
    assert mean_z < 5 and cov_z < 6, (mean_z, cov_z)  # the bound is loose for a mixture's fourth moments


@pytest.mark.parametrize("name", ["ppca", "fa"])
def test_linear_gaussian_samples_have_the_models_moments(name):
    data = vectors(factor_data())
    model, _ = fitted(name, data, latent_dim=3)
    samples = model.sample(20000, generator=torch.Generator().manual_seed(0))
    mean_z, cov_z = moments_error(samples, model.mu.detach().numpy(), covariance_of(model))
    assert mean_z < 5 and cov_z < 5, (mean_z, cov_z)


# --- on dequantized images, through the protocol ------------------------------------------------------
SMALL = {"ppca": {"latent_dim": 4}, "fa": {"latent_dim": 4}, "gmm": {"components": 3},
         "gmm-diag": {"components": 3, "covariance": "diag"}}


@pytest.mark.parametrize("key", SMALL)
def test_fit_reports_the_mean_log_prob_of_its_dequantized_draw(key):
    name = key.split("-")[0]
    data = image_dataset(n=200, representation="dequantized")
    torch.manual_seed(0)
    model = create(name, data.spec, **SMALL[key])
    x = data.present(torch.arange(len(data)), torch.Generator().manual_seed(5))  # the draw fit will make
    before = model.loss(Batch(x), "model", Progress()).loss
    info = model.fit(data, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        log_p = model.log_prob(x)
    assert torch.isfinite(log_p).all() and np.isfinite(info["train_log_likelihood"])
    np.testing.assert_allclose(info["train_log_likelihood"], log_p.mean().item(), rtol=1e-5)
    assert model.loss(Batch(x), "model", Progress()).loss < before  # fitting beat the initialisation
    assert torch.isfinite(model.log_prob(data.tensors(16).x)).all()  # and a fresh draw has a density
    assert model.likelihood_kind == "density"


def test_refusals_say_what_to_do():
    images = image_dataset(n=200, representation="dequantized")
    with pytest.raises(DgmError, match="latent_dim=63"):
        create("ppca", images.spec, latent_dim=64)
    with pytest.raises(DgmError, match="latent_dim"):
        create("fa", vectors(factor_data()).spec, latent_dim=10)
    for name in ("ppca", "fa", "gmm"):
        model = create(name, images.spec, **SMALL[name])
        with pytest.raises(DgmError, match="at least 2"):
            model.fit(images.subset(1), generator=torch.Generator())
    with pytest.raises(DgmError, match="fewer components"):
        create("gmm", images.spec, components=5).fit(images.subset(4), generator=torch.Generator())
    with pytest.raises(DgmError, match="representation"):
        create("ppca", image_dataset(n=8, representation="unit").spec, latent_dim=2)
    with pytest.raises(DgmError, match="unconditional"):
        create("gmm", images.spec, components=2).sample(2, torch.zeros(2, dtype=torch.long))


def test_representation_follows_the_data():
    from dgm.models import model_class

    for name in ("ppca", "fa", "gmm"):
        cls = model_class(name)
        assert cls.default_representation(cls.Config(), image_dataset(n=8).spec) == "dequantized"
        assert cls.default_representation(cls.Config(), vectors(factor_data(n=4)).spec) == "continuous"
