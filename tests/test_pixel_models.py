"""Known answers for the pixel-by-pixel models (dgm.models.pixel: PixelCNN, Gated PixelCNN, PixelRNN,
the image transformer): exact normalisation by enumerating every image of tiny specs, the
autoregressive property of the whole model by autograd, ancestral sampling that matches the model's
own probabilities, cached = sequential sampling under one seed, the smoothed density of the
Langevin sampler integrating to 1, the annealed Langevin loop on a Gaussian, completion that keeps
the known pixels, and the one-line refusals."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models import langevin
from dgm.models.pixel import PixelModel, is_raster_prefix
from dgm.models.samplers import Inpaint, SuperResolution

#: small settings of each pixel model
SMALL = {
    "pixelcnn": {"width": 12, "layers": 2},
    "gated-pixelcnn": {"width": 12, "layers": 3, "kernel_size": 3},
    "pixelrnn": {"width": 12, "layers": 2},
    "image-transformer": {"width": 16, "depth": 2, "heads": 2},
}
PIXEL_MODELS = sorted(SMALL)

BINARY_3x3 = DataSpec("tiny", (1, 3, 3), "binary-dynamic", levels=2, num_classes=2)  # 512 images
LEVELS_RGB = DataSpec("tiny-rgb", (3, 1, 2), "unit", levels=3, num_classes=2)  # 3^6 = 729 images


def build(name: str, spec: DataSpec, **settings):
    torch.manual_seed(0)
    model = create(name, spec, **{**SMALL[name], **settings}).double().eval()
    with torch.no_grad():  # weights far from initialisation, so the distribution is far from uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def every_image(spec: DataSpec) -> torch.Tensor:
    K = 2 if spec.representation == "binary-dynamic" else spec.levels
    values = torch.tensor(list(itertools.product(range(K), repeat=math.prod(spec.shape))), dtype=torch.float64)
    values = values if K == 2 else values / (K - 1)
    return values.view(-1, *spec.shape)


@pytest.mark.parametrize("name", PIXEL_MODELS)
@pytest.mark.parametrize("spec, settings", [(BINARY_3x3, {}), (LEVELS_RGB, {"likelihood": "categorical"}),
                                            (LEVELS_RGB, {"likelihood": "logistic-mixture", "conditional": True})],
                         ids=["binary-3x3", "rgb-categorical", "rgb-mixture-conditional"])
def test_probabilities_of_every_image_sum_to_one(name, spec, settings):
    model = build(name, spec, **settings)
    images = every_image(spec)
    with torch.no_grad():
        log_p = model.log_prob(images)
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-9
    assert log_p.exp().max() > 3 / len(images)  # not the uniform distribution: the test has teeth


@pytest.mark.parametrize("name", PIXEL_MODELS)
@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 2, 2)])
def test_every_conditional_sees_only_earlier_subpixels(name, shape):
    """d params(subpixel s) / d input(subpixel t) is exactly 0 unless t comes before s (raster
    order, channel innermost), and nonzero for some earlier t."""
    spec = DataSpec("tiny", shape, "unit", levels=5)
    model = build(name, spec, likelihood="categorical")
    C, H, W = shape
    P = model.likelihood.params_per_dim

    def params(v):  # (C, H, W) -> the P params of each subpixel in order, (D, P)
        out = model.params(v.view(1, *shape))[0].view(C, P, H, W)
        return out.permute(2, 3, 0, 1).reshape(-1, P)

    # summed over 16 random inputs: at one input a ReLU may close a path that exists
    dep = sum(torch.autograd.functional.jacobian(params, torch.randn(*shape, dtype=torch.float64)).abs().sum(1)
              for _ in range(16))  # (D, C, H, W)
    dep = dep.permute(0, 2, 3, 1).reshape(C * H * W, -1)  # (D out, D in), both in order
    order = torch.arange(C * H * W)
    assert (dep[order[:, None] <= order[None, :]] == 0).all()
    assert (dep[1:].sum(1) > 0).all()  # every subpixel after the first depends on something before it


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_sequential_samples_follow_the_models_probabilities(name):
    spec = DataSpec("tiny", (1, 2, 2), "binary-dynamic", levels=2)
    model = build(name, spec)
    images = every_image(spec)
    with torch.no_grad():
        p = model.log_prob(images).exp()
    x = model.sample(20000, generator=torch.Generator().manual_seed(0), sampler="sequential")
    index = (x.view(-1, 4) * torch.tensor([8, 4, 2, 1], dtype=x.dtype)).sum(1).long()
    freq = torch.bincount(index, minlength=16).double() / len(x)
    assert (freq - p).abs().max() < 0.015


def test_cached_sampling_equals_sequential_sampling():
    for spec in (DataSpec("tiny", (1, 3, 4), "unit", levels=17), LEVELS_RGB):
        model = build("image-transformer", spec)
        cached = model.sample(6, generator=torch.Generator().manual_seed(3), sampler="cached")
        plain = model.sample(6, generator=torch.Generator().manual_seed(3), sampler="sequential")
        assert torch.equal(cached, plain)
        assert len(cached.unique()) > 2


@pytest.mark.parametrize("name", ["gated-pixelcnn", "image-transformer"])
def test_smoothed_density_integrates_to_one(name):
    """p_sigma(x~) = prod_i sum_k P(v_k | x~_<i) N(x~_i; v_k, sigma^2) over a 1x1x2 image, by quadrature."""
    spec = DataSpec("tiny", (1, 1, 2), "unit", levels=4)
    model = build(name, spec, noise_levels=3, sigma_max=0.5, sigma_min=0.1)
    grid = torch.arange(-4.0, 4.0, 0.02, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    noisy = torch.stack([a.flatten(), b.flatten()], 1).view(-1, 1, 1, 2)
    for level in (1, 3):
        with torch.no_grad():
            density = torch.cat([model.smoothed_log_density(chunk, None, level).exp() for chunk in noisy.split(40000)])
        assert abs(density.sum().item() * 0.02 ** 2 - 1.0) < 1e-4


def test_annealed_langevin_samples_a_gaussian():
    """With the exact score of N(mu, s^2 + sigma^2) (a Gaussian smoothed at each level), a chain long
    enough to mix at the last levels ends at N(mu, s^2 + sigma_L^2); with too few steps it keeps
    variance from the earlier, wider levels (which is why the sampler anneals slowly)."""
    mu, s = 0.7, 0.05
    sigmas = torch.logspace(0, -2, 8).tolist()

    def score(x, level):
        return -(x - mu) / (s ** 2 + sigmas[level - 1] ** 2)

    def chain(steps):
        return langevin.annealed(score, torch.zeros(20000, dtype=torch.float64), sigmas, steps=steps, step_size=2e-5,
                                 generator=torch.Generator().manual_seed(0))

    x = chain(1000)
    assert abs(x.mean().item() - mu) < 0.002
    assert abs(x.std().item() / math.hypot(s, sigmas[-1]) - 1) < 0.01
    assert chain(20).std().item() / math.hypot(s, sigmas[-1]) - 1 > 0.05


@pytest.mark.parametrize("name", ["gated-pixelcnn", "pixelrnn"])
def test_langevin_runs_and_completion_keeps_the_known_pixels(name):
    spec = DataSpec("tiny", (1, 6, 4), "unit", levels=17)
    model = build(name, spec, noise_levels=3).float()
    on_grid = lambda x: ((x * 16 - (x * 16).round()).abs() < 1e-5).all()  # noqa: E731
    x = model.sample(3, generator=torch.Generator().manual_seed(0), sampler="langevin", steps=3)
    assert x.shape == (3, 1, 6, 4) and on_grid(x)
    image = torch.rand(3, 1, 6, 4).mul(16).round().div(16)
    keep = torch.rand(3, 1, 6, 4) < 0.5  # any mask: Langevin
    done = model.restore(Inpaint(image, keep), generator=torch.Generator().manual_seed(1), steps=2)
    assert torch.equal(done[keep], image[keep])
    assert not torch.equal(done, image)
    top = torch.zeros(1, 1, 6, 4, dtype=torch.bool)
    top[..., :3, :] = True  # the top given: exact sequential completion
    done = model.restore(Inpaint(image, top.expand(3, -1, -1, -1)), sampler="sequential",
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(done[..., :3, :], image[..., :3, :])
    upscaled = model.restore(SuperResolution(torch.nn.functional.avg_pool2d(image, 2), 2), steps=2,
                             generator=torch.Generator().manual_seed(2))
    assert upscaled.shape == image.shape and on_grid(upscaled)


def test_completion_without_noise_levels_needs_the_top_given():
    spec = DataSpec("tiny", (1, 4, 4), "unit", levels=17)
    model = build("pixelcnn", spec)
    image = torch.rand(2, 1, 4, 4).mul(16).round().div(16)
    centre = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    centre[..., 1:3, 1:3] = False
    with pytest.raises(DgmError, match="langevin"):
        model.restore(Inpaint(image, centre))
    with pytest.raises(DgmError, match="noise_levels"):
        model.sample(2, sampler="langevin")
    with pytest.raises(DgmError, match="1, 4, 4"):
        model.restore(Inpaint(torch.rand(2, 1, 5, 4), torch.ones(2, 1, 5, 4, dtype=torch.bool)))
    assert is_raster_prefix(~centre | True) and not is_raster_prefix(centre)


def test_conditional_models_refuse_unknown_classes_and_marginalise_the_class():
    spec = DataSpec("tiny", (1, 3, 3), "binary-dynamic", levels=2, num_classes=3)
    model = build("gated-pixelcnn", spec, conditional=True)
    with pytest.raises(DgmError, match="classes 0..2"):
        model.sample(2, condition=3)
    images = every_image(spec)[:7]
    with torch.no_grad():
        per_class = torch.stack([model.likelihood.log_prob(model.params(model.to_signed(images),
                                                                        torch.full((7,), y)), images) for y in range(3)])
        torch.testing.assert_close(model.log_prob(images), per_class.logsumexp(0) - math.log(3))
    x = model.sample(4, condition=torch.tensor(1), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 3, 3)
    unconditional = build("pixelcnn", spec)
    with pytest.raises(DgmError, match="unconditional"):
        unconditional.sample(2, condition=1)


def test_refusals():
    with pytest.raises(DgmError, match="max_length=3072"):
        create("image-transformer", DataSpec("rgb", (3, 32, 32), "unit", levels=256))
    with pytest.raises(DgmError, match="continuous"):
        create("gated-pixelcnn", DataSpec("toy", (2,), "continuous", levels=None))
    with pytest.raises(DgmError, match="labelled data"):
        create("pixelcnn", DataSpec("x", (1, 4, 4), "unit", levels=17), conditional=True)
    with pytest.raises(DgmError, match="sigma_min"):
        create("pixelcnn", DataSpec("x", (1, 4, 4), "unit", levels=17), noise_levels=2, sigma_min=2.0)


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_a_few_steps_lower_the_loss(name):
    """Training on one fixed batch of structured images lowers the exact NLL (the loss is wired to
    the likelihood), with noisy histories in the batch when the model has noise levels."""
    from conftest import image_dataset

    data = image_dataset(n=32, levels=17)
    model = create(name, data.spec, **SMALL[name], noise_levels=2)
    batch = data.tensors(32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = -model.log_prob(batch.x).mean().item()
    g = torch.Generator().manual_seed(0)
    for step in range(30):
        opt.zero_grad()
        model.loss(batch, "model", Progress(step=step, generator=g)).loss.backward()
        opt.step()
    after = -model.log_prob(batch.x).mean().item()
    assert after < before - 20, (before, after)
    assert isinstance(model, PixelModel)
