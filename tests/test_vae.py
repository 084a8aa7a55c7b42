"""Known answers for the VAE: a linear-Gaussian VAE is probabilistic PCA, whose log p(x) and exact
posterior are closed forms (Tipping & Bishop 1999), so the bounds can be checked against the truth."""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from conftest import image_dataset
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval.metrics import active_units
from dgm.models import Progress, create
from dgm.train.trainer import TrainConfig, Trainer

D, d, SIGMA = 6, 2, 0.5


def ppca_vae(posterior: str = "exact"):
    """A VAE with linear encoder/decoder and an isotropic Gaussian likelihood = PPCA, in float64.

    With W's columns orthogonal, the exact posterior N(S W^T (x - b) / s2, S), S = (I + W^T W / s2)^-1,
    is diagonal, so the VAE's Gaussian encoder can represent it exactly ("exact"); "perturbed" gives
    the encoder a wrong mean and variance so the bounds are loose.
    """
    torch.manual_seed(0)
    spec = DataSpec("ppca", (D,), "continuous", levels=None)
    vae = create("vae", spec, latent_dim=d, hidden=(), likelihood="gaussian").double()
    q, _ = torch.linalg.qr(torch.randn(D, d, dtype=torch.float64))
    W = q * torch.tensor([2.0, 1.0], dtype=torch.float64)  # orthogonal columns
    b = torch.randn(D, dtype=torch.float64)
    s2 = SIGMA**2
    S = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + W.T @ W / s2)  # diagonal
    A = S @ W.T / s2  # posterior mean = A (x - b)
    logvar = torch.log(torch.diagonal(S))
    if posterior == "perturbed":
        A, logvar = 0.6 * A, logvar + 1.0
    with torch.no_grad():
        decoder, encoder = vae.decoder[0][0], vae.encoder[1][0]  # the single Linear of each MLP
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
        vae.likelihood.log_scale.fill_(math.log(SIGMA))
        encoder.weight.zero_()
        encoder.weight[:d].copy_(A)
        encoder.bias[:d].copy_(-A @ b)
        encoder.bias[d:].copy_(logvar)
    marginal = MultivariateNormal(b, W @ W.T + s2 * torch.eye(D, dtype=torch.float64))
    return vae, marginal


def test_exact_posterior_makes_every_bound_tight():
    vae, marginal = ppca_vae("exact")
    x = marginal.sample((100,))
    log_px = marginal.log_prob(x)
    with torch.no_grad():
        # log w = log p(x, z) - log q(z|x) = log p(x) for every z: the IWAE bound is exact for any k
        torch.testing.assert_close(vae.iwae_bound(x, 50, chunk=7), log_px, rtol=0, atol=1e-8)
        # the ELBO estimator (analytic KL) is noisy per z but its mean is log p(x): KL(q || p(z|x)) = 0
        elbo = torch.stack([vae.elbo(x) for _ in range(400)]).mean(0)
    assert (elbo - log_px).abs().mean() < 0.05


def test_elbo_below_iwae_below_log_px_and_iwae_rises_with_k():
    vae, marginal = ppca_vae("perturbed")
    torch.manual_seed(1)
    x = marginal.sample((300,))
    log_px = marginal.log_prob(x).mean().item()
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x) for _ in range(100)]).mean().item()
        bounds = {k: vae.iwae_bound(x, k, chunk=256).mean().item() for k in (10, 100, 2000)}
        l1 = torch.stack([vae.iwae_bound(x, 1) for _ in range(100)]).mean().item()
    assert l1 == pytest.approx(elbo, abs=0.1)  # L_1 is the ELBO (here with a Monte Carlo KL)
    assert elbo < bounds[10] < bounds[100] < bounds[2000] <= log_px + 1e-3
    assert log_px - bounds[2000] < 0.2 * (log_px - elbo)  # most of the gap closes by k = 2000
    assert log_px - elbo > 0.5  # the perturbed posterior really is loose, so the checks above bite


def test_analytic_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    from dgm.models.vae import VAE

    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(VAE.analytic_kl(mu, logvar), expected)


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(1000, 4, generator=g) * torch.tensor([1.0, 0.5, 0.01, 0.0])
    count, activity = active_units(means)
    assert count == 2
    assert activity[0] == pytest.approx(1.0, rel=0.1)


def loss_parts(vae, batch, step=0):
    torch.manual_seed(0)
    return vae.loss(batch, "model", Progress(step=step))


def test_beta_warmup_and_free_bits_enter_the_objective():
    data = image_dataset(n=64, representation="binary-dynamic")
    batch = data.tensors()
    base = loss_parts(create("vae", data.spec, latent_dim=4, hidden=(16,)), batch)
    rec, kl = base.metrics["reconstruction"], base.metrics["kl"]
    torch.testing.assert_close(base.loss, -rec + kl)

    warm = create("vae", data.spec, latent_dim=4, hidden=(16,), kl_warmup_steps=100, beta=2.0)
    out = loss_parts(warm, batch, step=49)
    assert out.metrics["beta"].item() == pytest.approx(1.0)  # beta * (49 + 1) / 100
    torch.testing.assert_close(out.loss, -out.metrics["reconstruction"] + 1.0 * out.metrics["kl"])

    free = create("vae", data.spec, latent_dim=4, hidden=(16,), free_bits=5.0)
    out = loss_parts(free, batch)
    # an untrained encoder has KL well below 5 nats in every dimension: each counts as 5
    torch.testing.assert_close(out.loss, -out.metrics["reconstruction"] + torch.tensor(20.0))


def test_iwae_objective_trains_and_rejects_beta():
    data = image_dataset(n=64, representation="binary-dynamic")
    vae = create("vae", data.spec, latent_dim=4, hidden=(16,), iwae_k=5)
    out = loss_parts(vae, data.tensors())
    out.loss.backward()
    assert all(p.grad is not None for p in vae.parameters())
    with pytest.raises(DgmError, match="IWAE"):
        create("vae", data.spec, iwae_k=5, beta=0.5)


@pytest.mark.parametrize("likelihood,representation", [
    ("bernoulli", "binary-dynamic"), ("gaussian", "dequantized"), ("logistic", "unit"),
    ("logistic-mixture", "unit"), ("categorical", "unit")])
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_every_decoder_and_network_trains(likelihood, representation, network):
    data = image_dataset(n=128, representation=representation)
    torch.manual_seed(0)
    vae = create("vae", data.spec, latent_dim=4, hidden=(64,), width=8, network=network, likelihood=likelihood)
    assert type(vae).default_representation(vae.config, data.spec) == representation
    test = data.tensors(64).x
    with torch.no_grad():
        before = vae.elbo(test).mean().item()
    Trainer(vae, data, TrainConfig(epochs=8, batch_size=32, lr=3e-3, progress=False, device="cpu")).fit()
    with torch.no_grad():
        after = vae.elbo(test).mean().item()
        samples = vae.sample(5, generator=torch.Generator().manual_seed(0))
        recon = vae.reconstruct(test[:3])
    assert after > before + 5  # the bound improves by more than noise
    assert samples.shape == (5, 1, 8, 8) and recon.shape == (3, 1, 8, 8)
    assert vae.iwae_bound(test[:4], 10).shape == (4,)


def test_conv_network_needs_images():
    spec = DataSpec("v", (2,), "continuous", levels=None)
    with pytest.raises(DgmError, match="network=conv needs image data"):
        create("vae", spec, network="conv", likelihood="gaussian")


def test_wrong_likelihood_for_the_representation_says_what_to_set():
    spec = DataSpec("d", (1, 8, 8), "unit", levels=17)
    with pytest.raises(DgmError, match="binary-dynamic"):
        create("vae", spec, likelihood="bernoulli")


def test_batch_dimension_only_no_cross_talk():
    """An example's bound must not depend on its batch (no batch norm, per-example bounds): with the
    same noise eps for that example, elbo(x)[i] equals elbo(x[i:i+1]), and so does the posterior."""
    data = image_dataset(n=16, representation="unit")
    torch.manual_seed(0)
    vae = create("vae", data.spec, network="conv", width=8, likelihood="logistic").eval()
    x = data.tensors().x
    eps = torch.randn(len(x), vae.config.latent_dim)

    def elbo_with_noise(x, eps):
        """vae.elbo(x) with its reparameterisation noise set to ``eps`` (it draws with torch.randn)."""
        def randn(shape, **kwargs):
            assert tuple(shape) == eps.shape, (shape, eps.shape)  # the one draw elbo makes is eps
            return eps.clone()
        with mock.patch.object(torch, "randn", randn):
            return vae.elbo(x)

    with torch.no_grad():
        full = elbo_with_noise(x, eps)
        single = torch.cat([elbo_with_noise(x[i:i + 1], eps[i:i + 1]) for i in range(len(x))])
        mu, logvar = vae.posterior(x)
        posteriors = [vae.posterior(x[i:i + 1]) for i in range(len(x))]
        # the same bound written out: log p(x|z) - KL(q || p) at z = mu + eps sigma
        expected = vae.log_likelihood(x, mu + eps * (0.5 * logvar).exp()) - vae.analytic_kl(mu, logvar).sum(-1)
        other = elbo_with_noise(x, torch.randn(len(x), vae.config.latent_dim))
    assert full.shape == (len(x),)
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(single, full, rtol=1e-6, atol=1e-4)  # ~200 nats; measured within 2e-5
    torch.testing.assert_close(torch.cat([p[0] for p in posteriors]), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in posteriors]), logvar, rtol=1e-5, atol=1e-5)
    assert (other - full).abs().min() > 1e-3  # the noise matters, so equal noise is what makes them equal
