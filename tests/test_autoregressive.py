"""Known answers for NADE and MADE (dgm.models.autoregressive): exact normalisation by enumerating
every image of a tiny binary spec, the autoregressive property by autograd, ancestral sampling that
matches the model's own probabilities, and a short training on binarized 8x8 digits."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import dgm.data
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models.autoregressive import NADE

#: a 1x2x2 binary image: D = 4, 16 configurations
TINY_SPEC = DataSpec("tiny", (1, 2, 2), "binary-dynamic", levels=2)
ALL_IMAGES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 1, 2, 2)

#: (name, settings): NADE, MADE with one mask, the MADE ensemble (orders and connectivities differ)
MODELS = {
    "nade": ("nade", {"hidden": 5}),
    "made-1": ("made", {"hidden": (7, 6)}),
    "made-ensemble": ("made", {"hidden": (7, 6), "num_masks": 4, "order_agnostic": True, "mask_seed": 3}),
}


def tiny(key: str):
    name, settings = MODELS[key]
    torch.manual_seed(0)
    model = create(name, TINY_SPEC, **settings).double().eval()
    with torch.no_grad():  # larger weights than at initialisation, so the distribution is far from uniform
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("key", MODELS)
def test_probabilities_of_every_image_sum_to_one(key):
    model = tiny(key)
    with torch.no_grad():
        log_p = model.log_prob(ALL_IMAGES)
    assert log_p.shape == (16,)
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-6
    assert log_p.exp().max() > 2 / 16  # not the uniform distribution: the test has teeth


def jacobian_and_positions(model, m: int = 0):
    """d logits / d x ``(D, D)`` at a random point, and each dimension's position in the ordering."""
    x = torch.rand(model.dim, dtype=torch.float64)  # real-valued inputs: every path of the network is live
    if isinstance(model, NADE):
        fn, order = (lambda v: model.logits(v[None])[0]), torch.arange(model.dim)
    else:
        masks = model.masks(*model.fixed_connectivity(m))
        fn, order = (lambda v: model.logits(v[None], masks)[0]), model.order(m)
    return torch.autograd.functional.jacobian(fn, x), torch.argsort(order)


@pytest.mark.parametrize("key", MODELS)
def test_output_d_depends_only_on_inputs_before_d(key):
    model = tiny(key)
    reached = 0
    for m in range(getattr(model.config, "num_masks", 1)):
        J, position = jacobian_and_positions(model, m)  # J[i, j] = d l_i / d x_j
        later = position[None, :] >= position[:, None]  # j at or after i in the ordering
        assert (J[later] == 0).all()
        reached += int((J[~later] != 0).sum())  # (a mask of this tiny net may have only dead ReLUs)
    assert reached > 0  # earlier inputs do reach the outputs
    if key == "made-ensemble":  # the masks really order the dimensions differently
        assert len({tuple(model.order(m).tolist()) for m in range(4)}) > 1


def test_order_agnostic_training_draws_a_new_ordering_from_the_generator():
    model = tiny("made-ensemble")
    g = torch.Generator().manual_seed(0)
    orders = {tuple(model.draw_connectivity(g, natural=False)[0].tolist()) for _ in range(10)}
    assert len(orders) > 1
    a = model.draw_connectivity(torch.Generator().manual_seed(5), natural=False)
    b = model.draw_connectivity(torch.Generator().manual_seed(5), natural=False)
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
    for m in a[1]:  # degrees within [0, D - 2]: every hidden unit sees something and is seen
        assert 0 <= m.min() and m.max() <= model.dim - 2


@pytest.mark.parametrize("key", MODELS)
def test_samples_follow_the_models_probabilities(key):
    model = tiny(key)
    n = 20_000
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 1, 2, 2) and set(x.unique().tolist()) <= {0.0, 1.0}
    index = (x.flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=x.dtype)).sum(1).long()  # as ALL_IMAGES
    freq = torch.bincount(index, minlength=16).double() / n
    with torch.no_grad():
        p = model.log_prob(ALL_IMAGES).exp()
    assert (freq - p).abs().max() < 0.01, (freq, p)


def test_unconditional_and_binary_only():
    model = tiny("nade")
    with pytest.raises(DgmError, match="unconditional"):
        model.sample(2, torch.zeros(2, dtype=torch.long))
    with pytest.raises(DgmError, match="binary-dynamic"):
        create("made", DataSpec("tiny", (1, 2, 2), "unit", levels=17))
    assert NADE.default_representation(NADE.Config(), TINY_SPEC) == "binary-dynamic"


@pytest.mark.parametrize("name, settings", [("nade", {"hidden": 64}),
                                            ("made", {"hidden": (128,), "num_masks": 4, "order_agnostic": True})])
def test_short_training_on_digits_beats_the_uniform_model(name, settings):
    """300 steps on binarized 8x8 digits: the test NLL falls well below the uniform model's
    64 log 2 = 44.4 nats, and below the best model of independent pixels (the training split's pixel
    means: 27.2 nats), which only a model of the dependencies between pixels can beat. Measured:
    NADE 23.5, the 4-mask order-agnostic MADE ensemble 25.5 (one raster mask: 23.7)."""
    torch.manual_seed(0)
    train = dgm.data.load("digits", representation="binary-dynamic")
    test = dgm.data.load("digits", "test", representation="binary-dynamic")
    model = create(name, train.spec, **settings)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    step = 0
    while step < 300:
        for batch in train.batches(100, shuffle=True, generator=g):
            loss = model.loss(batch, "model", Progress(step=step, generator=g)).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if step == 300:
                break
    model.eval()
    x = test.tensors().x
    with torch.no_grad():
        nll = -model.log_prob(x).mean().item()
    mean = train.tensors().x.mean(0).clamp(1e-3, 1 - 1e-3)  # (1, 8, 8) independent Bernoulli pixels
    independent = -(x * mean.log() + (1 - x) * (1 - mean).log()).flatten(1).sum(1).mean().item()
    assert nll < 64 * math.log(2) - 10, nll
    assert nll < independent - 1.0, (nll, independent)
