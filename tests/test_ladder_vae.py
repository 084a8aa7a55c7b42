"""Known answers for the ladder VAE (Sønderby et al. 2016, arXiv:1602.02282): the precision-weighted
combination is the normalised product of two Gaussians; the Monte Carlo and analytic KL terms agree
in expectation; a model whose decoder ignores z has every bound equal to the exact log p(x); the
bounds are ordered ELBO <= L_k <= L_{k'}; the logged terms add up to the ELBO."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import image_dataset
from dgm.data.core import Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.models.ladder_vae import LadderVAE, precision_weighted
from dgm.train.trainer import TrainConfig, Trainer


def binarized(n: int = 64):
    return image_dataset(n=n).with_representation("binary-dynamic")


def ladder(data=None, **config) -> LadderVAE:
    torch.manual_seed(0)
    spec = (data or binarized()).spec
    return create("ladder-vae", spec, **{"latent_dims": (4, 3), "hidden": (16,), **config})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_precision_weighting_is_the_normalised_product_of_the_two_gaussians():
    mu_hat = torch.tensor([0.7, -1.5, 3.0], dtype=torch.float64)
    logvar_hat = torch.tensor([0.2, -1.0, 1.5], dtype=torch.float64)
    mu_p = torch.tensor([-0.4, 2.0, 0.5], dtype=torch.float64)
    logvar_p = torch.tensor([1.1, 0.3, -0.7], dtype=torch.float64)
    mu_q, logvar_q = precision_weighted(mu_hat, logvar_hat, mu_p, logvar_p)
    # the mean and variance of N(mu_hat, s^2) N(mu_p, s_p^2) / Z by numerical integration on a grid
    z = torch.linspace(-20, 20, 400001, dtype=torch.float64)[:, None]  # (G, 1) against (3,)
    log_density = (-(z - mu_hat) ** 2 / (2 * logvar_hat.exp()) - (z - mu_p) ** 2 / (2 * logvar_p.exp()))
    weights = torch.softmax(log_density, 0)  # normalised on the grid, (G, 3)
    mean = (weights * z).sum(0)
    var = (weights * (z - mean) ** 2).sum(0)
    torch.testing.assert_close(mu_q, mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(logvar_q.exp(), var, rtol=1e-7, atol=0)
    # and the paper's eqs. 18-19 written with precisions
    precision = logvar_hat.neg().exp() + logvar_p.neg().exp()
    torch.testing.assert_close(logvar_q.exp(), 1 / precision)
    torch.testing.assert_close(mu_q, (mu_hat * logvar_hat.neg().exp() + mu_p * logvar_p.neg().exp()) / precision)


def test_precision_weighting_stays_finite_at_extreme_variances():
    mu_q, logvar_q = precision_weighted(torch.tensor([1.0, 1.0]), torch.tensor([-30.0, 20.0]),
                                        torch.tensor([-1.0, -1.0]), torch.tensor([20.0, -30.0]))
    torch.testing.assert_close(mu_q, torch.tensor([1.0, -1.0]))  # the far more precise term wins
    torch.testing.assert_close(logvar_q, torch.tensor([-30.0, -30.0]))


def test_fewer_than_two_layers_and_bad_sizes_are_refused_in_one_line():
    with pytest.raises(DgmError, match="at least 2 stochastic layers") as err:
        ladder(latent_dims=(8,))
    assert "\n" not in str(err.value)
    with pytest.raises(DgmError, match="one width per layer"):
        ladder(latent_dims=(8, 4), hidden=(16, 16, 16))
    for bad in ({"latent_dims": (8, 0)}, {"hidden": (16, -1)}, {"block_depth": 0}, {"kl_warmup_steps": -1}):
        with pytest.raises(DgmError, match=f"model.{next(iter(bad))}"):
            ladder(**bad)


def test_sample_encode_decode_shapes_and_capabilities():
    model = ladder(latent_dims=(5, 3, 2), hidden=(16, 8, 8))
    x = binarized().tensors(6).x
    assert {"elbo", "iwae_bound", "kl_per_dim", "kl_per_layer", "encode", "decode", "sample"} <= capabilities(model)
    s = model.sample(7, generator=seeded(1))
    assert s.shape == (7, 1, 8, 8) and ((s >= 0) & (s <= 1)).all()
    torch.testing.assert_close(s, model.sample(7, generator=seeded(1)), rtol=0, atol=0)
    z = model.encode(x)
    assert z.shape == (6, 5 + 3 + 2) and model.decode(z).shape == x.shape
    assert model.kl_per_dim(x).shape == (6, 10) and model.kl_per_layer(x).shape == (6, 3)
    assert model.elbo(x).shape == (6,) and model.iwae_bound(x, 5, chunk=2).shape == (6,)
    with pytest.raises(DgmError, match="every layer"):
        model.decode(z[:, :5])
    with pytest.raises(DgmError, match="unconditional"):
        model.sample(2, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("estimator", ["analytic", "sample"])
def test_kl_per_layer_and_reconstruction_add_up_to_the_elbo_with_the_same_noise(estimator):
    model = ladder(latent_dims=(4, 3, 2), hidden=(16,), kl_estimator=estimator, batch_norm=True)
    data = binarized()
    model.loss(data.tensors(32), "model", Progress()).loss.backward()  # moves nothing, but uses batch stats
    model.train()
    x = data.tensors(12).x
    elbo = model.elbo(x, generator=seeded(3))
    kl = model.kl_per_layer(x, generator=seeded(3))  # (B, L)
    assert model.training  # the bounds switch to eval mode and back
    model.eval()
    rec, kls = model.elbo_terms(x, generator=seeded(3))
    torch.testing.assert_close(elbo, rec - kl.sum(-1))
    torch.testing.assert_close(kl, torch.stack([t.sum(-1) for t in kls], -1))
    # the training loss logs the same terms, and the KL of each layer (kl1 ... kl3) sums to kl
    out = model.loss(data.tensors(12), "model", Progress(generator=seeded(3)))
    m = out.metrics
    torch.testing.assert_close(m["kl"], m["kl1"] + m["kl2"] + m["kl3"])
    torch.testing.assert_close(m["elbo"], m["reconstruction"] - m["kl"])
    if estimator == "analytic":  # kl_per_dim is the analytic estimator, split by unit
        dims = model.kl_per_dim(x, generator=seeded(3))
        torch.testing.assert_close(dims.split((4, 3, 2), -1)[1].sum(-1), kl[:, 1])
    assert (model.kl_per_dim(x) >= 0).all()


def test_bounds_and_codes_use_running_statistics_of_batch_norm():
    model = ladder(batch_norm=True)
    model.loss(binarized().tensors(32), "model", Progress())  # train mode: updates the running stats
    model.train()
    x = binarized().tensors(8).x
    torch.testing.assert_close(model.encode(x)[:3], model.encode(x[:3]))  # no batch statistics
    torch.testing.assert_close(model.iwae_bound(x[:1], 4, generator=seeded(0)),
                               model.iwae_bound(x[:1], 4, generator=seeded(0)))


def test_monte_carlo_kl_of_a_layer_averages_to_the_analytic_kl():
    """With the same top-down samples, log q(z_i|.) - log p(z_i|z_{i+1}) at z_i ~ q has the analytic
    KL(q(z_i|z_{i+1},x) || p(z_i|z_{i+1})) as its conditional mean; the top layer's is analytic in both."""
    model = ladder(latent_dims=(4, 3, 2), hidden=(16,), batch_norm=False)  # one example repeated: no batch statistics
    with torch.no_grad():  # a posterior far from the prior, so the KL terms are O(1) nats
        for head in model.up_heads:
            head.bias.normal_(0, 1.0, generator=seeded(7))
    x = binarized().tensors(1).x.expand(20000, -1, -1, -1)
    with torch.no_grad():
        _, sample = model.elbo_terms(x, generator=seeded(5), estimator="sample")
        _, analytic = model.elbo_terms(x, generator=seeded(5), estimator="analytic")
    for i, (s, a) in enumerate(zip(sample, analytic)):
        diff = s.sum(-1) - a.sum(-1)  # (N,) zero-mean given the layers above
        assert a.sum(-1).mean() > 0.1
        assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff)) + 1e-6, (i, diff.mean(), diff.std())
    torch.testing.assert_close(sample[-1], analytic[-1], rtol=0, atol=0)
    # the top layer's is KL(N(mu^_L, s^_L^2) || N(0, I)) of the bottom-up head, by hand
    mu, logvar = model.bottom_up(x[:1])[-1]
    torch.testing.assert_close(analytic[-1][0], 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)[0])


def test_a_decoder_that_ignores_z_makes_every_bound_the_exact_log_likelihood():
    """q(z|x) = p(z) (bottom-up terms of vanishing precision, standard normal heads) and p(x|z_1) =
    Bernoulli(sigmoid(b)) for every z: log w = log p(x) for every sample, so ELBO = L_k = log p(x)."""
    model = ladder(latent_dims=(4, 3), hidden=(16,))
    b = torch.linspace(-2, 2, 64)
    with torch.no_grad():
        for head in [*model.up_heads, *(d[-1] for d in model.down)]:
            head.weight.zero_()
            head.bias.zero_()
        for head in model.up_heads[:-1]:  # sigma^_i^2 = e^20 below the top: the prior term decides
            head.bias[head.out_features // 2:] = 20.0
        last = model.decoder[-2]  # the Linear before Unflatten
        last.weight.zero_()
        last.bias.copy_(b)
    x = binarized().tensors(16).x
    log_px = -F.binary_cross_entropy_with_logits(b.expand(16, -1), x.flatten(1), reduction="none").sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(model.elbo(x, generator=seeded(0)), log_px, rtol=0, atol=1e-4)
        torch.testing.assert_close(model.iwae_bound(x, 9, chunk=4, generator=seeded(0)), log_px, rtol=0, atol=1e-4)
        assert model.kl_per_layer(x).abs().max() < 1e-6


def test_training_objective_has_warmup_and_free_bits():
    data = binarized()
    model = ladder(kl_warmup_steps=10)
    batch = data.tensors(16)
    out = model.loss(batch, "model", Progress(step=1, generator=seeded(2)))
    m = out.metrics
    torch.testing.assert_close(m["beta"], torch.tensor(0.2))
    torch.testing.assert_close(out.loss, -m["reconstruction"] + 0.2 * m["kl"])
    done = model.loss(batch, "model", Progress(step=50, generator=seeded(2)))
    torch.testing.assert_close(done.loss, -done.metrics["elbo"])
    free = ladder(kl_warmup_steps=0, free_bits=5.0)  # every unit's KL is below 5 nats at initialisation
    out = free.loss(batch, "model", Progress(generator=seeded(2)))
    assert out.metrics["kl"] < 5.0
    torch.testing.assert_close(out.loss, -out.metrics["reconstruction"] + 5.0 * (4 + 3))


def curved_data(n: int = 512) -> Dataset:
    """16-D points near a 3-D curved manifold, x = tanh(W z) + 0.1 noise: data a latent-variable
    model must use its latents for (so, unlike tiny binarized images, neither layer collapses)."""
    g = seeded(0)
    W = torch.randn(3, 16, generator=g)
    x = torch.tanh(torch.randn(n, 3, generator=g) @ W) + 0.1 * torch.randn(n, 16, generator=g)
    return Dataset(x, None, DataSpec("curved", (16,), "continuous", levels=None), train=True)


def test_iwae_bound_is_above_the_elbo_and_rises_with_k_after_training():
    data = curved_data()
    model = ladder(data, latent_dims=(4, 2), hidden=(32, 16), kl_warmup_steps=50, likelihood="gaussian")
    Trainer(model, data, TrainConfig(epochs=30, batch_size=32, lr=3e-3, progress=False, device="cpu",
                                     sample_every=0)).fit()
    x = data.tensors(256).x.repeat(8, 1)  # 2048 rows: the standard errors below are small
    with torch.no_grad():
        assert (model.kl_per_layer(x).mean(0) > 0.1).all()  # both layers in use
        elbo = model.elbo(x, generator=seeded(0))
        bounds = {k: model.iwae_bound(x, k, chunk=50, generator=seeded(10 + k)) for k in (1, 10, 100)}

    def z_score(d: torch.Tensor) -> float:
        return (d.mean() / (d.std() / math.sqrt(len(d)))).item()

    # ELBO <= L_10 <= L_100 on average, each step by many standard errors (seeded: 12, 14 and 7 of them)
    assert z_score(bounds[100] - elbo) > 5
    assert z_score(bounds[10] - bounds[1]) > 4 and z_score(bounds[100] - bounds[10]) > 4
    # L_1 is the same bound as the ELBO (its KL estimated at the sample): equal on average
    assert abs(z_score(bounds[1] - elbo)) < 4


def test_kl_per_layer_metric_gives_one_result_per_layer():
    import dgm
    from dgm.eval.core import METRICS

    assert METRICS["kl_per_layer"].default
    model = ladder(latent_dims=(4, 3, 2), hidden=(16,))
    results = dgm.evaluate(model, binarized(40), ["kl_per_layer"], progress=False)
    assert [r.metric for r in results] == ["kl_layer1", "kl_layer2", "kl_layer3"]
    assert all(r.unit == "nats" and r.value >= 0 and "analytic" in r.qualifier for r in results)
    assert all(r.split == "train, n=40" for r in results)
    # each row says it is a term of the ELBO as the model estimates it; posterior_collapse's KL (from
    # kl_per_dim, analytic given one top-down sample even with the sample estimator) says so too
    sampled = ladder(latent_dims=(4, 3), hidden=(16,), kl_estimator="sample")
    (row, *_), collapse = (dgm.evaluate(sampled, binarized(40), [name], progress=False)
                           for name in ("kl_per_layer", "posterior_collapse"))
    assert "log q - log p at the sample" in row.qualifier
    assert collapse[0].metric == "kl" and "analytic given one top-down sample" in collapse[0].qualifier


def test_a_batch_of_one_example_is_refused_in_one_line_when_batch_norm_needs_two():
    model = ladder(hidden=(16,))  # batch norm is the default, as in the paper
    with pytest.raises(DgmError, match="at least 2 examples per training batch, got 1: .*batch_norm=false"):
        model.loss(binarized().tensors(1), "model", Progress())
    assert torch.isfinite(ladder(hidden=(16,), batch_norm=False).loss(binarized().tensors(1), "model", Progress()).loss)
