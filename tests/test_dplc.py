"""Known answers of distribution-preserving lossy compression (Tschannen et al. 2018): the symbols'
round trip, the rate m log2 L, the WGAN-GP penalty on a linear critic (closed form and autograd), the
MMD estimate against a loop, and the plain autoencoder baseline without a critic."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import image_dataset
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models.dplc import ScalarQuantizer, imq_mmd
from dgm.models.gan import gradient_penalty

TINY = {"code_dim": 3, "levels": 5, "width": 4, "critic_width": 4, "critic_steps": 2}


def build(**options):
    data = image_dataset(n=32).with_representation("signed")
    torch.manual_seed(0)
    return create("dplc", data.spec, **{**TINY, **options}), data


def test_levels_round_trip_through_symbols_and_values():
    q = ScalarQuantizer(5)
    symbols = torch.arange(5).repeat(3, 1)  # (3, 5) every level
    torch.testing.assert_close(q.values(symbols)[0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(q.symbols(q.values(symbols)), symbols)
    code = torch.tensor([[-1.2, -0.74, -0.76, 0.24, 0.26, 2.0]])  # nearest level, clamped to [-1, 1]
    assert q.symbols(code).tolist() == [[0, 1, 0, 2, 3, 4]]
    code.requires_grad_(True)
    q(code).sum().backward()  # straight through: the identity's gradient
    torch.testing.assert_close(code.grad, torch.ones_like(code))


def test_quantize_dequantize_and_the_rate():
    model, data = build()
    x = data.tensors(6).x
    symbols = model.quantize(x)
    assert symbols.dtype == torch.int64 and symbols.shape == (6, 3)
    assert symbols.min() >= 0 and symbols.max() < 5
    torch.testing.assert_close(model.dequantize(symbols), model.reconstruct(x))
    torch.testing.assert_close(model.encode(x), model.quantizer.values(symbols))
    assert model.rate_bits == pytest.approx(3 * math.log2(5))
    torch.testing.assert_close(model.code_bits(x), torch.full((6,), 3 * math.log2(5)))
    with pytest.raises(DgmError, match="level indices in 0..4"):
        model.dequantize(torch.full((1, 3), 5))
    with pytest.raises(DgmError, match=r"\(B, 3\)"):
        model.dequantize(torch.zeros(1, 4, dtype=torch.long))


def test_gradient_penalty_of_a_linear_critic_is_the_closed_form():
    """f(x) = w . x has gradient w everywhere: the penalty is (||w|| - 1)^2 whatever the interpolates,
    and its gradient with respect to w is 2 (||w|| - 1) w / ||w||."""
    w = torch.tensor([0.3, -1.2, 2.0, 0.5], requires_grad=True)
    real, fake = torch.randn(7, 4), torch.randn(7, 4)
    penalty = gradient_penalty(lambda x: x @ w, (real,), (fake,), torch.Generator().manual_seed(0))
    norm = w.detach().norm()
    torch.testing.assert_close(penalty, (norm - 1) ** 2)
    (grad,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad, 2 * (norm - 1) * w.detach() / norm)


def test_imq_mmd_is_the_unbiased_estimate():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 2, generator=g), torch.rand(6, 2, generator=g)
    k = lambda a, b: 1.5 / (1.5 + ((a - b) ** 2).sum())  # noqa: E731
    n = 6
    within = sum(k(u[i], u[j]) + k(v[i], v[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    cross = sum(k(u[i], v[j]) for i in range(n) for j in range(n)) / n ** 2
    torch.testing.assert_close(imq_mmd(u, v, 1.5), within - 2 * cross)


def test_the_baseline_has_no_critic_and_trains_on_distortion_alone():
    model, data = build(adversarial=False)
    assert not hasattr(model, "critic_body") and [p.name for p in model.phases()] == ["autoencoder"]
    out = model.loss(data.tensors(8), "autoencoder", Progress())
    assert set(out.metrics) == {"distortion"}
    torch.testing.assert_close(out.loss, out.metrics["distortion"])
    dplc, _ = build()
    assert [p.name for p in dplc.phases()] == ["critic", "autoencoder"] and dplc.phases()[0].steps == 2
    assert {"distortion", "generator", "mmd"} <= set(dplc.loss(data.tensors(8), "autoencoder", Progress()).metrics)


def test_samples_are_the_decoder_at_zero_rate():
    model, _ = build()
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and x.abs().max() <= 1
