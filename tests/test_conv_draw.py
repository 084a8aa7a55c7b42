"""Known answers of convolutional DRAW (Gregor et al. 2016): the per-step KL of its diagonal Gaussians
against torch.distributions, conceptual compression keeping all T steps against the full
reconstruction, and the rates of keeping k steps against the per-step KLs."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from conftest import image_dataset
from dgm.errors import DgmError
from dgm.models import create

TINY = {"steps": 3, "latent_channels": 2, "hidden": 4, "width": 4}


@pytest.fixture
def model_and_x():
    data = image_dataset(n=16)
    torch.manual_seed(0)
    model = create("conv-draw", data.with_representation("binary-dynamic").spec, **TINY).eval()
    return model, data.with_representation("binary-dynamic").tensors(6).x


def test_step_kl_is_the_closed_form_of_torch_distributions(model_and_x):
    model, x = model_and_x
    with torch.no_grad():
        out = model.run(x, stochastic=False, keep_params=True)
    assert out.kl.shape == (6, 3) and len(out.posteriors) == 3
    for t, ((mq, lq), (mp, lp)) in enumerate(zip(out.posteriors, out.priors)):
        expected = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).flatten(1).sum(1)
        torch.testing.assert_close(out.kl[:, t], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(out.priors[0][0], out.priors[1][0])  # a learned prior per step, not N(0, I)


def test_keeping_every_step_is_the_full_reconstruction(model_and_x):
    model, x = model_and_x
    with torch.no_grad():
        full = model.reconstruct(x)
        kept = model.conceptual_reconstructions(x, keep=3)
        fewer = model.conceptual_reconstructions(x, keep=1)
    torch.testing.assert_close(kept, full, rtol=0, atol=0)
    assert full.shape == x.shape and not torch.allclose(fewer, full)
    with pytest.raises(DgmError, match="keep must be in 0..3"):
        model.conceptual_reconstructions(x, keep=4)


def test_rates_are_the_cumulative_kls_in_bits_and_grow_with_k(model_and_x):
    model, x = model_and_x
    with torch.no_grad():
        rates = model.compression_rates(x)
        kl = model.step_kl(x)
    assert rates.shape == (6, 3)
    for k in range(1, 4):
        torch.testing.assert_close(rates[:, k - 1], kl[:, :k].sum(1) / math.log(2))
    assert (rates.diff(dim=1) >= 0).all()
    torch.testing.assert_close(model.code_bits(x), rates[:, -1])


def test_samples_and_the_report_figure(model_and_x):
    model, x = model_and_x
    assert model.elbo(x).shape == (6,) and (model.step_kl(x) >= 0).all()
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, *x.shape[1:])
    (title, images, per_row, caption), = model.report_figures(generator=torch.Generator().manual_seed(0))
    assert images.shape == (3 * 8, *x.shape[1:]) and per_row == 8 and "keeps" in caption
