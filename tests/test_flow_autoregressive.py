"""Known answers for the autoregressive flow pieces, in float64: the rational-quadratic spline
(dgm.nn.splines) against autograd and its own inverse, MADE's autoregressive property by autograd
Jacobians, and the masked autoregressive transform (dgm.nn.made) and its inverse (an IAF) for the
additive, affine and spline families: exact round trips and log-determinants equal to the slogdet
of the autograd Jacobian."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from dgm.errors import DgmError
from dgm.nn.flows import Additive, Affine, Inverse
from dgm.nn.made import MADE, MaskedAutoregressive
from dgm.nn.splines import RationalQuadraticSpline

DT = torch.float64
BOUND = 3.0


def spline_inputs() -> torch.Tensor:
    """Points spanning [-5, 5], with the bound itself, just inside and just outside it, ``(N,)``."""
    edges = torch.tensor([-BOUND, BOUND, -BOUND + 1e-12, BOUND - 1e-12, -BOUND - 1e-12, BOUND + 1e-12,
                          -5.0, 5.0, 0.0], dtype=DT)
    return torch.cat([torch.linspace(-5, 5, 301, dtype=DT), edges])


def random_params(n: int, spline: RationalQuadraticSpline, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, spline.params_per_dim, generator=g, dtype=DT)


# --- the rational-quadratic spline -------------------------------------------------------------------
@pytest.mark.parametrize("bins", [1, 2, 8])
def test_spline_round_trips_both_ways(bins):
    spline = RationalQuadraticSpline(bins=bins, bound=BOUND)
    v = spline_inputs()
    params = random_params(len(v), spline)
    y, log_d = spline.forward(v, params)
    x_back, log_d_back = spline.inverse(y, params)
    assert (x_back - v).abs().max() < 1e-10
    assert (log_d + log_d_back).abs().max() < 1e-10
    # and from the other side: v read as outputs
    x, log_d_inv = spline.inverse(v, params)
    y_back, log_d_fwd = spline.forward(x, params)
    assert (y_back - v).abs().max() < 1e-10
    assert (log_d_inv + log_d_fwd).abs().max() < 1e-10
    if bins > 1:  # one bin from (-B, -B) to (B, B) with end slopes 1 can only be the identity
        inside = v.abs() < BOUND - 0.1
        assert (y[inside] - v[inside]).abs().max() > 0.1  # random parameters moved the points


def test_spline_log_derivative_is_autograds():
    spline = RationalQuadraticSpline(bins=6, bound=BOUND)
    v = spline_inputs()
    params = random_params(len(v), spline, seed=1)
    for direction in (spline.forward, spline.inverse):
        x = v.clone().requires_grad_(True)
        out, log_d = direction(x, params)
        (grad,) = torch.autograd.grad(out.sum(), x)  # elementwise, so the gradient is d out_i / d x_i
        assert torch.allclose(log_d, grad.log(), atol=1e-9, rtol=0)


def test_spline_is_monotone_and_identity_outside_with_c1_joins():
    spline = RationalQuadraticSpline(bins=8, bound=BOUND)
    v = torch.linspace(-5, 5, 2001, dtype=DT)
    params = random_params(1, spline, seed=2).expand(len(v), -1)  # one spline for every point
    y, log_d = spline.forward(v, params)
    assert (y.diff() > 0).all()
    outside = v.abs() > BOUND
    assert torch.equal(y[outside], v[outside]) and torch.equal(log_d[outside], torch.zeros_like(v[outside]))
    assert (y[~outside].abs() <= BOUND).all()
    # the boundary derivatives are 1, so the spline meets the identity tails in value and slope
    at_bound, log_d_at_bound = spline.forward(torch.tensor([-BOUND, BOUND], dtype=DT), params[:2])
    assert torch.equal(at_bound, torch.tensor([-BOUND, BOUND], dtype=DT))
    assert log_d_at_bound.abs().max() < 1e-12
    x, _ = spline.inverse(v, params)
    assert (x.diff() > 0).all()
    assert log_d[~outside].abs().max() > 0.1  # a curved spline: the checks above have teeth


def test_spline_zero_params_is_the_identity_with_derivative_one_at_the_knots():
    bins = 5
    spline = RationalQuadraticSpline(bins=bins, bound=BOUND)
    knots = torch.linspace(-BOUND, BOUND, bins + 1, dtype=DT)  # zero widths -> equal bins
    v = torch.cat([knots, spline_inputs()])
    zeros = torch.zeros(len(v), spline.params_per_dim, dtype=DT)
    y, log_d = spline.forward(v, zeros)
    assert (log_d[: bins + 1]).abs().max() < 1e-12  # derivative 1 at every knot
    assert (y - v).abs().max() < 1e-12 and log_d.abs().max() < 1e-12
    x, log_d_inv = spline.inverse(v, zeros)
    assert (x - v).abs().max() < 1e-12 and log_d_inv.abs().max() < 1e-12


def test_spline_gradients_reach_the_parameters_and_stay_finite():
    spline = RationalQuadraticSpline(bins=4, bound=BOUND)
    v = spline_inputs()
    params = random_params(len(v), spline, seed=3).requires_grad_(True)
    y, log_d = spline.forward(v, params)
    x, log_d_inv = spline.inverse(v, params)
    (grad,) = torch.autograd.grad((y + log_d + x + log_d_inv).sum(), params)
    assert torch.isfinite(grad).all()
    inside = v.abs() < BOUND
    assert (grad[inside].abs().sum(1) > 0).all()
    assert torch.equal(grad[v.abs() > BOUND], torch.zeros_like(grad[v.abs() > BOUND]))


def test_spline_refuses_bins_that_do_not_fit():
    with pytest.raises(DgmError, match="do not fit"):
        RationalQuadraticSpline(bins=10, min_bin_width=0.2)
    with pytest.raises(DgmError, match="parameters"):
        spline = RationalQuadraticSpline(bins=3)
        spline.forward(torch.zeros(2, dtype=DT), torch.zeros(2, 7, dtype=DT))


# --- MADE --------------------------------------------------------------------------------------------
def randomise(module: nn.Module, seed: int = 0, std: float = 0.5) -> None:
    """Random weights everywhere, the zero-initialised output layer included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def made_jacobians(made: MADE, context_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """d params / d x ``(D, P, D)`` and d params / d context ``(D, P, C)`` at one random point."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(made.features, generator=g, dtype=DT)
    if not context_features:
        return jacobian(lambda v: made(v[None])[0], x), None
    c = torch.randn(context_features, generator=g, dtype=DT)
    return jacobian(lambda v, w: made(v[None], w[None])[0], (x, c))


ORDERS = {
    "natural": (5, None),
    "permuted": (6, torch.randperm(6, generator=torch.Generator().manual_seed(4))),
    "one-dimension": (1, None),
}


@pytest.mark.parametrize("context_features", [0, 3])
@pytest.mark.parametrize("key", ORDERS)
def test_made_is_autoregressive_in_its_order(key, context_features):
    D, order = ORDERS[key]
    torch.manual_seed(0)
    made = MADE(D, (64, 64), 3, context_features=context_features, order=order).to(DT)
    assert torch.equal(made(torch.randn(2, D, dtype=DT), torch.randn(2, context_features, dtype=DT)),
                       torch.zeros(2, D, 3, dtype=DT))  # the output layer starts at zero
    randomise(made)
    d_x, d_context = made_jacobians(made, context_features)
    position = torch.argsort(order if order is not None else torch.arange(D))
    before = position[None, :] < position[:, None]  # (D, D): [d, j] = j comes before d
    depends = d_x.abs().amax(1) > 0  # (D, D): params[d] moves with x[j]
    assert torch.equal(depends, before)  # never on later inputs nor itself; on every earlier one
    if context_features:
        # every dimension (the first in the order, and D = 1, included) reads the context
        assert (d_context.abs().amax(dim=(1, 2)) > 0).all()


def test_made_refuses_a_wrong_order_and_a_missing_context():
    with pytest.raises(DgmError, match="permutation"):
        MADE(3, (8,), 2, order=torch.tensor([0, 0, 2]))
    made = MADE(3, (8,), 2, context_features=2)
    with pytest.raises(DgmError, match="context"):
        made(torch.zeros(1, 3))


# --- the masked autoregressive transform and its inverse ---------------------------------------------
FAMILIES = {
    "additive": Additive,
    "affine": Affine,
    "spline": lambda: RationalQuadraticSpline(bins=5, bound=BOUND),
}
D = 5


def make_transform(family: str, context_features: int, iaf: bool, order: torch.Tensor | None = None):
    torch.manual_seed(0)
    maf = MaskedAutoregressive(D, (32, 32), FAMILIES[family](), context_features=context_features, order=order)
    transform = Inverse(maf) if iaf else maf
    return transform.to(DT)


def inputs(batch: int, context_features: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(batch, D, generator=g, dtype=DT)  # some beyond the spline's bound
    context = torch.randn(batch, context_features, generator=g, dtype=DT) if context_features else None
    return x, context


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("iaf", [False, True], ids=["maf", "iaf"])
def test_fresh_transform_is_the_identity(family, iaf):
    transform = make_transform(family, 2, iaf)
    x, context = inputs(3, 2)
    for direction in (transform.forward, transform.inverse):
        y, log_abs_det = direction(x, context)
        assert torch.allclose(y, x, atol=1e-12, rtol=0) and log_abs_det.abs().max() < 1e-12


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("context_features", [0, 3])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("iaf", [False, True], ids=["maf", "iaf"])
def test_round_trip_and_log_det_against_autograd(family, context_features, batch, iaf):
    order = torch.tensor([3, 0, 4, 1, 2]) if context_features else None
    transform = make_transform(family, context_features, iaf, order)
    randomise(transform, seed=5, std=0.4)
    x, context = inputs(batch, context_features)

    y, log_det = transform(x, context)
    x_back, log_det_back = transform.inverse(y, context)
    assert (x_back - x).abs().max() < 1e-8
    assert (log_det + log_det_back).abs().max() < 1e-8
    z, log_det_inv = transform.inverse(x, context)
    x_again, log_det_fwd = transform(z, context)
    assert (x_again - x).abs().max() < 1e-8
    assert (log_det_inv + log_det_fwd).abs().max() < 1e-8
    assert (y - x).abs().max() > 1e-2  # randomised: not the identity
    if family != "additive":
        assert log_det.abs().max() > 1e-2

    for direction, expected in ((transform.forward, log_det), (transform.inverse, log_det_inv)):
        J = jacobian(lambda v: direction(v, context)[0], x)  # (B, D, B, D)
        for b in range(batch):
            sign, logabsdet = torch.linalg.slogdet(J[b, :, b, :])
            assert sign != 0
            assert abs(logabsdet - expected[b]) < 1e-8
            others = torch.cat([J[b, :, :b], J[b, :, b + 1:]], dim=1)  # examples do not mix
            assert not others.any()


@pytest.mark.parametrize("family", FAMILIES)
def test_context_changes_the_transform(family):
    transform = make_transform(family, 3, iaf=False)
    randomise(transform, seed=6, std=0.4)
    x, context = inputs(4, 3)
    x = x.clamp(-BOUND + 0.5, BOUND - 0.5)  # inside the spline's interval, where it is not the identity
    y, _ = transform(x, context)
    y_other, _ = transform(x, context + 1)
    assert ((y - y_other).abs() > 1e-6).all()  # every dimension, the first in the order too
