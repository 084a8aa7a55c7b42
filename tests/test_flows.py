"""Known answers for the flow models (dgm.models.flows), in float64: x -> z -> x round trips, the
log-determinant against autograd's Jacobian, densities that integrate to 1 on a grid, the closed
form of a flow at initialisation, the variational dequantization bound against autograd, sampling
temperature, and the one-line refusals."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import image_dataset, vector_dataset
from dgm.data.core import Dataset, DataSpec
from dgm.errors import DgmError
from dgm.models import capabilities, create
from dgm.models.base import make_config, model_class

#: (model, settings) of every flow at a size that a float64 Jacobian can check
FLOWS = [
    ("nice", {"couplings": 4, "hidden": (8, 8)}),
    ("realnvp", {"scales": 2, "width": 6, "blocks": 1}),
    ("realnvp", {"flatten": True, "couplings": 4, "hidden": (8,)}),
    ("glow", {"levels": 2, "steps": 2, "width": 6}),
    ("maf", {"transforms": 3, "hidden": (12,)}),
    ("iaf", {"transforms": 3, "hidden": (12,)}),
    ("spline-flow", {"transforms": 2, "hidden": (8,), "bins": 4}),
    ("spline-flow", {"structure": "autoregressive", "transforms": 2, "hidden": (12,), "bins": 4}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in s.items() if k in ('flatten', 'structure'))}".rstrip("-")
       for name, s in FLOWS]
VECTOR_FLOWS = [(n, s) for n, s in FLOWS if n != "glow" and not (n == "realnvp" and not s.get("flatten"))]


def rgb_dataset(n: int = 16, size: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(0, 256, (n, 3, size, size), generator=g).to(torch.uint8)
    return Dataset(raw, None, DataSpec("rgb", (3, size, size), "dequantized", levels=256), train=True)


def flow(name: str, settings: dict, data: Dataset, seed: int = 0) -> tuple[torch.nn.Module, Dataset]:
    """The model in float64 with every parameter perturbed (so zero-initialised layers are not the
    identity) after its actnorms saw a batch."""
    cls = model_class(name)
    config = make_config(cls, settings)
    data = data.with_representation(cls.default_representation(config, data.spec))
    torch.manual_seed(seed)
    model = cls(config, data.spec).double()
    model.train()
    with torch.no_grad():
        model.latent(model.continuous(data.tensors(16).x))  # data-dependent initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval(), data


def small_image(levels: int = 17) -> Dataset:
    return image_dataset(n=32, size=4, levels=levels)


@pytest.mark.parametrize("name,settings", FLOWS, ids=IDS)
def test_round_trip_and_log_det_against_autograd_on_images(name, settings):
    model, data = flow(name, settings, small_image())
    y = model.continuous(data.tensors(3).x)  # (3, 1, 4, 4) dequantized values
    z, log_abs_det = model.latent(y)
    assert (model.invert(z) - y).abs().max() < 1e-6
    for i in range(len(y)):  # per example: D = 16
        jacobian = torch.autograd.functional.jacobian(lambda v: model.latent(v.view(1, *y.shape[1:]))[0][0],
                                                      y[i].flatten())
        torch.testing.assert_close(log_abs_det[i], torch.linalg.slogdet(jacobian)[1], rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name,settings", [f for f in FLOWS if f[0] in ("realnvp", "glow")],
                         ids=[i for i, f in zip(IDS, FLOWS) if f[0] in ("realnvp", "glow")])
def test_multiscale_flows_on_colour_images(name, settings):
    """Three channels: the channel masks act after the squeeze (12 channels), never on 3."""
    model, data = flow(name, settings, rgb_dataset())
    y = model.continuous(data.tensors(2).x)
    z, log_abs_det = model.latent(y)
    assert z.shape == (2, 48) and (model.invert(z) - y).abs().max() < 1e-6
    jacobian = torch.autograd.functional.jacobian(lambda v: model.latent(v.view(1, 3, 4, 4))[0][0], y[0].flatten())
    torch.testing.assert_close(log_abs_det[0], torch.linalg.slogdet(jacobian)[1], rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name,settings", VECTOR_FLOWS, ids=[i for i, f in zip(IDS, FLOWS) if f in VECTOR_FLOWS])
def test_two_dimensional_density_integrates_to_one(name, settings):
    model, _ = flow(name, settings, vector_dataset(n=64, dim=2))
    n, half = 401, 8.0  # a 401 x 401 grid on [-8, 8]^2: the mass outside is below 1e-6 here
    axis = torch.linspace(-half, half, n, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = torch.cat([model.log_prob(c) for c in points.split(20_000)]).exp()
    cell = (2 * half / (n - 1)) ** 2
    assert abs(float(density.sum() * cell) - 1) < 2e-3


@pytest.mark.parametrize("name,settings", VECTOR_FLOWS, ids=[i for i, f in zip(IDS, FLOWS) if f in VECTOR_FLOWS])
def test_vector_round_trip_and_log_det(name, settings):
    model, data = flow(name, settings, vector_dataset(n=64, dim=3))
    x = data.tensors(4).x.double()
    z, log_abs_det = model.latent(x)
    assert (model.invert(z) - x).abs().max() < 1e-6
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda v: model.latent(v[None])[0][0], x[i])
        torch.testing.assert_close(log_abs_det[i], torch.linalg.slogdet(jacobian)[1], rtol=1e-9, atol=1e-9)


def test_fresh_maf_is_the_logit_of_a_standard_normal():
    """At initialisation every MADE outputs zeros, so the flow is the identity after the logit: a
    closed form written with torch.distributions."""
    data = small_image().with_representation("dequantized")
    model = create("maf", data.spec, transforms=2, hidden=(8,)).double()
    y = data.tensors(4).x.double()
    alpha = 0.05
    p = alpha + (1 - 2 * alpha) * y
    z = torch.log(p) - torch.log1p(-p)
    expected = (torch.distributions.Normal(0.0, 1.0).log_prob(z)
                + math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    torch.testing.assert_close(model.log_prob(y), expected, rtol=1e-12, atol=1e-10)


def test_variational_dequantization_bound_against_autograd():
    """elbo = log p((x + u) / L) - D log L - log q(u | x), with log q from the Jacobian of eps -> u."""
    model, data = flow("realnvp", {"scales": 1, "width": 4, "blocks": 1, "dequantization": "variational",
                                    "dequantizer_couplings": 2, "dequantizer_width": 4}, small_image())
    assert data.spec.representation == "levels"
    assert "log_prob" not in capabilities(model) and {"elbo", "iwae_bound"} <= capabilities(model)
    x = data.tensors(2).x
    L, D = data.spec.levels, data.spec.dim
    bound = model.elbo(x, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    q = model.dequantizer
    for i in range(len(x)):
        def u_of(e, i=i):
            return q.g(e.view(1, *x.shape[1:]), (x[i:i + 1].double() / (L - 1)) * 2 - 1)[0].flatten()
        u = u_of(eps[i].flatten())
        log_q = (torch.distributions.Normal(0.0, 1.0).log_prob(eps[i]).sum()
                 - torch.linalg.slogdet(torch.autograd.functional.jacobian(u_of, eps[i].flatten()))[1])
        y = (x[i:i + 1].double() + u.view(1, *x.shape[1:])) / L
        expected = model.log_density(y)[0] - D * math.log(L) - log_q
        torch.testing.assert_close(bound[i], expected, rtol=1e-9, atol=1e-8)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.long and samples.min() >= 0 and samples.max() < L


def test_temperature_scales_the_latent_of_samples():
    model, _ = flow("maf", {"transforms": 2, "hidden": (8,)}, vector_dataset(n=64, dim=2))
    g = torch.Generator().manual_seed(0)
    x = model.sample(4000, generator=g, temperature=0.3)
    z = model.encode(x)
    assert abs(float(z.detach().std()) - 0.3) < 0.02
    again = model.sample(4000, generator=torch.Generator().manual_seed(0), temperature=0.3)
    torch.testing.assert_close(x, again, rtol=0, atol=0)


def test_samples_of_dequantized_images_stay_in_the_unit_interval():
    model, data = flow("glow", {"levels": 1, "steps": 1, "width": 4}, small_image())
    x = model.sample(8, generator=torch.Generator().manual_seed(0), temperature=2.0)
    assert x.shape == (8, 1, 4, 4) and x.min() >= 0 and x.max() < 1


@pytest.mark.parametrize("name,settings,match", [
    ("glow", {"levels": 3}, "levels=3 squeezes the image by 8 in all, but it is 4x4"),
    ("realnvp", {"scales": 4}, "scales=4 squeezes the image by 8 in all, but it is 4x4"),
])
def test_configurations_that_do_not_fit_the_image_are_refused(name, settings, match):
    data = small_image().with_representation("dequantized")
    with pytest.raises(DgmError, match=match):
        create(name, data.spec, **settings)


def test_refusals_of_data_a_flow_cannot_model():
    vectors = vector_dataset(n=8, dim=2).spec
    with pytest.raises(DgmError, match="multi-scale flow over images"):
        create("glow", vectors)
    with pytest.raises(DgmError, match="use maf or iaf for 1-dimensional data"):
        create("realnvp", vector_dataset(n=8, dim=1).spec)
    points = DataSpec("shapes2d", (64, 2), "continuous", levels=None, kind="points")
    with pytest.raises(DgmError, match="cannot train on points"):
        create("maf", points)
    unit = small_image().spec  # representation "unit": not what a flow reads
    with pytest.raises(DgmError, match="reads the 'dequantized' representation"):
        create("realnvp", unit)
    with pytest.raises(DgmError, match="is unconditional: drop the condition"):
        flow("maf", {"transforms": 1, "hidden": (4,)}, vector_dataset(n=8, dim=2))[0].sample(2, condition=torch.zeros(2))


@pytest.mark.parametrize("name,settings", FLOWS, ids=IDS)
def test_bf16_autocast_keeps_the_bijections_and_log_determinants_in_float32(name, settings):
    """Under bf16 autocast only the conditioner networks run in bf16: the log-density comes out in
    float32, close to the float32 one (a log-determinant summed in bf16 would be off by whole nats)."""
    model, data = flow(name, settings, small_image())
    model.float()
    y = model.continuous(data.tensors(8).x)
    with torch.no_grad():
        exact = model.log_density(y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.log_density(y)
    assert fast.dtype == torch.float32
    assert (fast - exact).abs().max() < 0.02 * exact.abs().max() + 0.02
