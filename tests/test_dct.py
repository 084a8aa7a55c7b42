"""The sparse DCT code (dgm.data.dct) and the DCT transformer over it (Nash et al. 2021, arXiv:2103.03841):
lossless round trips (proved in dct.py, checked here), lossy error bounds, the DCT against scipy,
the ordering and sparsity of the triples; the model's probabilities summed over every sequence of a
tiny vocabulary (float64), its autoregressive property by autograd, sampling and refusals."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

import dgm.data
from dgm.data import dct
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.models.base import Progress, capabilities, create
from dgm.models.dct_transformer import DCTTransformer  # noqa: F401  (registers the model)


def round_trip(images: torch.Tensor, quality: dct.Quality) -> torch.Tensor:
    triples, mask = dct.batch_to_triples(images, quality=quality)
    return dct.batch_from_triples(triples, mask, tuple(images.shape[1:]), quality=quality)


def digits_255() -> torch.Tensor:
    x = dgm.data.load("digits", "test", representation="levels").tensors().x  # (360, 1, 8, 8), 0..16
    return torch.round(x.double() * 255 / 16).long()


# --- the code -------------------------------------------------------------------------------------
def test_dct_matches_scipy_and_zigzag_and_tables():
    block = np.random.default_rng(0).uniform(-128, 128, (8, 8))
    D = dct.dct_matrix().numpy()
    np.testing.assert_allclose(D @ block @ D.T, scipy.fft.dctn(block, norm="ortho"), atol=1e-10)
    assert dct.zigzag()[:10].tolist() == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24]  # T.81 Figure 5
    assert sorted(dct.zigzag().tolist()) == list(range(64))
    assert torch.equal(dct.quantisation_steps(50, 3)[0], torch.tensor(dct.LUMINANCE_TABLE, dtype=torch.float64))
    assert (dct.quantisation_steps(100, 1) == 1).all()


@pytest.mark.parametrize("shape", [(1, 13, 10), (3, 13, 10), (3, 8, 17), (1, 16, 16)])
def test_lossless_round_trip_on_random_and_saturated_images(shape):
    g = torch.Generator().manual_seed(sum(shape))
    noise = torch.randint(0, 256, (6, *shape), generator=g)
    extremes = torch.randint(0, 2, (6, *shape), generator=g) * 255  # saturated colours: the worst case
    images = torch.cat([noise, extremes])
    assert torch.equal(round_trip(images, "lossless"), images)
    assert torch.equal(dct.from_triples(dct.to_triples(images[0], quality="lossless"), shape, quality="lossless"),
                       images[0])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Fashion-MNIST not installed")
def test_lossless_round_trip_on_fashion_mnist():
    x = dgm.data.load("fashion-mnist", "test", representation="levels").tensors(64).x
    assert torch.equal(round_trip(x, "lossless"), x)


def test_code_of_other_level_counts_round_trips():
    x = dgm.data.load("digits", "test", representation="levels").tensors(32).x  # 17 levels
    code = dct.DCTCode((1, 8, 8), quality="lossless", levels=17)
    assert code.lossless and code.num_values == 2 * 16384 + 1
    assert torch.equal(code.decode(*code.encode(x)), x)


@pytest.mark.parametrize("quality, psnr", [(75, 28.0), (50, 23.0)])
def test_lossy_error_is_within_the_stated_bounds(quality, psnr):
    x = digits_255()
    y = round_trip(x, quality)
    mse = (y - x).double().pow(2).flatten(1).mean(1)
    assert (10 * torch.log10(255 ** 2 / mse.clamp(min=1e-12))).mean() > psnr  # dct.py: 29.9 and 24.6 dB
    assert (y - x).abs().max() <= dct.error_bound(quality, 1)
    colour = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    assert (round_trip(colour, quality) - colour).abs().max() <= dct.error_bound(quality, 3)


def test_triples_are_sorted_nonzero_and_sparse():
    image = torch.randint(0, 256, (3, 13, 10), generator=torch.Generator().manual_seed(2))
    code = dct.DCTCode((3, 13, 10), quality=75)
    t = dct.to_triples(image, quality=75)
    assert ((t[:, 0] >= 0) & (t[:, 0] < code.num_channels) & (t[:, 1] < code.num_positions)).all()
    key = t[:, 0] * code.num_positions + t[:, 1]
    assert (key[1:] > key[:-1]).all() and (t[:, 2] != 0).all()  # channel, then position; no zeros
    assert len(dct.to_triples(torch.full((3, 13, 10), 128), quality="lossless")) == 0  # all grey: nothing
    flat = dct.to_triples(torch.full((1, 16, 16), 200), quality=75)
    assert flat[:, 0].tolist() == [0] * 4 and flat[:, 1].tolist() == [0, 1, 2, 3]  # only the 4 DC terms
    assert dct.to_triples(torch.zeros(1, 8, 8, dtype=torch.long), quality="lossless", value_range=5)[0, 2] == -5


# --- the model ------------------------------------------------------------------------------------
SPEC = DataSpec("tiny", (1, 8, 8), "levels", levels=256)


def tiny(spec: DataSpec = SPEC, **config) -> DCTTransformer:
    torch.manual_seed(0)
    return create("dct-transformer", spec, **{"width": 16, "depth": 1, "heads": 2, **config})


def test_probabilities_of_all_sequences_sum_to_one():
    model = tiny(quality=1, value_range=1, max_length=2).double().eval()
    with torch.no_grad():  # random, larger weights: a far-from-uniform distribution
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    K, P, V = model.code.num_channels, model.code.num_positions, model.code.num_values  # 64, 1, 3
    options = [(c, p, v - 1) for c in range(K) for p in range(P) for v in range(V)]
    rows = [[]] + [[a] for a in options] + [[a, b] for a, b in itertools.product(options, options)]
    triples = torch.tensor([r + [(0, 0, 0)] * (2 - len(r)) for r in rows])  # (37057, 2, 3)
    mask = torch.tensor([[i < len(r) for i in range(2)] for r in rows])
    with torch.no_grad():
        lp = model.sequence_log_prob(triples, mask)
    assert math.isclose(lp.exp().sum().item(), 1.0, abs_tol=1e-5)
    assert torch.isinf(lp[mask[:, 0] & (triples[:, 0, 2] == 0)]).all()  # zero values are never coded


def test_step_t_depends_only_on_earlier_triples():
    model = tiny(quality=50, max_length=64).double().eval()
    x = dgm.data.load("digits", "test", representation="levels").tensors(3).x * 15
    triples, mask = model.code.encode(x)
    seen = {}
    forward = model.transformer.forward

    def spy(h, **kwargs):  # the transformer's inputs, h[:, t] = triple t - 1, as leaves
        seen["h"] = h.detach().requires_grad_()
        return forward(seen["h"], **kwargs)

    model.transformer.forward = spy
    steps = model.step_log_probs(triples, mask)  # (B, T)
    for t in range(0, steps.shape[1], 5):
        (grad,) = torch.autograd.grad(steps[:, t].sum(), seen["h"], retain_graph=True)
        assert grad[:, t + 1:].abs().max() == 0 and grad[:, :t + 1].abs().max() > 0


def test_sampling_is_seeded_and_decodes_to_images():
    spec = DataSpec("digits", (1, 8, 8), "levels", levels=17, num_classes=10)
    model = tiny(spec, quality=50, max_length=24, conditional=True).eval()
    draw = lambda: model.sample(5, torch.tensor(3), generator=torch.Generator().manual_seed(7))  # noqa: E731
    a, b = draw(), draw()
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.long and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 16
    y = torch.full((6,), 3)  # the cached path draws only codes the parallel pass gives mass to
    triples, mask = model.sample_triples(6, y, generator=torch.Generator().manual_seed(8))
    key = triples[..., 0] * model.code.num_positions + triples[..., 1]
    assert ((key[:, 1:] > key[:, :-1]) | ~mask[:, 1:]).all() and ((triples[..., 2] != 0) | ~mask).all()
    with torch.no_grad():
        assert torch.isfinite(model.sequence_log_prob(triples, mask, y)).all()
    with pytest.raises(DgmError, match="trained with classes 0..9, and class 10"):
        model.sample(2, torch.tensor(10))
    with pytest.raises(DgmError, match="unconditional"):
        tiny(quality=50, max_length=8).sample(2, torch.tensor(1))


def test_loss_likelihoods_and_refusals():
    data = dgm.data.load("digits", "test", representation="levels")
    batch = data.tensors(16)
    model = tiny(data.spec, quality=0, max_length=64)
    out = model.loss(batch, "model", Progress())
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0
    assert all(p.grad is not None for p in model.parameters())
    elbo = model.elbo(batch.x)
    assert elbo.shape == (16,) and torch.allclose(elbo, -model.sequence_nll(batch.x))
    assert {"elbo", "sequence_nll", "sample"} <= capabilities(model)
    lossy = tiny(data.spec, quality=75, max_length=64)
    with pytest.raises(DgmError, match="at quality 75 the DCT code is lossy.*model.quality=0"):
        lossy.elbo(batch.x)
    assert torch.isfinite(lossy.sequence_nll(batch.x)).all()
    with pytest.raises(DgmError, match=r"DCT triples .*--set model.max_length=\d+"):
        tiny(data.spec, quality=0, max_length=8).loss(batch, "model", Progress())
    for spec in (DataSpec("ring", (2,), "continuous", levels=None),
                 DataSpec("text", (16,), "levels", levels=256, kind="tokens")):
        with pytest.raises(DgmError):
            DCTTransformer.default_representation(DCTTransformer.Config(), spec)


def test_a_lossy_code_withholds_the_likelihood_from_evaluation():
    from dgm.eval.core import supported
    from dgm.models import capabilities, create

    spec = DataSpec("x", (1, 8, 8), "levels", levels=17)
    lossy = create("dct-transformer", spec, width=8, depth=1, heads=2, quality=75)
    assert "elbo" in capabilities(type(lossy)) and "elbo" not in capabilities(lossy)
    assert "nll" not in supported(lossy)
    lossless = create("dct-transformer", spec, width=8, depth=1, heads=2, quality=0)
    assert "elbo" in capabilities(lossless) and "nll" in supported(lossless)
