"""Known-answer tests of the shared networks and likelihoods (dgm.nn)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D
from torch import nn

from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.nn import (
    LIKELIHOODS,
    MLP,
    Bernoulli,
    Categorical,
    ConvDecoder,
    ConvEncoder,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Gaussian,
    Likelihood,
    ResidualBlock,
    conv_downsamplings,
    from_levels,
    make_likelihood,
    normal_kl,
    normal_log_prob,
    to_levels,
)
from dgm.nn.unet import UNet, max_levels

DISCRETE = [DiscretizedLogistic, DiscretizedLogisticMixture, Categorical]


def spec(shape=(2, 2, 3), representation="unit", levels=256) -> DataSpec:
    return DataSpec("test", shape, representation, levels)


def random_params(lik: Likelihood, batch: int, seed: int = 0) -> torch.Tensor:
    """Random float64 params with plausible means (around [0, 1]) and a wide range of scales."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, *lik.params_shape, generator=g, dtype=torch.float64)
    if isinstance(lik, (DiscretizedLogistic, DiscretizedLogisticMixture)):
        q = lik._split(p)  # a view: (B, C, P, *rest)
        n = q.shape[2] // (2 if isinstance(lik, DiscretizedLogistic) else 3)
        mu, log_s = q[:, :, -2 * n:-n], q[:, :, -n:]
        mu.uniform_(-0.3, 1.3, generator=g)
        log_s.uniform_(-6, 1, generator=g)
    return p


def level_values(s: DataSpec, batch: int) -> list[torch.Tensor]:
    """Every level as a batch of constant examples, in the representation of ``s``."""
    k = torch.ones(batch, *s.shape, dtype=torch.long)
    return [from_levels(k * j, s).to(torch.float64) if s.representation != "levels" else k * j
            for j in range(s.levels)]


def total_mass(lik: Likelihood, params: torch.Tensor) -> torch.Tensor:
    lp = torch.stack([lik.log_prob_per_dim(params, x) for x in level_values(lik.spec, len(params))])
    return lp.logsumexp(0).exp()  # (B, *shape)


# --- normalisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", DISCRETE)
@pytest.mark.parametrize("levels", [256, 17])
@pytest.mark.parametrize("representation", ["unit", "levels", "signed"])
def test_discrete_pmf_sums_to_one(cls, levels, representation):
    for shape in [(2, 2, 3), (3,)]:
        lik = cls(spec(shape, representation, levels))
        mass = total_mass(lik, random_params(lik, 4))
        torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)


def test_bernoulli_sums_to_one():
    lik = Bernoulli(spec(representation="binary-dynamic"))
    p = random_params(lik, 4) * 5
    x0, x1 = torch.zeros(4, *lik.spec.shape), torch.ones(4, *lik.spec.shape)
    mass = lik.log_prob_per_dim(p, x0).exp() + lik.log_prob_per_dim(p, x1).exp()
    torch.testing.assert_close(mass, torch.ones_like(mass))


@pytest.mark.parametrize("scale", ["learned", "output"])
def test_gaussian_integrates_to_one(scale):
    lik = Gaussian(DataSpec("toy", (1,), "continuous", None), scale=scale)
    params = torch.tensor([[0.3, -1.2]], dtype=torch.float64)[:, :lik.params_per_dim]
    grid = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    density = lik.log_prob_per_dim(params.expand(len(grid), -1), grid[:, None]).exp()[:, 0]
    assert torch.trapezoid(density, grid).item() == pytest.approx(1, abs=1e-6)


# --- values against references ------------------------------------------------------------------

def test_bernoulli_matches_torch():
    lik = Bernoulli(spec(representation="binary-static"))
    p = random_params(lik, 5) * 3
    x = torch.bernoulli(torch.full((5, *lik.spec.shape), 0.5), generator=torch.Generator().manual_seed(1))
    ref = D.Bernoulli(logits=p).log_prob(x.double())
    torch.testing.assert_close(lik.log_prob_per_dim(p, x), ref)
    torch.testing.assert_close(lik.log_prob(p, x), ref.flatten(1).sum(1))
    torch.testing.assert_close(lik.mean(p), torch.sigmoid(p))


@pytest.mark.parametrize("scale", ["learned", "output"])
def test_gaussian_matches_torch(scale):
    lik = Gaussian(spec((3, 4, 4), "dequantized"), scale=scale)
    p = random_params(lik, 5)
    if scale == "learned":
        with torch.no_grad():
            lik.log_scale.uniform_(-3, 1)
        mu, log_s = p, lik.log_scale.double().expand_as(p)
    else:
        mu, log_s = p.view(5, 3, 2, 4, 4).unbind(2)  # channel-major layout
    x = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    ref = D.Normal(mu, log_s.exp()).log_prob(x)
    torch.testing.assert_close(lik.log_prob_per_dim(p, x), ref)
    torch.testing.assert_close(lik.mean(p), mu)


def test_gaussian_learned_scale_is_a_parameter():
    lik = Gaussian(spec((3,), "dequantized"))
    assert [n for n, _ in lik.named_parameters()] == ["log_scale"]
    assert lik.params_shape == (3,)
    assert list(Gaussian(spec((3,), "dequantized"), scale="output").parameters()) == []


def test_logistic_middle_bin_matches_direct_formula():
    L = 256
    lik = DiscretizedLogistic(spec((2, 2, 3), "unit", L))
    p = random_params(lik, 5)
    mu, log_s = p.view(5, 2, 2, 2, 3).unbind(2)
    k = torch.randint(1, L - 1, (5, 2, 2, 3), generator=torch.Generator().manual_seed(2))
    x, h, s = k.double() / (L - 1), 0.5 / (L - 1), log_s.exp()
    direct = torch.sigmoid((x + h - mu) / s) - torch.sigmoid((x - h - mu) / s)
    torch.testing.assert_close(lik.log_prob_per_dim(p, x).exp(), direct, atol=1e-12, rtol=1e-9)
    # end bins extend to -inf / +inf
    first = lik.log_prob_per_dim(p, torch.zeros(5, 2, 2, 3)).exp()
    last = lik.log_prob_per_dim(p, torch.ones(5, 2, 2, 3)).exp()
    torch.testing.assert_close(first, torch.sigmoid((h - mu) / s))
    torch.testing.assert_close(last, 1 - torch.sigmoid((1 - h - mu) / s))


def test_logistic_mixture_matches_direct_formula():
    L, K = 17, 3
    lik = DiscretizedLogisticMixture(spec((4,), "levels", L), components=K)
    assert lik.params_shape == (4 * 3 * K,)
    p = random_params(lik, 5)
    logits, mu, log_s = p.view(5, 4, 3 * K).chunk(3, dim=2)  # (B, D, K) each
    k = torch.randint(1, L - 1, (5, 4), generator=torch.Generator().manual_seed(3))
    x, h, s = (k / (L - 1))[..., None], 0.5 / (L - 1), log_s.exp()
    bins = torch.sigmoid((x + h - mu) / s) - torch.sigmoid((x - h - mu) / s)
    direct = (logits.softmax(-1) * bins).sum(-1)
    torch.testing.assert_close(lik.log_prob_per_dim(p, k).exp(), direct)


def test_categorical_matches_torch_and_layout():
    L = 17
    lik = Categorical(spec((2, 3, 3), "levels", L))
    assert lik.params_shape == (2 * L, 3, 3)
    p = random_params(lik, 5)
    k = torch.randint(0, L, (5, 2, 3, 3), generator=torch.Generator().manual_seed(4))
    ref = D.Categorical(logits=p.view(5, 2, L, 3, 3).movedim(2, -1)).log_prob(k)
    torch.testing.assert_close(lik.log_prob_per_dim(p, k), ref)
    # channel c, level j lives at params[:, c * L + j]
    spike = torch.zeros(1, 2 * L, 3, 3)
    spike[:, 0 * L + 5], spike[:, 1 * L + 11] = 50, 50
    assert lik.sample(spike).flatten(2).tolist() == [[[5] * 9, [11] * 9]]


@pytest.mark.parametrize("cls", DISCRETE)
def test_discrete_mean_is_the_expectation(cls):
    for representation in ["unit", "signed", "levels"]:
        lik = cls(spec((2, 2, 3), representation, 17))
        p = random_params(lik, 3)
        values = level_values(lik.spec, 3)
        probs = torch.stack([lik.log_prob_per_dim(p, x).exp() for x in values])
        expected = (probs * torch.stack(values).double()).sum(0)
        torch.testing.assert_close(lik.mean(p), expected)


def test_levels_round_trip():
    for rep in ["unit", "signed", "levels"]:
        s = spec((5,), rep, 17)
        k = torch.arange(17).repeat(5, 1).T  # (17, 5)
        assert torch.equal(to_levels(from_levels(k, s), s), k)
    assert to_levels(torch.tensor([-0.1, 0.499 / 16, 0.501 / 16, 1.2]), spec((4,), "unit", 17)).tolist() == [0, 0, 1, 16]


# --- sampling -----------------------------------------------------------------------------------

SAMPLED = [
    (DiscretizedLogistic, "unit"), (DiscretizedLogisticMixture, "signed"), (Categorical, "levels"),
    (Bernoulli, "binary-dynamic"),
]


@pytest.mark.parametrize("cls,representation", SAMPLED)
def test_sample_histogram_matches_pmf(cls, representation):
    L, n = 17, 20_000
    lik = cls(spec((3,), representation, L))
    p = random_params(lik, 1, seed=5)
    if cls is DiscretizedLogistic:
        p.view(1, 3, 2)[:, :, 1] = -2.0  # spread over several levels
    x = lik.sample(p.expand(n, -1), torch.Generator().manual_seed(6))
    values = [torch.zeros(1, 3), torch.ones(1, 3)] if cls is Bernoulli else level_values(lik.spec, 1)
    probs = torch.cat([lik.log_prob_per_dim(p, v).exp() for v in values])  # (levels, 3)
    counts = torch.stack([(x == v.to(x.dtype)).sum(0) for v in values])
    assert counts.sum(0).tolist() == [n] * 3  # every sample is on a level
    counts = counts / n
    tv = 0.5 * (counts - probs).abs().sum(0)
    assert tv.max() < 0.02, tv


def test_gaussian_sample_moments():
    lik = Gaussian(spec((2,), "continuous", None), scale="output")
    p = torch.tensor([[0.5, math.log(0.2), -3.0, math.log(2.0)]]).expand(20_000, -1)
    x = lik.sample(p, torch.Generator().manual_seed(7))
    torch.testing.assert_close(x.mean(0), torch.tensor([0.5, -3.0]), atol=0.04, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.2, 2.0]), atol=0.04, rtol=0)


@pytest.mark.parametrize("cls,representation", SAMPLED + [(Gaussian, "dequantized")])
def test_samples_in_range_and_seeded(cls, representation):
    lik = cls(spec((2, 4, 4), representation, 256))
    p = random_params(lik, 8).float() * 3
    x = lik.sample(p, torch.Generator().manual_seed(8))
    assert x.shape == (8, 2, 4, 4)
    assert torch.equal(x, lik.sample(p, torch.Generator().manual_seed(8)))
    assert not torch.equal(x, lik.sample(p, torch.Generator().manual_seed(9)))
    if representation == "levels":
        assert x.dtype == torch.long and 0 <= x.min() and x.max() <= 255
    elif representation == "signed":
        assert -1 <= x.min() and x.max() <= 1
        torch.testing.assert_close((x + 1) * 127.5, ((x + 1) * 127.5).round())
    elif representation == "unit":
        assert 0 <= x.min() and x.max() <= 1
        torch.testing.assert_close(x * 255, (x * 255).round())
    elif representation.startswith("binary"):
        assert set(x.unique().tolist()) <= {0.0, 1.0}


# --- numerical extremes -------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [DiscretizedLogistic, DiscretizedLogisticMixture])
@pytest.mark.parametrize("mu,log_s", [(50.0, -30.0), (-50.0, -30.0), (0.5, -30.0), (0.5, 30.0), (-3.0, 5.0)])
def test_logistic_extremes_are_finite(cls, mu, log_s):
    lik = cls(spec((3,), "unit", 256))
    n = 1 if cls is DiscretizedLogistic else lik.components
    p = torch.zeros(1, 3, lik.params_per_dim)
    p[..., -2 * n:-n], p[..., -n:] = mu, log_s
    p = p.flatten(1).requires_grad_()
    x = torch.tensor([[0.0, 128 / 255, 1.0]])
    lp = lik.log_prob(p.expand(2, -1), x.expand(2, -1))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(p.grad).all()
    mass = total_mass(lik, p.detach().double())
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    assert torch.isfinite(lik.sample(p.detach())).all() and torch.isfinite(lik.mean(p.detach())).all()


@pytest.mark.parametrize("cls", [DiscretizedLogistic, DiscretizedLogisticMixture])
def test_logistic_gradients(cls):
    lik = cls(spec((4,), "levels", 17), **({"components": 2} if cls is DiscretizedLogisticMixture else {}))
    p = random_params(lik, 3).requires_grad_()
    k = torch.tensor([[0, 16, 5, 8]] * 3)  # both end bins and middle ones
    assert torch.autograd.gradcheck(lambda p: lik.log_prob_per_dim(p, k), (p,))


def test_categorical_and_gaussian_extremes_are_finite():
    cat = Categorical(spec((3,), "unit", 256))
    p = torch.full((1, 3 * 256), -1e4)
    p[:, 0] = 1e4
    p.requires_grad_()
    lp = cat.log_prob(p, torch.ones(1, 3))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(p.grad).all()
    gauss = Gaussian(spec((3,), "dequantized"), scale="output")
    p = torch.tensor([[50.0, -100.0, -50.0, 100.0, 0.5, 0.0]], requires_grad=True)
    lp = gauss.log_prob(p, torch.rand(1, 3))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(p.grad).all()


# --- construction and errors --------------------------------------------------------------------

def test_registry_and_errors():
    assert set(LIKELIHOODS) == {"bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"}
    s = spec((3,), "unit", 256)
    assert isinstance(make_likelihood("logistic-mixture", s, components=2), DiscretizedLogisticMixture)
    assert make_likelihood("gaussian", spec((3,), "dequantized"), scale="output").params_shape == (6,)
    with pytest.raises(DgmError, match="logistic"):
        make_likelihood("logistc", s)
    with pytest.raises(DgmError, match="components"):
        make_likelihood("logistic", s, components=3)
    with pytest.raises(DgmError, match="binarized data.*data.representation=binary-dynamic"):
        Bernoulli(s)
    with pytest.raises(DgmError, match="data.representation=unit"):
        Categorical(spec((3,), "dequantized"))
    with pytest.raises(DgmError, match="likelihood=gaussian"):
        DiscretizedLogistic(DataSpec("toy", (2,), "continuous", None))
    with pytest.raises(DgmError, match="learned"):
        Gaussian(spec((3,), "dequantized"), scale="fixed")
    for name, cls in LIKELIHOODS.items():
        rep = cls.default_representation
        assert rep in cls.representations and make_likelihood(name, spec((3,), rep)).discrete == cls.discrete


# --- blocks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_conv_shapes(shape):
    enc = ConvEncoder(shape, 10, width=8)
    dec = ConvDecoder(10, (2 * shape[0], *shape[1:]), width=8, num_res_blocks=2)
    h = enc(torch.randn(2, *shape))
    assert h.shape == (2, 10)
    assert dec(h).shape == (2, 2 * shape[0], *shape[1:])


def test_conv_downsamplings():
    assert [conv_downsamplings(s, s) for s in (8, 28, 32, 64)] == [1, 2, 2, 2]
    for h, w in [(30, 30), (7, 7), (8, 28), (2, 2)]:
        with pytest.raises(DgmError, match=f"{h}x{w}.*data.size=32"):
            conv_downsamplings(h, w)
    with pytest.raises(DgmError, match="30x30"):
        ConvEncoder((1, 30, 30), 4)


def test_mlp_and_residual_block():
    linear = MLP(5, (), 3)
    assert len(linear) == 1 and isinstance(linear[0], nn.Linear)
    mlp = MLP(5, (16, 16), 3, activation=nn.ReLU)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert mlp(torch.randn(4, 5)).shape == (4, 3)
    block = ResidualBlock(4)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(block(x), x)  # starts as the identity
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ConvEncoder((3, 32, 32), 4).modules())


# --- the Gaussian formulas (dgm.nn.distributions) ---------------------------------------------------
def test_normal_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean, mean2 = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    log_var, log_var2 = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    normal, normal2 = D.Normal(mean, (0.5 * log_var).exp()), D.Normal(mean2, (0.5 * log_var2).exp())
    torch.testing.assert_close(normal_log_prob(x, mean, log_var), normal.log_prob(x))
    torch.testing.assert_close(normal_log_prob(x), D.Normal(0.0, 1.0).log_prob(x))  # the standard normal by default
    torch.testing.assert_close(normal_log_prob(x, 1.5, 0.3), D.Normal(1.5, math.exp(0.15)).log_prob(x))  # floats broadcast
    torch.testing.assert_close(normal_kl(mean, log_var, mean2, log_var2), D.kl_divergence(normal, normal2))


# --- the U-Net's levels ------------------------------------------------------------------------------
def test_unet_levels_the_image_size_allows():
    assert [max_levels(s, s) for s in (7, 8, 12, 28, 32)] == [1, 4, 3, 3, 6]
    assert max_levels(8, 12) == 3  # both sides halve exactly
    assert UNet((1, 12, 12), 1, width=8, channel_mults=(1, 2, 2))(torch.zeros(2, 1, 12, 12), torch.zeros(2)).shape == (2, 1, 12, 12)
    with pytest.raises(DgmError, match="28x28 does not allow: it takes at most 3"):
        UNet((1, 28, 28), 1, width=8, channel_mults=(1, 2, 2, 2))
