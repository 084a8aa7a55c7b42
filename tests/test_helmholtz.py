"""Known answers for the Helmholtz machines (``ddc-hm``, ``rws``) on a sigmoid belief net small
enough to enumerate: 3 + 2 binary latents over 8 binary pixels (32 latent configurations)."""
from __future__ import annotations

import itertools

import pytest
import torch

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models.helmholtz import exact_posterior

SPEC = DataSpec("toy", (8,), "binary-dynamic", levels=2)
DIMS = (3, 2)


def toy(name: str, scale: float = 2.0, **config):
    """``name`` over SPEC with its generative weights drawn N(0, scale^2): strong couplings, so the
    posterior is far from the prior and explains away."""
    torch.manual_seed(0)
    model = create(name, SPEC, latent_dims=DIMS, **config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.generative.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def flat_grad(loss, params) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def test_ddc_posterior_means_match_enumeration_after_sleep():
    model = toy("ddc-hm", features=50, hidden=(64, 64), sleep_samples=128)
    sleep = model.phases()[0]
    opt = torch.optim.Adam(sleep.parameters, 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        loss = model.loss(None, sleep.name, Progress(generator=g)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, _ = model.dream(500, torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, exact = exact_posterior(model.generative, x)
        ddc = model.posterior_mean(x)
    error = (ddc - exact).abs().mean()
    baseline = (exact - exact.mean(0)).abs().mean()  # the best input-blind guess of the means
    assert error < 0.05 and error < baseline / 3, (error, baseline)


def exact_ddc(model, x: torch.Tensor) -> torch.Tensor:
    """E_{p(z|x)}[T(z)] by enumeration, ``(B, num_features)``."""
    configs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=sum(DIMS))))
    zs = list(configs.split(list(DIMS), -1))
    B, M = len(x), len(configs)
    log_joint = model.generative.log_joint(x.repeat_interleave(M, 0), [z.repeat(B, 1) for z in zs]).view(B, M)
    return log_joint.softmax(-1) @ model.features(zs)


def test_ddc_wake_gradient_from_the_exact_code_is_the_exact_gradient(monkeypatch):
    """With r(x) the exact posterior expectations, the wake step's readout gives grad log p(x):
    the features span every function of the 32 configurations, so the linear readout is exact up
    to the Monte Carlo dreams."""
    model = toy("ddc-hm", features=60, readout_samples=4096, ridge=1e-4)
    x, _ = model.dream(64, torch.Generator().manual_seed(2))
    params = list(model.generative.parameters())
    exact = flat_grad(-exact_posterior(model.generative, x)[0].mean(), params)
    monkeypatch.setattr(model, "ddc", lambda x: exact_ddc(model, x))
    ddc = flat_grad(model.wake_loss(x, torch.Generator().manual_seed(3)).loss, params)
    assert (ddc - exact).norm() < 0.05 * exact.norm()
    # the readout of the latent terms carries most of it: the data term x . eta(E[z_1|x]) alone is far off
    m1 = exact_ddc(model, x)[:, :DIMS[0]]
    data_only = flat_grad(-(x * model.generative.eta(m1)).sum(-1).mean(), params)
    assert (data_only - exact).norm() > 0.5 * exact.norm()


def all_configs(B: int) -> list[torch.Tensor]:
    """The 32 latent configurations, repeated for B examples (example-major), ``[z_1, z_2]``."""
    configs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=sum(DIMS))))
    return [z.repeat(B, 1) for z in configs.split(list(DIMS), -1)]


def test_rws_proposal_is_normalised_and_log_weights_are_the_density_ratio():
    model = toy("rws", hidden=(8,))
    x, _ = model.dream(4, torch.Generator().manual_seed(2))
    M = 2 ** sum(DIMS)
    with torch.no_grad():
        log_q = model.log_q(x.repeat_interleave(M, 0), all_configs(4)).view(4, M)
        torch.testing.assert_close(log_q.logsumexp(-1), torch.zeros(4), atol=1e-5, rtol=0)
        g = torch.Generator().manual_seed(5)
        zs, log_q_drawn = model.propose(x, 3, generator=g)
        torch.testing.assert_close(log_q_drawn, model.log_q(x.repeat(3, 1), zs))
        log_w = model.log_weights(x, 3, generator=torch.Generator().manual_seed(5))
        direct = model.generative.log_joint(x.repeat(3, 1), zs) - log_q_drawn
        torch.testing.assert_close(log_w, direct.view(3, 4))


def test_rws_wake_gradient_and_bound_converge_to_the_exact_ones():
    """With many proposals the self-normalised wake-p gradient (RWS eq. 6) is grad log p(x), and the
    importance-sampled log-likelihood is log p(x), both from enumeration."""
    model = toy("rws", samples=20000)
    x, _ = model.dream(8, torch.Generator().manual_seed(2))
    params = list(model.generative.parameters())
    exact_log_px = exact_posterior(model.generative, x)[0]
    exact = flat_grad(-exact_log_px.mean(), params)
    out = model.loss(Batch(x), "model", Progress(generator=torch.Generator().manual_seed(4)))
    rws = flat_grad(out.loss, params)
    assert (rws - exact).norm() < 0.05 * exact.norm()
    bound = model.iwae_bound(x, 20000, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(bound, exact_log_px, atol=0.06, rtol=0)  # Monte Carlo error ~0.02 at this k


def test_rws_recognition_phase_moves_q_only_and_sleep_fits_dreams():
    model = toy("rws", q_update="sleep")
    out = model.loss(Batch(torch.zeros(4, 8)), "recognition", Progress(generator=torch.Generator().manual_seed(0)))
    out.loss.backward()
    assert all(p.grad is None for p in model.generative.parameters())
    assert all(p.grad is not None for p in model.up.parameters())
    assert "sleep_nll" in out.metrics and "iwae" not in out.metrics


def test_ddc_bound_approaches_log_px_and_features_hold_gaussian_squares(monkeypatch):
    """The factorial proposal built from the posterior means gives log p(x) with many draws."""
    model = toy("ddc-hm", features=20)
    monkeypatch.setattr(model, "ddc", lambda x: exact_ddc(model, x))
    x, _ = model.dream(8, torch.Generator().manual_seed(2))
    exact_log_px = exact_posterior(model.generative, x)[0]
    bound = model.iwae_bound(x, 20000, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(bound, exact_log_px, atol=0.06, rtol=0)
    assert (model.iwae_bound(x, 1000, generator=torch.Generator().manual_seed(6)).mean()
            <= model.iwae_bound(x, 20000, generator=torch.Generator().manual_seed(7)).mean() + 0.02)
    mixed = create("ddc-hm", SPEC, latent_dims=DIMS, latents="mixed", features=4)
    zs = [torch.randn(5, 3), torch.ones(5, 2)]
    T = mixed.features(zs)
    assert T.shape == (5, 3 + 2 + 3 + 4)  # z, squares of the 3 Gaussian z_1 units, random features
    torch.testing.assert_close(T[:, 5:8], zs[0] ** 2)


def test_continuous_data_is_refused():
    with pytest.raises(DgmError, match="binary data"):
        create("rws", DataSpec("points", (2,), "continuous", levels=None))
