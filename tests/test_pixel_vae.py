"""The VAE with a PixelCNN decoder (dgm.models.pixel_vae): the decoder is causal in raster order,
p(x|z) sums to one over every image (exact enumeration), and it trains."""
from __future__ import annotations

import itertools

import pytest
import torch

import dgm
from dgm.errors import DgmError
from dgm.models.base import Progress
from conftest import image_dataset


def binary_images(size: int, n: int = 32) -> dgm.data.Dataset:
    return image_dataset(n=n, size=size, representation="binary-static")


def model(size: int = 6, **settings: object) -> dgm.models.base.GenerativeModel:
    torch.manual_seed(0)
    m = dgm.create("pixel-vae", binary_images(size).spec, **{"latent_dim": 3, "hidden": (16,), "pixel_width": 8,
                                                             "pixel_layers": 3, **settings}).double()
    for p in m.parameters():  # a generic decoder, not the one at initialisation
        p.data.add_(0.2 * torch.randn_like(p))
    return m


def test_each_pixel_s_parameters_see_only_the_pixels_before_it() -> None:
    m = model()
    x = binary_images(6).tensors(2).x.double().requires_grad_()
    z = torch.randn(2, 3, dtype=torch.double)
    params = m.pixel_params(x, z)  # (2, 1, 6, 6)
    for i, j in [(0, 0), (2, 3), (5, 5), (3, 0)]:
        grad, = torch.autograd.grad(params[0, 0, i, j], x, retain_graph=True)
        later = torch.zeros(6, 6, dtype=torch.bool)
        later.view(-1)[i * 6 + j:] = True  # this pixel and every one after it in raster order
        assert torch.all(grad[0, 0][later] == 0)
        assert torch.all(grad[1] == 0)  # nor the other example
        if i * 6 + j > 0:
            assert grad[0, 0][~later].abs().sum() > 0  # and it does see the earlier ones


def test_p_x_given_z_sums_to_one_over_every_image() -> None:
    """All 2^9 binary 3x3 images, one z: sum_x p(x|z) = 1 (the conditionals chain to a distribution)."""
    m = model(size=3, kernel_size=3)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.double).view(-1, 1, 3, 3)
    z = torch.randn(1, 3, dtype=torch.double).expand(len(images), 3)
    total = torch.logsumexp(m.log_likelihood(images, z), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-9)


def test_draws_follow_the_decoder_and_bad_settings_are_refused() -> None:
    m = model(size=4).float()
    x = m.sample(8, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 4, 4) and set(x.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(DgmError, match="sample_mean=false"):
        dgm.create("pixel-vae", binary_images(4).spec, sample_mean=True)
    with pytest.raises(DgmError, match="odd"):
        dgm.create("pixel-vae", binary_images(4).spec, kernel_size=4)


def test_it_trains_and_its_bound_improves() -> None:
    data = dgm.data.load("digits", "train", representation="binary-dynamic")
    torch.manual_seed(0)
    m = dgm.create("pixel-vae", data.spec, latent_dim=8, hidden=(64,), pixel_width=16, pixel_layers=3)
    x = data.tensors(256).x
    before = m.iwae_bound(x, 4).mean().item()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for step in range(30):
        loss = m.loss(data.tensors(128), "model", Progress(step=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.iwae_bound(x, 4).mean().item() > before + 5
