"""Known answers for the voxel data, the differentiable projections and the volumetric VAE
(Rezende et al. 2016, arXiv:1607.00662): gradients against finite differences, silhouettes of
known shapes against their closed forms, the data against counted voxels, both observation modes
of the model training with finite bounds, and IWAE >= ELBO."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dgm
from dgm.data import load, render, voxels
from dgm.errors import DgmError
from dgm.models import Progress, capabilities
from dgm.data import projection


# --- the data ------------------------------------------------------------------------------------
def test_voxels_are_deterministic_binary_and_rendered_from_their_factors():
    a, b = load("voxels", "test"), load("voxels", "test")
    torch.testing.assert_close(a.raw, b.raw, rtol=0, atol=0)
    assert a.spec.kind == "volume" and a.spec.shape == (1, 16, 16, 16) and a.spec.num_classes == 4
    assert set(a.raw.unique().tolist()) == {0, 1}
    assert (a.labels == a.factors[:, 0]).all()
    again = render(a.spec, a.factors[:50])  # every volume is its factors, rendered again
    torch.testing.assert_close(again.raw, a.raw[:50], rtol=0, atol=0)
    train = load("voxels", "train")
    assert len(train) == 10_000 and not torch.equal(train.raw[:100], a.raw[:100])
    assert (train.factors[:, 5] > 0).float().mean().item() == pytest.approx(0.8, abs=0.03)  # unions of two


def test_primitives_occupy_the_voxels_their_formulas_count():
    # a cube of half side 0.25 at the centre holds the centres (2i+1)/16 - 1 in [-0.25, 0.25]: 4 per axis
    none = [0, 0, 2, 2, 2]  # no second shape
    cube = voxels.render(np.array([[0, 0, 2, 2, 2, *none]]))[0, 0]
    assert cube.sum() == 4 ** 3
    # a sphere of radius 0.4: count the centres inside directly
    c = (2 * np.arange(16) + 1) / 16 - 1
    inside = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2 <= 0.4 ** 2).sum()
    assert voxels.render(np.array([[1, 2, 2, 2, 2, *none]]))[0, 0].sum() == inside
    cone = voxels.render(np.array([[3, 2, 2, 2, 2, *none]]))[0, 0].astype(int)  # apex up (low row index)
    rows = cone.sum(axis=(0, 2))
    filled = rows[rows > 0]
    assert (np.diff(filled) >= 0).all() and filled[0] < filled[-1]
    # cubes at x = -0.2 and +0.2 hold the centres in [-0.45, 0.05] and [-0.05, 0.45]: disjoint, 4 each along x
    union = voxels.render(np.array([[0, 0, 0, 2, 2, 1, 0, 4, 2, 2]]))[0, 0]
    assert union.sum() == 2 * 4 ** 3
    overlap = voxels.render(np.array([[0, 0, 2, 2, 2, 1, 0, 2, 2, 2]]))[0, 0]  # the same cube twice
    assert overlap.sum() == 4 ** 3


# --- the projections: finite differences -----------------------------------------------------------
def test_projection_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    volume = torch.rand(2, 1, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    angles = torch.tensor([0.3, -1.1], dtype=torch.float64, requires_grad=True)
    elevation = torch.tensor([0.2, 0.5], dtype=torch.float64, requires_grad=True)
    for how in ("absorption", "occupancy"):
        assert torch.autograd.gradcheck(lambda v, a, e: projection.project(v, a, e, how=how, step=0.7),
                                        (volume, angles, elevation))
    assert torch.autograd.gradcheck(lambda v: projection.shaded(v, 0.4, 0.3), (volume,))
    depth = torch.tensor([1e-3, 0.5, 0.999, 1.001, 3.0, 30.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(projection.absorption_logits, (depth,))


# --- the projections: closed forms -------------------------------------------------------------------
def _grid(n: int) -> torch.Tensor:
    return (2 * torch.arange(n, dtype=torch.float64) + 1) / n - 1


def test_absorption_of_a_uniform_slab_is_beer_lambert():
    rho, thickness, step = 0.3, 5, 0.25
    density = torch.zeros(1, 1, 8, 3, 3, dtype=torch.float64)
    density[:, :, 2:2 + thickness] = rho
    torch.testing.assert_close(projection.project(density, step=step),
                               torch.full((1, 1, 3, 3), 1 - math.exp(-rho * thickness * step), dtype=torch.float64))
    S = torch.tensor([1e-4, 0.5, 2.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(projection.absorption_logits(S)), -torch.expm1(-S))


def test_a_sphere_projects_to_the_disk_of_its_radius_from_every_angle():
    n, r = 15, 0.6  # odd: the centre is a voxel centre, so the silhouette is the disk exactly
    c = _grid(n)
    sphere = ((c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) <= r ** 2).double()[None, None]
    disk = (c[:, None] ** 2 + c[None, :] ** 2 <= r ** 2).double()
    for how in ("occupancy", "max"):
        torch.testing.assert_close(projection.project(sphere, how=how)[0, 0], disk, rtol=0, atol=0)
    turned = projection.project(sphere, 0.7, 0.4, how="occupancy")[0, 0] > 0.5  # trilinear: up to the rim
    iou = (turned & disk.bool()).sum() / (turned | disk.bool()).sum()
    assert iou > 0.85 and (turned ^ disk.bool()).sum() <= 12


def test_a_box_projects_to_a_rectangle_and_turns_a_quarter_into_its_other_side():
    n = 12
    c = _grid(n)
    hx, hy, hz = 0.7, 0.4, 0.2  # half sides along x, y, z
    box = ((c.abs()[:, None, None] <= hz) & (c.abs()[None, :, None] <= hy)
           & (c.abs()[None, None, :] <= hx)).double()[None, None]  # (1, 1, D=z, H=y, W=x)
    rect = ((c.abs()[:, None] <= hy) & (c.abs()[None, :] <= hx)).double()
    torch.testing.assert_close(projection.project(box, how="max")[0, 0], rect, rtol=0, atol=0)
    side = ((c.abs()[:, None] <= hy) & (c.abs()[None, :] <= hz)).double()  # seen after a quarter turn
    torch.testing.assert_close(projection.project(box, math.pi / 2, how="occupancy")[0, 0], side, rtol=0, atol=1e-9)
    R = projection.rotation_matrix(torch.tensor([0.3, 2.0]), torch.tensor([0.5, -0.1]))
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)


# --- the model ------------------------------------------------------------------------------------
TINY = {"latent_dim": 4, "width": 4}


def _data(n: int = 64):
    return load("voxels", "test", representation="binary-dynamic").subset(n)


def _trained(observe: str, steps: int = 30) -> tuple[dgm.models.GenerativeModel, list[float]]:
    data = _data()
    torch.manual_seed(0)
    model = dgm.create("voxel-vae", data.spec, observe=observe, **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        out = model.loss(data.tensors(64), "model", Progress(generator=g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return model, losses


@pytest.mark.parametrize("observe", ["volume", "views"])
def test_both_modes_train_with_finite_bounds_and_iwae_above_elbo(observe):
    model, losses = _trained(observe, steps=30)
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    x = _data(16).tensors(16).x
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(30)]).mean(0)  # E[L_1], the analytic-KL ELBO
        iwae = model.iwae_bound(x, 30)
    assert torch.isfinite(iwae).all() and torch.isfinite(elbo).all()
    assert iwae.mean() >= elbo.mean()
    have = capabilities(model)
    if observe == "views":  # bounds of the silhouettes, not of the volumes: not offered to evaluation
        assert {"shape_from_view", "encode", "reconstruct"} <= have and not {"elbo", "iwae_bound"} & have
        view = model.views(x, first=True)
        assert view.shape == (16, 1, 16, 16) and set(view.unique().tolist()) <= {0.0, 1.0}
        shape = model.shape_from_view(view)
        assert shape.shape == (16, 1, 16, 16, 16) and ((shape >= 0) & (shape <= 1)).all()
    else:
        assert {"elbo", "iwae_bound"} <= have and "shape_from_view" not in have
        with pytest.raises(DgmError, match="observe=views"):
            model.shape_from_view(torch.zeros(1, 1, 16, 16))


def test_view_likelihood_is_the_probability_that_a_ray_meets_an_occupied_voxel():
    data = _data(4)
    model = dgm.create("voxel-vae", data.spec, observe="views", views=(0.0,), elevation=0.0, **TINY)
    logits = torch.randn(4, 1, 16, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lit = 1 - (1 - torch.sigmoid(logits)).prod(2)  # eq. (1), independent voxels, the straight view
    torch.testing.assert_close(torch.sigmoid(model.view_logits(logits)), lit)
    # the data's silhouette of that view is the max along depth
    x = data.tensors(4).x
    torch.testing.assert_close(model.views(x), x.amax(2), rtol=0, atol=0)


def test_voxel_vae_refuses_images_and_figures_turn_the_samples():
    from conftest import image_dataset

    with pytest.raises(DgmError, match="voxel volumes"):
        dgm.create("voxel-vae", image_dataset(n=8).spec)
    model = dgm.create("voxel-vae", _data(4).spec, **TINY)
    (title, pictures, columns, _), = model.report_figures(generator=torch.Generator().manual_seed(0))
    assert pictures.shape == (8 * columns, 1, 64, 64) and columns == 8
    from dgm.data.pictures import sample_picture

    assert sample_picture(_data(4).tensors(4).x, _data(4).spec).size[0] > 64


def test_the_report_turns_test_volumes_beside_the_shapes_inferred_from_one_view():
    from dgm.data.voxels import TURN
    from dgm.data.projection import shaded
    from dgm.report.html import inferred_shapes_figure

    model, _ = _trained("views", steps=2)
    data = _data(4)
    figure = inferred_shapes_figure(model.eval(), data, count=2)
    assert figure.title == "Inferred shapes, turning" and "silhouette at azimuth 0" in figure.caption
    # 2 pairs of rows of len(TURN) views, each 64 px (16^3 enlarged 4x) with the grid's 1-px lines
    assert figure.picture.size == (len(TURN) * 65 + 1, 4 * 65 + 1)
    # the first cell is the first test volume seen straight on (azimuth 0, elevation 25)
    first = np.asarray(figure.picture)[1:65, 1:65].astype(np.float64) / 255
    first = first if first.ndim == 2 else first[..., 0]
    straight = shaded(data.tensors(1).x.float(), 0.0, math.radians(25.0))[0, 0]
    expected = straight.repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()
    assert np.abs(first - expected).max() <= 1 / 255 + 1e-6
