"""The VAE with an IAF posterior (dgm.models.iaf_vae): log q(z_T|x) against the change of variables
with an autograd Jacobian, the gated step against autograd, IWAE k=1 = the ELBO, and training."""
from __future__ import annotations

import torch

import dgm
from dgm.models.base import Progress
from dgm.nn.distributions import normal_log_prob
from dgm.nn.flows import GatedAffine


def digits(n: int = 16) -> dgm.data.Dataset:
    return dgm.data.load("digits", "train", representation="binary-static").subset(n)


def model(**settings: object) -> dgm.models.base.GenerativeModel:
    torch.manual_seed(0)
    m = dgm.create("iaf-vae", digits().spec, **{"latent_dim": 4, "hidden": (32,), "iaf_hidden": (16,),
                                                "context_dim": 5, **settings}).double()
    for p in m.parameters():  # away from the identity at which every step starts
        p.data.add_(0.3 * torch.randn_like(p))
    return m


def test_the_gated_step_inverts_and_its_log_derivative_is_autograd_s() -> None:
    step = GatedAffine(gate_bias=1.5)
    x = torch.randn(6, dtype=torch.double, requires_grad=True)
    params = torch.randn(6, 2, dtype=torch.double)
    y, log_derivative = step.forward(x, params)
    back, inverse_log = step.inverse(y, params)
    assert torch.allclose(back, x) and torch.allclose(inverse_log, -log_derivative)
    for i in range(6):  # elementwise: dy_i / dx_i
        grad, = torch.autograd.grad(y[i], x, retain_graph=True)
        assert torch.isclose(grad[i].log(), log_derivative[i])


def test_log_q_is_the_change_of_variables_of_the_gaussian_draw() -> None:
    """log q(z_T|x) = log N(z_0; mu, sigma^2) - log |det dz_T / dz_0|, the determinant by autograd."""
    m = model(iaf_steps=3)
    x = digits(3).tensors().x.double()
    z, log_q = m.posterior_draws(x, 2, generator=torch.Generator().manual_seed(7))  # (2, 3, 4) each
    mu, logvar, h = m.encoded(x)
    eps = torch.randn((2 * 3, 4), generator=torch.Generator().manual_seed(7), dtype=torch.double).view(2, 3, 4)
    z0 = mu + eps * (0.5 * logvar).exp()
    for s in range(2):
        for b in range(3):
            def flow(v: torch.Tensor) -> torch.Tensor:
                return m.refine(v[None], h[b:b + 1])[0][0]

            jacobian = torch.autograd.functional.jacobian(flow, z0[s, b])
            expected = normal_log_prob(z0[s, b], mu[b], logvar[b]).sum() - torch.linalg.slogdet(jacobian).logabsdet
            assert torch.allclose(flow(z0[s, b]), z[s, b])
            assert torch.isclose(log_q[s, b].sum(), expected, atol=1e-10)


def test_each_step_is_autoregressive_in_its_own_order() -> None:
    """Step t's Jacobian is triangular in its ordering (natural, then reversed)."""
    m = model(iaf_steps=2)
    _, _, h = m.encoded(digits(1).tensors().x.double())
    z0 = torch.randn(4, dtype=torch.double)
    for t, step in enumerate(m.steps):
        jacobian = torch.autograd.functional.jacobian(lambda v: step.forward_per_dim(v[None], h)[0][0], z0)
        strict = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)  # dz_i / dz_j for j > i
        zero = strict if t % 2 == 0 else strict.T
        assert torch.all(jacobian[zero] == 0) and torch.all(jacobian.diagonal() > 0)


def test_the_one_sample_iwae_bound_is_the_elbo_and_the_unit_kls_sum_to_it() -> None:
    m = model()
    x = digits(8).tensors().x.double()
    torch.manual_seed(3)
    elbo = m.elbo(x)
    torch.manual_seed(3)
    assert torch.allclose(m.iwae_bound(x, 1), elbo)
    torch.manual_seed(3)
    z, kl = m.draw_with_kl(x)
    torch.manual_seed(3)
    draws, log_q = m.posterior_draws(x, 1)
    assert torch.allclose(kl.sum(-1), (log_q[0] - normal_log_prob(draws[0])).sum(-1))
    assert torch.allclose(m.log_likelihood(x, z) - kl.sum(-1), elbo)


def test_it_trains_and_its_bound_improves() -> None:
    data = dgm.data.load("digits", "train", representation="binary-dynamic")
    torch.manual_seed(0)
    m = dgm.create("iaf-vae", data.spec, latent_dim=8, hidden=(64,), iaf_hidden=(32,))
    x = data.tensors(256).x
    before = m.iwae_bound(x, 8).mean().item()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for step in range(60):
        batch = data.tensors(256)
        loss = m.loss(batch, "model", Progress(step=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.iwae_bound(x, 8).mean().item() > before + 5
