"""Known answers for the exchangeable set flow (``set-flow``, :mod:`dgm.models.set_flow`, networks in
:mod:`dgm.nn.set_flow`), in float64: exact inverses that leave the padding alone, log-determinants
equal to the autograd Jacobian's over the real points, a density the same for every order of the
points, the size distribution in the density and in the samples, ActNorm's initialisation on real
points only, and the refusals."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import image_dataset
from dgm.data import load
from dgm.data.core import DataSpec
from dgm.data.pictures import real_mask
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models.set_flow import SetFlow
from dgm.nn.flows import Affine
from dgm.nn.set_flow import PointwiseAffine, SetConditioner, SetCoupling, visible_keys

N = 8  # slots per set in the small tests
TINY = {"couplings": 3, "width": 8, "heads": 2, "blocks": 1}
ELEMENTWISE = ["affine", "spline"]


def points_spec(slots: int = N, dims: int = 2) -> DataSpec:
    return DataSpec("points", (slots, dims), "continuous", levels=None, kind="points")


def model(elementwise: str = "spline", dims: int = 2, seed: int = 0, **settings) -> SetFlow:
    """A small set flow in float64 whose couplings and ActNorms are *not* the identity (random output
    layers and affine parameters), in eval mode."""
    torch.manual_seed(seed)
    flow = create("set-flow", points_spec(dims=dims), **{**TINY, "elementwise": elementwise, **settings}).double()
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, SetConditioner):
                module.out.weight.normal_(0, 0.3)
                module.out.bias.normal_(0, 0.3)
            if isinstance(module, PointwiseAffine):
                module.log_scale.normal_(0, 0.3)
                module.shift.normal_(0, 0.3)
                module.initialized.fill_(True)
        flow.size_logits.normal_()
    return flow.eval()


def sets(batch: int = 3, dims: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(batch, N, dims)`` with real points scattered among the slots (2, 5, N, ...) and
    padding that is *not* at the origin, so leaving it alone is seen."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N, dims, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, N, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, [0, 2, 3, 6, 7]] = True
    mask[2:] = True
    return x, mask


# --- the networks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("elementwise", ELEMENTWISE)
@pytest.mark.parametrize("dims", [2, 3])
def test_the_flow_inverts_exactly_and_leaves_the_padding_alone(elementwise, dims):
    flow = model(elementwise, dims=dims).flow
    x, mask = sets(dims=dims)
    z, log_det = flow(x, mask)
    back, inverse_log_det = flow.inverse(z, mask)
    assert (back - x).abs().max() < 1e-6
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-9, atol=1e-9)
    assert torch.equal(z[~mask], x[~mask])  # padding untouched, bit for bit
    assert (z[mask] - x[mask]).abs().min() > 0  # and the real points moved (the test flow is not the identity)


@pytest.mark.parametrize("elementwise", ELEMENTWISE)
def test_log_det_is_the_autograd_jacobian_over_the_real_points(elementwise):
    flow = model(elementwise).flow
    x, mask = sets()
    for b in range(len(x)):  # sets of 2, 5 and N real points
        def f(real: torch.Tensor, b: int = b) -> torch.Tensor:
            xb = x[b:b + 1].clone()
            xb[0, mask[b]] = real.view(-1, 2)
            return flow(xb, mask[b:b + 1])[0][0, mask[b]].flatten()  # (n D,)

        jacobian = torch.autograd.functional.jacobian(f, x[b, mask[b]].flatten())  # (n D, n D)
        _, log_abs_det = torch.linalg.slogdet(jacobian)
        torch.testing.assert_close(flow(x[b:b + 1], mask[b:b + 1])[1][0], log_abs_det, rtol=1e-9, atol=1e-9)


def test_a_coupling_maps_one_coordinate_from_the_others_of_the_real_points_only():
    torch.manual_seed(0)
    coupling = SetCoupling(2, 1, Affine(), width=8, heads=2, blocks=2).double()
    torch.nn.init.normal_(coupling.conditioner.out.weight)
    x, mask = sets()
    y, _ = coupling(x, mask)
    assert torch.equal(y[..., 0], x[..., 0])  # the other coordinate passes
    moved = x.clone()
    moved[~mask] = 5 * torch.randn_like(x[~mask])  # other padding values: nothing real may change
    y_moved, log_det_moved = coupling(moved, mask)
    torch.testing.assert_close(y_moved[mask], y[mask], rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det_moved, coupling(x, mask)[1], rtol=0, atol=1e-12)


def test_the_conditioner_is_finite_on_sets_without_a_real_point():
    torch.manual_seed(0)
    net = SetConditioner(1, 3, width=8, heads=2, blocks=2)
    torch.nn.init.normal_(net.out.weight)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[1, :3] = True  # one empty set, one of 3 points
    h = torch.randn(2, N, 1, requires_grad=True)
    out = net(h, mask)
    assert out.isfinite().all()
    assert out[1, :3].abs().sum() > 0
    out.sum().backward()
    assert h.grad.isfinite().all()
    # the guard itself (some attention kernels give NaN for a query with no key; this CPU one gives 0):
    # an empty set's queries see all its slots, a set with points sees its real points only
    keys = visible_keys(mask)
    assert keys[0].all() and torch.equal(keys[1], mask[1])


def test_actnorm_initialises_on_the_real_points_of_the_first_training_batch(tmp_path):
    actnorm = PointwiseAffine(2).double()
    x, mask = sets()
    x = x * torch.tensor([3.0, 0.5], dtype=torch.float64) + torch.tensor([2.0, -1.0], dtype=torch.float64)
    x[~mask] = 0  # padding at the origin: it would pull the statistics if it counted
    actnorm.eval()
    assert torch.equal(actnorm(x, mask)[0], x)  # not in eval mode: the identity until trained
    actnorm.train()
    y, log_det = actnorm(x, mask)
    torch.testing.assert_close(y[mask].mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y[mask].std(0), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det, -mask.sum(1).double() * x[mask].std(0).log().sum())
    clone = PointwiseAffine(2).double()
    clone.load_state_dict(actnorm.state_dict())
    clone.train()
    torch.testing.assert_close(clone(2 * x, mask)[0], actnorm(2 * x, mask)[0])  # loaded: not initialised again


# --- the density ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("elementwise", ELEMENTWISE)
def test_at_initialisation_log_prob_is_the_size_prior_plus_a_standard_normal(elementwise):
    flow = create("set-flow", points_spec(), **{**TINY, "elementwise": elementwise}).double().eval()
    with torch.no_grad():
        flow.size_logits.normal_(generator=torch.Generator().manual_seed(0))
    x, mask = sets()
    n = mask.sum(1)
    log_pn = flow.size_logits.log_softmax(0)[n - 1]
    normal = (-0.5 * x ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B, N)
    expected = log_pn + (normal * mask).sum(1)
    torch.testing.assert_close(flow.log_prob(x, mask=mask), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("elementwise", ELEMENTWISE)
def test_log_prob_is_the_same_for_every_order_of_the_points(elementwise):
    flow = model(elementwise)
    x, mask = sets()
    log_p = flow.log_prob(x, mask=mask)
    g = torch.Generator().manual_seed(3)
    within = x.clone()  # the real points of each set permuted among their own slots
    for b in range(len(x)):
        slots = mask[b].nonzero().squeeze(1)
        within[b, slots] = x[b, slots[torch.randperm(len(slots), generator=g)]]
    assert not torch.equal(within, x)
    torch.testing.assert_close(flow.log_prob(within, mask=mask), log_p, rtol=1e-10, atol=1e-10)
    order = torch.randperm(N, generator=g)  # every slot, with the mask
    torch.testing.assert_close(flow.log_prob(x[:, order], mask=mask[:, order]), log_p, rtol=1e-10, atol=1e-10)
    assert (log_p != flow.log_prob(x + 0.1, mask=mask)).all()  # while the points themselves do matter


def test_the_size_distribution_enters_the_density():
    flow = model()
    x, mask = sets()
    n = mask.sum(1)
    before, log_pn_before = flow.log_prob(x, mask=mask), flow.size_logits.log_softmax(0)
    with torch.no_grad():
        flow.size_logits[1] += 2.0  # n = 2, the first set's size, more likely; the others less
    change = flow.size_logits.log_softmax(0) - log_pn_before
    torch.testing.assert_close(flow.log_prob(x, mask=mask) - before, change[n - 1], rtol=1e-9, atol=1e-12)
    assert change[1] > 0 > change[4]
    assert flow.log_prob(x, mask=torch.zeros_like(mask)).eq(-torch.inf).all()  # no set of 0 points


def test_without_a_mask_the_real_points_are_those_off_the_origin():
    flow = model()
    x, mask = sets()
    x[~mask] = 0
    torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x, mask=mask), rtol=0, atol=0)


# --- sampling -------------------------------------------------------------------------------------------
def test_samples_have_the_requested_size_and_sizes_follow_p_n():
    flow = model()
    spec = flow.spec
    x = flow.sample(6, generator=torch.Generator().manual_seed(0), size=5)
    assert x.shape == (6, N, 2)
    assert (real_mask(x, spec).sum(1) == 5).all()
    assert (x[:, 5:] == 0).all() and x[:, :5].isfinite().all()  # real points first, padding at the origin
    with torch.no_grad():
        flow.size_logits.fill_(-1e4)
        flow.size_logits[4] = 0  # all mass on n = 5
    x = flow.sample(20, generator=torch.Generator().manual_seed(1))
    assert (real_mask(x, spec).sum(1) == 5).all()
    with torch.no_grad():
        flow.size_logits[1] = 0  # half on n = 2, half on n = 5
    sizes = real_mask(flow.sample(400, generator=torch.Generator().manual_seed(2)), spec).sum(1)
    assert set(sizes.tolist()) == {2, 5} and 150 < (sizes == 2).sum() < 250


def test_temperature_scales_the_base_noise():
    flow = create("set-flow", points_spec(), **TINY).double().eval()  # the identity at initialisation
    cold = flow.sample(4, generator=torch.Generator().manual_seed(0), size=N, temperature=0.5)
    warm = flow.sample(4, generator=torch.Generator().manual_seed(0), size=N)
    torch.testing.assert_close(cold, 0.5 * warm)


def test_sampling_refuses_what_it_cannot_do():
    flow = model()
    with pytest.raises(DgmError, match="sets hold 1 to 8 points"):
        flow.sample(2, size=N + 1)
    with pytest.raises(DgmError, match="unconditional"):
        flow.sample(2, torch.tensor([0]))
    with pytest.raises(DgmError, match="no sampler 'langevin'"):
        flow.sample(2, sampler="langevin")


# --- on the data ----------------------------------------------------------------------------------------
def test_refuses_data_that_is_not_point_sets():
    images = image_dataset(n=8).spec
    with pytest.raises(DgmError, match="models sets of points.*--data shapes2d"):
        SetFlow.default_representation(SetFlow.Config(), images)
    with pytest.raises(DgmError, match="models sets of points.*--data shapes2d"):
        create("set-flow", images)
    with pytest.raises(DgmError, match="at least 2 coordinates"):
        create("set-flow", points_spec(dims=1))
    with pytest.raises(DgmError, match="multiple of model.heads"):
        create("set-flow", points_spec(), width=10, heads=4)


@pytest.mark.parametrize("elementwise", ELEMENTWISE)
def test_loss_on_shapes2d_is_finite_and_reaches_every_parameter(elementwise):
    data = load("shapes2d", "train").subset(32)
    torch.manual_seed(0)
    flow = create("set-flow", data.spec, **{**TINY, "elementwise": elementwise})
    assert SetFlow.default_representation(flow.config, data.spec) == "continuous"
    for module in flow.modules():  # off the identity: a zero output layer gives the weights below it no gradient
        if isinstance(module, SetConditioner):
            torch.nn.init.normal_(module.out.weight, std=0.1)
    batch = data.tensors()
    out = flow.loss(batch, "model", Progress())
    assert out.loss.ndim == 0 and out.loss.isfinite()
    torch.testing.assert_close(out.metrics["nll_per_point"], out.loss.detach())
    expected = -flow.log_prob(batch.x, mask=batch.mask).sum() / data.lengths.sum()  # nats per real point
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    silent = [name for name, p in flow.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


def test_a_few_steps_of_training_lower_the_loss():
    data = load("shapes2d", "train").subset(64)
    torch.manual_seed(0)
    flow = create("set-flow", data.spec, couplings=2, width=16, heads=2, blocks=1, elementwise="affine")
    optimiser = torch.optim.Adam(flow.parameters(), lr=1e-2)
    batch = data.tensors()
    losses = []
    for _ in range(60):
        out = flow.loss(batch, "model", Progress())
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.2, losses  # nats per point, from the ActNorm'd Gaussian at step 0
