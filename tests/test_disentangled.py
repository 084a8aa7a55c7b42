"""Known answers for the disentangling VAEs (models/disentangled.py): the beta-TC-VAE's
minibatch-weighted estimates of index-code MI, total correlation and dimension-wise KL against
exact enumeration and numerical integration; its loss against the VAE's; the IDVAE's objective,
gradients, Gaussian KL and refusals."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from conftest import image_dataset
from dgm.data.core import DataSpec, Dataset
from dgm.errors import DgmError
from dgm.models import MODELS, Progress, capabilities, create
from dgm.models.disentangled import kl_decomposition

TINY = {"latent_dim": 3, "hidden": (16,)}


# --- the KL decomposition on a discrete latent: every term by enumeration ----------------------------
def discrete_case(n: int = 4, dims: int = 3, values: int = 3, seed: int = 0):
    """Categorical q(z_j|n) ``(N, D, V)`` and prior p(z_j) ``(D, V)``, random, in float64."""
    g = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn(n, dims, values, generator=g, dtype=torch.float64)).softmax(-1)  # peaked: a clear MI
    return q, torch.randn(dims, values, generator=g, dtype=torch.float64).softmax(-1)


def test_kl_decomposition_is_exact_when_the_batch_is_the_dataset():
    """With the batch = the N examples (each once) and the expectation over z_i ~ q(z|n_i) taken by
    enumeration, MI, TC and dimension-wise KL equal their exact values, and sum to the average KL."""
    q, p = discrete_case()
    n, dims, values = q.shape
    zs = list(itertools.product(range(values), repeat=dims))  # every joint code z
    idx = torch.arange(dims)
    q_z_given_n = torch.stack([q[:, idx, torch.tensor(z)].prod(-1) for z in zs], 1)  # (N, Z)
    q_z = q_z_given_n.mean(0)  # (Z,) aggregate posterior
    q_zj = q.mean(0)  # (D, V) its marginals
    prod_marginals = torch.stack([q_zj[idx, torch.tensor(z)].prod() for z in zs])  # (Z,)
    p_z = torch.stack([p[idx, torch.tensor(z)].prod() for z in zs])
    exact_mi = (q_z_given_n * (q_z_given_n / q_z).log()).sum(1).mean()
    exact_tc = (q_z * (q_z / prod_marginals).log()).sum()
    exact_dwkl = (q_zj * (q_zj / p).log()).sum()
    exact_kl = (q_z_given_n * (q_z_given_n / p_z).log()).sum(1).mean()
    # the estimator on a batch whose every row holds the same z: row i's estimate depends on z_i only
    expected = torch.zeros(3, dtype=torch.float64)
    for c, z in enumerate(zs):
        z = torch.tensor(z)
        log_q_pairs = q[:, idx, z].log().expand(n, n, dims)  # [i, k, j] = log q(z_j | n_k)
        terms = torch.stack(kl_decomposition(log_q_pairs, p[idx, z].log().expand(n, dims)))  # (3, N)
        expected += (terms * q_z_given_n[:, c]).sum(1) / n  # weight q(z|n_i), average over i
    torch.testing.assert_close(expected, torch.stack([exact_mi, exact_tc, exact_dwkl]), rtol=0, atol=1e-6)
    torch.testing.assert_close(expected.sum(), exact_kl, rtol=0, atol=1e-6)
    assert exact_tc > 0.01 and exact_mi > 0.01  # a case where the terms are not trivially 0


def test_paper_normalisation_shifts_each_term_by_a_constant():
    """Chen et al.'s 1/(N M) against our 1/M: MI + log N, TC + (D - 1) log N, dimension-wise KL
    - D log N, so the sum (and every gradient) is unchanged; every term sums to log q(z_i|n_i) - log p(z_i)."""
    g = torch.Generator().manual_seed(1)
    m, dims, dataset_size = 5, 3, 1000
    log_q_pairs, log_prior = torch.randn(m, m, dims, generator=g), torch.randn(m, dims, generator=g)
    ours, paper = kl_decomposition(log_q_pairs, log_prior), kl_decomposition(log_q_pairs, log_prior, dataset_size=1000)
    log_n = math.log(dataset_size)
    torch.testing.assert_close(paper.mutual_information, ours.mutual_information + log_n)
    torch.testing.assert_close(paper.total_correlation, ours.total_correlation + (dims - 1) * log_n)
    torch.testing.assert_close(paper.dimension_wise_kl, ours.dimension_wise_kl - dims * log_n)
    own = log_q_pairs.diagonal().sum(0)  # (M,) log q(z_i | n_i)
    torch.testing.assert_close(sum(ours), own - log_prior.sum(-1))


def test_kl_decomposition_matches_numerical_integration_for_gaussian_posteriors():
    """Gaussian q(z|n) of 8 examples in 2-D: the Monte Carlo average of the batch estimates (batch =
    the dataset) converges to MI, TC and dimension-wise KL integrated on a grid."""
    g = torch.Generator().manual_seed(2)
    n, dims = 8, 2
    mu = torch.randn(n, dims, generator=g, dtype=torch.float64)
    mu[:, 1] += 0.8 * mu[:, 0]  # correlated means: a mixture with a clear total correlation
    logvar = 2 * torch.empty(n, dims, dtype=torch.float64).uniform_(math.log(0.3), math.log(0.8), generator=g)
    # exact values: 1-D marginals in closed form, the 2-D mixture on a grid
    t = torch.linspace(-7, 7, 701, dtype=torch.float64)
    step = float(t[1] - t[0])
    comp = Normal(mu[:, None, :], (0.5 * logvar).exp()[:, None, :]).log_prob(t[None, :, None]).exp()  # (N, T, D)
    q_j = comp.mean(0)  # (T, D) marginals q(z_j)
    q_given_n = comp[:, :, None, 0] * comp[:, None, :, 1]  # (N, T, T)
    q_joint = q_given_n.mean(0)
    tiny = 1e-300
    exact_tc = (q_joint * ((q_joint + tiny) / (q_j[:, None, 0] * q_j[None, :, 1] + tiny)).log()).sum() * step ** 2
    exact_mi = (q_given_n * ((q_given_n + tiny) / (q_joint + tiny)).log()).sum((1, 2)).mean() * step ** 2
    p_j = Normal(0.0, 1.0).log_prob(t).exp()[:, None]
    exact_dwkl = (q_j * ((q_j + tiny) / p_j).log()).sum() * step
    # the estimator, averaged over R independent batches of the whole dataset
    r = 20_000
    z = mu + (0.5 * logvar).exp() * torch.randn(r, n, dims, generator=g, dtype=torch.float64)  # (R, N, D)
    log_q_pairs = Normal(mu[None, None], (0.5 * logvar).exp()[None, None]).log_prob(z[:, :, None, :])  # (R, N, N, D)
    terms = kl_decomposition(log_q_pairs, Normal(0.0, 1.0).log_prob(z))
    for estimate, exact in zip(terms, (exact_mi, exact_tc, exact_dwkl)):
        stderr = float(estimate.mean(-1).std() / math.sqrt(r))
        assert abs(float(estimate.mean()) - float(exact)) < 4 * stderr + 1e-3, (float(estimate.mean()), float(exact))
    assert exact_tc > 0.05


# --- the beta-TC-VAE ------------------------------------------------------------------------------------
def test_beta_tc_vae_with_unit_weights_is_the_vae_with_a_monte_carlo_kl():
    """alpha = beta = gamma = 1: the three terms telescope to log q(z|x) - log p(z), so the loss is the
    VAE's negative ELBO with the one-sample KL in place of the analytic one (same networks, same noise);
    beta = 6 adds 5 TC."""
    data = image_dataset(n=32)
    data = data.with_representation("binary-static")
    tc_vae = create("beta-tc-vae", data.spec, **TINY, alpha=1.0, beta=1.0, gamma=1.0)
    vae = create("vae", data.spec, **TINY)
    vae.load_state_dict(tc_vae.state_dict())
    x = data.tensors(32).x
    out = tc_vae.loss(data.tensors(32), "model", Progress(generator=torch.Generator().manual_seed(3)))
    ref = vae.loss(data.tensors(32), "model", Progress(generator=torch.Generator().manual_seed(3)))
    mu, logvar = tc_vae.posterior(x)
    z = tc_vae.reparameterize(mu, logvar, torch.Generator().manual_seed(3))  # the loss's noise
    mc_kl = (Normal(mu, (0.5 * logvar).exp()).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean()
    torch.testing.assert_close(out.loss - ref.loss, mc_kl - ref.metrics["kl"], rtol=0, atol=1e-4)
    m = out.metrics
    torch.testing.assert_close(m["mi"] + m["tc"] + m["dwkl"], mc_kl, rtol=0, atol=1e-4)
    torch.testing.assert_close(m["elbo"], ref.metrics["elbo"])  # the ELBO on the log: analytic KL, as the VAE's
    tc_vae.config.beta = 6.0
    six = tc_vae.loss(data.tensors(32), "model", Progress(generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(six.loss - out.loss, 5 * m["tc"], rtol=0, atol=1e-4)


def test_beta_tc_vae_keeps_the_vae_capabilities_and_refuses_its_objective_options():
    spec = image_dataset(n=8).spec
    assert {"elbo", "iwae_bound", "encode", "decode", "kl_per_dim"} <= capabilities(MODELS["beta-tc-vae"])
    for option in ({"iwae_k": 4}, {"free_bits": 0.5}, {"kl_warmup_steps": 10}):
        with pytest.raises(DgmError, match="weighs its KL terms") as err:
            create("beta-tc-vae", spec, **TINY, **option)
        assert "\n" not in str(err.value)


# --- the IDVAE ------------------------------------------------------------------------------------------
def factor_dataset(n: int = 48, size: int = 8) -> Dataset:
    """Blobs at known (row, column) factors, 8 values each: data made from known factors, unlabelled."""
    g = torch.Generator().manual_seed(4)
    factors = torch.randint(0, size, (n, 2), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (yy - factors[:, :1, None]) ** 2 + (xx - factors[:, 1:, None]) ** 2
    raw = (16 * torch.exp(-d2 / 4)).round().to(torch.uint8).unsqueeze(1)
    spec = DataSpec("blobs-factors", (1, size, size), "binary-static", levels=17,
                    extras={"factors": ["row", "column"], "factor_sizes": [size, size]})
    return Dataset(raw, None, spec, train=True, factors=factors)


IDVAE_TINY = {**TINY, "prior_hidden": (8,)}


@pytest.mark.parametrize("auxiliary", ["factors", "labels"])
def test_idvae_loss_is_finite_and_trains_both_vaes(auxiliary):
    labelled = image_dataset(n=48, labels=True, representation="binary-static")
    data = factor_dataset() if auxiliary == "factors" else labelled
    torch.manual_seed(0)
    model = create("idvae", data.spec, **IDVAE_TINY, auxiliary=auxiliary)
    out = model.loss(data.tensors(16), "model", Progress(generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for part in ("encoder", "decoder", "prior_encoder", "prior_decoder"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    m = out.metrics  # the loss at beta = gamma = 1 is minus the sum of the two ELBOs
    torch.testing.assert_close(out.loss, -(m["conditional_elbo"] + m["aux_elbo"]))
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, *data.spec.shape)


def test_idvae_kl_to_the_conditional_prior_is_the_closed_form_gaussian_kl():
    data = factor_dataset()
    torch.manual_seed(0)
    model = create("idvae", data.spec, **IDVAE_TINY)
    batch = data.tensors(16)
    terms = model.terms(batch.x, batch.factors, torch.Generator().manual_seed(0))
    mu, logvar = model.posterior(batch.x)
    prior_mu, prior_logvar = model.conditional_prior(batch.factors.float() / 7)  # sizes 8: k / (8 - 1)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(prior_mu, (0.5 * prior_logvar).exp()))
    torch.testing.assert_close(terms["kl"], reference.sum(-1))
    std_normal = kl_divergence(Normal(prior_mu, (0.5 * prior_logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(terms["aux_kl"], std_normal)
    # log p(u|z') of the factors: Gaussian with standard deviation aux_std around the decoded mean
    z_prior = torch.randn(16, 3)
    expected = Normal(model.prior_decoder(z_prior), 0.1).log_prob(batch.factors.float() / 7).sum(-1)
    torch.testing.assert_close(model.aux_log_likelihood(batch.factors, z_prior), expected)


def test_idvae_detach_prior_keeps_the_main_kl_from_training_the_prior_encoder():
    data = factor_dataset()
    model = create("idvae", data.spec, **IDVAE_TINY, detach_prior=True)
    batch = data.tensors(16)
    model.terms(batch.x, batch.factors, None)["kl"].sum().backward()
    assert all(p.grad is None for p in model.prior_encoder.parameters())
    assert any(p.grad is not None for p in model.encoder.parameters())


def test_idvae_refuses_data_without_what_it_reads_in_one_line():
    unlabelled = image_dataset(n=8).spec
    labelled_only = image_dataset(n=8, labels=True).spec
    for spec, auxiliary, match in ((labelled_only, "factors", "known factors"), (unlabelled, "labels", "class labels")):
        with pytest.raises(DgmError, match=match) as err:
            create("idvae", spec, **IDVAE_TINY, auxiliary=auxiliary)
        assert "\n" not in str(err.value)


def test_idvae_conditions_and_encoders():
    data = factor_dataset()
    model = create("idvae", data.spec, **IDVAE_TINY).eval()
    g = torch.Generator().manual_seed(0)
    assert model.sample(3, torch.tensor([2, 5]), generator=g).shape == (3, *data.spec.shape)
    assert model.sample(2, torch.tensor([[0, 1], [7, 7]]), generator=g).shape == (2, *data.spec.shape)
    for bad in (torch.tensor([8, 0]), torch.tensor([1, 2, 3])):
        with pytest.raises(DgmError, match="factor"):
            model.sample(2, bad, generator=g)
    assert {"encode", "decode", "conditional_elbo"} <= capabilities(model)
    assert not {"elbo", "iwae_bound", "kl_per_dim"} & capabilities(model)  # those need u
    # the paper's encoder q(z|x,u): a conditional ELBO, and no code of x alone
    paper = create("idvae", data.spec, **IDVAE_TINY, encoder_input="x+u")
    assert "encode" not in capabilities(paper) and "reconstruct" not in capabilities(paper)
    batch = data.tensors(4)
    assert paper.conditional_elbo(batch.x, batch.factors).shape == (4,)
    labels = image_dataset(n=8, labels=True, representation="binary-static")
    by_class = create("idvae", labels.spec, **IDVAE_TINY, auxiliary="labels").eval()
    assert by_class.num_classes == 4 and by_class.sample(2, 3, generator=g).shape == (2, *labels.spec.shape)
