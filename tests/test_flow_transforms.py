"""The flow transforms of dgm.nn.flows: one contract for every transform (float64 round trips both
ways, inverse log-det = -forward log-det, log-det = slogdet of the autograd Jacobian per example,
batch of one, gradients, save/load), plus known answers per layer (ActNorm's data-dependent init,
the masks, the identity of a fresh coupling, the refusals)."""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from dgm.errors import DgmError
from dgm.nn.flows import (
    ActNorm,
    Additive,
    Affine,
    Compose,
    ConvConditioner,
    Coupling,
    Elementwise,
    Inverse,
    InvertibleLinear,
    Logit,
    MLPConditioner,
    Permutation,
    Reverse,
    Squeeze,
    Transform,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)

# the conditioner of a coupling with nothing kept has a Linear(0, ...) first layer, which torch warns about
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")

F64 = torch.float64
B = 2  # examples per batch in the contract
VECTOR = (5,)  # one example's shape
IMAGE = (2, 4, 4)


def randomize_last(conditioner: nn.Module) -> nn.Module:
    """Re-randomises the zero-initialised last layer, so the coupling is not the identity."""
    last = [m for m in conditioner.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.3)
        last.bias.normal_(0, 0.3)
    return conditioner


def initialized_actnorm(shape: tuple[int, ...]) -> ActNorm:
    """An ActNorm initialised on a batch, then perturbed so it is not the data's standardisation."""
    norm = ActNorm(shape[0]).double()
    norm(3.0 + 2.0 * torch.randn(8, *shape, dtype=F64))
    with torch.no_grad():
        norm.bias.add_(0.5 * torch.randn_like(norm.bias))
        norm.log_scale.add_(0.5 * torch.randn_like(norm.log_scale))
    return norm


def perturbed_linear(channels: int) -> InvertibleLinear:
    """An InvertibleLinear moved off its orthogonal start, so its log-det is not zero."""
    layer = InvertibleLinear(channels).double()
    with torch.no_grad():
        layer.log_s.add_(0.3 * torch.randn_like(layer.log_s))
        layer.lower.add_(0.3 * torch.randn_like(layer.lower))
        layer.upper.add_(0.3 * torch.randn_like(layer.upper))
    return layer


def mlp_coupling(mask: Tensor, elementwise: Elementwise, context_features: int = 0) -> Coupling:
    kept = int(mask.sum())
    p = elementwise.params_per_dim
    cond = MLPConditioner(kept, (8, 8), (len(mask) - kept) * p, context_features)
    return Coupling(mask, randomize_last(cond), elementwise)


def conv_coupling(mask: Tensor, elementwise: Elementwise, channels: int = IMAGE[0],
                  context_channels: int = 0) -> Coupling:
    p = elementwise.params_per_dim
    if mask.shape[0] == 1:  # spatial: sees every channel (masked), parameters for every channel
        cond = ConvConditioner(channels, 8, channels * p, blocks=1, context_channels=context_channels)
    else:  # channel split
        kept = int(mask.sum())
        cond = ConvConditioner(kept, 8, (channels - kept) * p, blocks=1, context_channels=context_channels)
    return Coupling(mask, randomize_last(cond), elementwise)


def image_compose() -> Transform:
    """A small Glow-like stack: logit, actnorm, 1x1 conv, checkerboard coupling, squeeze, channel coupling."""
    return Compose(
        Logit(0.05),
        initialized_actnorm(IMAGE),
        perturbed_linear(IMAGE[0]),
        conv_coupling(checkerboard_mask(4, 4, 1), Affine()),
        Squeeze(2),  # (2, 4, 4) -> (8, 2, 2)
        conv_coupling(channel_mask(8, 1), Affine(), channels=8),
        Reverse(8),
    )


#: name -> (builder, one example's shape, whether inputs live in (0, 1), context shape or None)
CASES: dict[str, tuple[Callable[[], Transform], tuple[int, ...], bool, tuple[int, ...] | None]] = {
    "actnorm-vector": (lambda: initialized_actnorm(VECTOR), VECTOR, False, None),
    "actnorm-image": (lambda: initialized_actnorm(IMAGE), IMAGE, False, None),
    "linear-vector": (lambda: perturbed_linear(5), VECTOR, False, None),
    "linear-image": (lambda: perturbed_linear(2), IMAGE, False, None),
    "squeeze": (lambda: Squeeze(2), IMAGE, False, None),
    "logit": (lambda: Logit(0.05), IMAGE, True, None),
    "logit-pure": (lambda: Logit(0.0), VECTOR, True, None),
    "permutation": (lambda: Permutation(torch.tensor([2, 0, 4, 1, 3])), VECTOR, False, None),
    "reverse-channels": (lambda: Reverse(2), IMAGE, False, None),
    "compose-image": (image_compose, IMAGE, True, None),
    "inverse": (lambda: Inverse(mlp_coupling(half_mask(5, 0), Affine())), VECTOR, False, None),
    "coupling-context-vector": (lambda: mlp_coupling(half_mask(5, 1), Affine(), context_features=3),
                                VECTOR, False, (3,)),
    "coupling-context-image": (lambda: conv_coupling(checkerboard_mask(4, 4, 0), Affine(), context_channels=1),
                               IMAGE, False, (1, 4, 4)),
    "coupling-nothing-kept": (lambda: mlp_coupling(half_mask(1, 1), Affine()), (1,), False, None),
}
for _name, _family in (("additive", Additive), ("affine", Affine)):
    CASES |= {
        f"coupling-{_name}-half": (lambda f=_family: mlp_coupling(half_mask(5, 0), f()), VECTOR, False, None),
        f"coupling-{_name}-alternating": (lambda f=_family: mlp_coupling(alternating_mask(5, 1), f()),
                                          VECTOR, False, None),
        f"coupling-{_name}-channel": (lambda f=_family: conv_coupling(channel_mask(2, 0), f()), IMAGE, False, None),
        f"coupling-{_name}-checkerboard": (lambda f=_family: conv_coupling(checkerboard_mask(4, 4, 0), f()),
                                           IMAGE, False, None),
    }


def build(name: str, seed: int = 0) -> tuple[Transform, Tensor, Tensor | None]:
    """The transform (float64, eval mode) with a batch ``x`` ``(B, *shape)`` and its context."""
    builder, shape, unit, context_shape = CASES[name]
    torch.manual_seed(seed)
    t = builder().double().eval()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(B, *shape, generator=g, dtype=F64) * 0.9 + 0.05 if unit else torch.randn(
        B, *shape, generator=g, dtype=F64)
    context = None if context_shape is None else torch.randn(B, *context_shape, generator=g, dtype=F64)
    return t, x, context


@pytest.mark.parametrize("name", CASES)
def test_round_trip_both_ways(name):
    t, x, context = build(name)
    y, log_det = t(x, context)
    assert y.dtype == F64 and log_det.dtype == F64 and log_det.shape == (B,)
    assert y.numel() == x.numel()
    if y.shape == x.shape and "nothing" not in name:  # the map does something (Squeeze only reshapes)
        assert (y - x).abs().max() > 1e-2
    x_back, inv_log_det = t.inverse(y, context)
    assert (x_back - x).abs().max() < 1e-6
    torch.testing.assert_close(inv_log_det, -log_det, atol=1e-9, rtol=1e-9)
    # from the other side: any y (standard normal, the base) goes back and comes forward again
    z = torch.randn_like(y)
    x_z, inv_z = t.inverse(z, context)
    z_back, fwd_z = t(x_z, context)
    assert (z_back - z).abs().max() < 1e-6
    torch.testing.assert_close(fwd_z, -inv_z, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_log_det_is_the_autograd_jacobian(name):
    t, x, context = build(name)
    _, log_det = t(x, context)
    for b in range(B):
        c = None if context is None else context[b:b + 1]
        jac = torch.autograd.functional.jacobian(lambda v: t(v[None], c)[0][0], x[b])
        d = x[b].numel()
        sign, log_abs = torch.linalg.slogdet(jac.reshape(d, d))
        assert sign != 0
        assert abs(log_abs.item() - log_det[b].item()) < 1e-8, (log_abs.item(), log_det[b].item())
    if "additive" not in name and name not in ("squeeze", "permutation", "reverse-channels"):
        assert log_det.abs().max() > 1e-3  # not a volume-preserving map: the comparison has teeth


@pytest.mark.parametrize("name", CASES)
def test_batch_of_one_matches_the_batch(name):
    t, x, context = build(name)
    y, log_det = t(x, context)
    for b in range(B):
        c = None if context is None else context[b:b + 1]
        y1, ld1 = t(x[b:b + 1], c)
        assert y1.shape == (1, *y.shape[1:]) and ld1.shape == (1,)
        torch.testing.assert_close(y1, y[b:b + 1], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(ld1, log_det[b:b + 1], atol=1e-12, rtol=1e-12)
        x1, _ = t.inverse(y1, c)
        torch.testing.assert_close(x1, x[b:b + 1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_gradients_and_save_load(name):
    t, x, context = build(name)
    x.requires_grad_(True)
    y, log_det = t(x, context)
    (y.square().sum() + log_det.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for pname, p in t.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    y, log_det = y.detach(), log_det.detach()
    other, _, _ = build(name, seed=1)
    other.load_state_dict(t.state_dict())
    y2, log_det2 = other(x, context)
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
    torch.testing.assert_close(log_det2, log_det, atol=0, rtol=0)


# --- ActNorm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (3, 4, 5)])
def test_actnorm_init_standardises_the_first_batch(shape):
    norm = ActNorm(3).double()
    assert not norm.initialized
    x = 3.0 + 2.0 * torch.randn(16, *shape, dtype=F64) * torch.tensor([1.0, 5.0, 0.1], dtype=F64).view(
        1, 3, *([1] * (len(shape) - 1)))
    y, log_det = norm(x)
    dims = [0, *range(2, y.dim())]
    assert y.mean(dims).abs().max() < 1e-10
    assert (y.var(dims, correction=0) - 1).abs().max() < 1e-4  # the 1e-6 floor moves it by ~2e-6 / std
    assert bool(norm.initialized)
    n = math.prod(shape[1:])
    torch.testing.assert_close(log_det, (n * norm.log_scale.sum()).expand(16))
    # the second batch does not re-initialise
    bias = norm.bias.detach().clone()
    norm(torch.randn(16, *shape, dtype=F64))
    assert torch.equal(norm.bias, bias)


def test_actnorm_does_not_initialise_in_eval_mode():
    norm = ActNorm(3).double().eval()
    y, _ = norm(5.0 + torch.randn(4, 3, dtype=F64))
    assert not norm.initialized and torch.equal(norm.bias, torch.zeros(3, dtype=F64))
    assert y.mean() > 4  # the identity


def test_actnorm_loaded_state_is_not_reinitialised():
    trained = ActNorm(3).double()
    trained(3.0 + 2.0 * torch.randn(16, 3, 4, 4, dtype=F64))
    state = trained.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(3).double()
    fresh(torch.randn(8, 3, 4, 4, dtype=F64))  # initialised on other data first: load must overwrite it
    fresh.load_state_dict(state)
    fresh.train()
    other = torch.randn(8, 3, 4, 4, dtype=F64)
    y_fresh, _ = fresh(other)
    torch.testing.assert_close(fresh.bias, trained.bias)
    torch.testing.assert_close(fresh.log_scale, trained.log_scale)
    torch.testing.assert_close(y_fresh, trained(other)[0])
    # a never-initialised layer loading a never-initialised state initialises on its first batch
    blank = ActNorm(3).double()
    blank.load_state_dict(ActNorm(3).double().state_dict())
    y, _ = blank(3.0 + torch.randn(8, 3, dtype=F64))
    assert bool(blank.initialized) and y.mean().abs() < 1e-10


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 4, 4)])
def test_actnorm_batch_of_one_initialises_finite(shape):
    norm = ActNorm(3).double()
    x = torch.randn(*shape, dtype=F64)
    y, log_det = norm(x)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all() and bool(norm.initialized)
    torch.testing.assert_close(norm.inverse(y)[0], x)


# --- known answers for the other layers ------------------------------------------------------------
def test_invertible_linear_starts_orthogonal_and_matches_its_lu_factors():
    torch.manual_seed(0)
    layer = InvertibleLinear(4).double()
    w = layer.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=F64), atol=1e-5, rtol=0)
    with torch.no_grad():
        layer.log_s.add_(torch.tensor([0.1, -0.2, 0.3, 0.4], dtype=F64))
        layer.lower.normal_()
        layer.upper.normal_()
    x = torch.randn(3, 4, 5, 6, dtype=F64)
    y, log_det = layer(x)
    w = layer.weight()
    torch.testing.assert_close(y, torch.einsum("ij,bjhw->bihw", w, x))
    torch.testing.assert_close(log_det, 30 * torch.linalg.slogdet(w)[1].expand(3))


def test_squeeze_layout_and_refusal():
    x = torch.arange(16, dtype=F64).view(1, 1, 4, 4)
    y, _ = Squeeze(2)(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0, 1, 4, 5]  # the top-left 2x2 patch became the channels
    with pytest.raises(DgmError, match="cannot squeeze a 28x30 image by 4: use an image size divisible by 4"):
        Squeeze(4)(torch.zeros(1, 1, 28, 30))
    with pytest.raises(DgmError, match="cannot squeeze a 3x4 image by 2"):
        Squeeze(2)(torch.zeros(1, 1, 3, 4))


def test_logit_values():
    x = torch.tensor([[0.1, 0.5, 0.8]], dtype=F64)
    y, log_det = Logit(0.0)(x)
    torch.testing.assert_close(y, torch.log(x / (1 - x)))
    torch.testing.assert_close(log_det, -torch.log(x * (1 - x)).sum(1))
    p = 0.05 + 0.9 * x
    y, log_det = Logit(0.05)(x)
    torch.testing.assert_close(y, torch.log(p / (1 - p)))
    torch.testing.assert_close(log_det, (math.log(0.9) - torch.log(p * (1 - p))).sum(1))
    with pytest.raises(DgmError, match="alpha"):
        Logit(0.5)


def test_permutations():
    x = torch.randn(2, 4, 3, dtype=F64)
    assert torch.equal(Reverse(4)(x)[0], x.flip(1))
    assert torch.equal(Permutation(torch.tensor([1, 2, 0, 3]))(x)[0], x[:, [1, 2, 0, 3]])
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation(torch.tensor([0, 0, 1]))


def test_masks():
    assert checkerboard_mask(2, 3, 0).tolist() == [[[True, False, True], [False, True, False]]]
    assert checkerboard_mask(2, 3, 1).tolist() == [[[False, True, False], [True, False, True]]]
    assert channel_mask(4, 0).view(-1).tolist() == [True, True, False, False]
    assert channel_mask(4, 1).shape == (4, 1, 1) and channel_mask(4, 1).view(-1).tolist() == [False, False, True, True]
    assert alternating_mask(5, 0).tolist() == [True, False, True, False, True]
    assert alternating_mask(5, 1).tolist() == [False, True, False, True, False]
    assert half_mask(5, 0).tolist() == [True, True, True, False, False]
    assert half_mask(5, 1).tolist() == [False, False, False, True, True]
    assert half_mask(1, 0).tolist() == [True] and half_mask(1, 1).tolist() == [False]
    for mask in (checkerboard_mask(2, 3, 0), channel_mask(4, 0), alternating_mask(5, 0), half_mask(5, 0)):
        assert mask.dtype == torch.bool
    with pytest.raises(DgmError, match="splits the channels in halves, but there are 3: squeeze the image first"):
        channel_mask(3, 0)


FRESH = {
    "half": (lambda f: Coupling(half_mask(5, 0), MLPConditioner(3, (8,), 2 * f.params_per_dim), f), VECTOR),
    "alternating": (lambda f: Coupling(alternating_mask(5, 0), MLPConditioner(3, (8,), 2 * f.params_per_dim), f),
                    VECTOR),
    "channel": (lambda f: Coupling(channel_mask(2, 1), ConvConditioner(1, 8, f.params_per_dim, blocks=1), f), IMAGE),
    "checkerboard": (lambda f: Coupling(checkerboard_mask(4, 4, 1), ConvConditioner(2, 8, 2 * f.params_per_dim), f),
                     IMAGE),
}


@pytest.mark.parametrize("family", [Additive, Affine])
@pytest.mark.parametrize("mask", FRESH)
def test_fresh_coupling_is_the_identity(mask, family):
    builder, shape = FRESH[mask]
    torch.manual_seed(0)
    coupling = builder(family()).double()
    x = torch.randn(3, *shape, dtype=F64)
    y, log_det = coupling(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(3, dtype=F64))
    randomize_last(coupling.conditioner)  # the same layer with a live last layer is not
    assert (coupling(x)[0] - x).abs().max() > 1e-2


def test_coupling_refusals():
    with pytest.raises(ValueError, match="bool"):
        Coupling(half_mask(4, 0).float(), MLPConditioner(2, (4,), 2), Additive())
    with pytest.raises(ValueError, match="shape"):
        Coupling(torch.ones(2, 3, dtype=torch.bool), MLPConditioner(2, (4,), 2), Additive())
    coupling = Coupling(half_mask(4, 0), MLPConditioner(2, (4,), 3), Additive())  # needs 2 outputs, has 3
    with pytest.raises(ValueError, match="returned 3 channels"):
        coupling(torch.randn(2, 4))
    conditional = Coupling(half_mask(4, 0), MLPConditioner(2, (4,), 2, context_features=1), Additive())
    with pytest.raises(ValueError, match="pass a context"):
        conditional(torch.randn(2, 4))
