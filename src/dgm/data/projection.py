"""Differentiable projections of voxel volumes to 2-D views, in torch.

Rezende, Eslami, Mohamed, Battaglia, Jaderberg & Heess 2016, "Unsupervised Learning of 3D Structure
from Images", NeurIPS, arXiv:1607.00662: a generative model of volumes is trained from images alone
by passing its volume through a projection operator (their section 2.2, "Volumetric renderer")
that is differentiable, so the image likelihood's gradient reaches the volume.

A volume is ``(B, C, D, H, W)``: depth ``z`` (index ``d``), rows ``y`` (index ``h``, downwards) and
columns ``x`` (index ``w``), the normalised coordinates of voxel ``i`` of ``n`` being
``(2 i + 1) / n - 1`` (``grid_sample``'s ``align_corners=False``). A view looks along ``+z`` after
the volume is rotated, so every view is ``(B, C, H, W)``.

Rotation (trilinear resampling, zeros outside the grid)::

    V'(p) = V(R p),  R = R_y(azimuth) R_x(elevation)                                       (1)

Projections along the ray through pixel (h, w), with step ``s`` (the length of a voxel in the units
of the density):

    absorption  I = 1 - exp(-s sum_d rho_d)       (emission-free Beer-Lambert, a slab of density rho
                                                   and thickness T voxels gives 1 - exp(-rho T s))   (2)
    occupancy   I = 1 - prod_d (1 - o_d)          (the probability that the ray meets an occupied
                                                   voxel when voxels are independent Bernoulli(o_d)) (3)
    max         I = max_d v_d                                                                      (4)

(3) is (2) with ``rho = -log(1 - o)`` and ``s = 1``: a decoder's Bernoulli logits ``l`` give
``rho = softplus(l)``, and the log-odds of a lit pixel are ``log(expm1(S))`` with the optical depth
``S = s sum_d rho_d`` (:func:`absorption_logits`), so a silhouette can be scored by a Bernoulli
likelihood without leaving log space. :func:`shaded` draws a picture (front-to-back compositing with
a depth cue), for figures only.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Projection = Literal["absorption", "occupancy", "max"]


def rotation_matrix(azimuth: Tensor, elevation: Tensor | None = None) -> Tensor:
    """``R = R_y(azimuth) R_x(elevation)`` of eq. (1), ``(B, 3, 3)``, for angles in radians ``(B,)``
    (azimuth turns about the vertical ``y`` axis, elevation tilts about ``x``), in (x, y, z) order."""
    elevation = torch.zeros_like(azimuth) if elevation is None else elevation.to(azimuth)
    ca, sa, ce, se = azimuth.cos(), azimuth.sin(), elevation.cos(), elevation.sin()
    one, zero = torch.ones_like(azimuth), torch.zeros_like(azimuth)
    r_y = torch.stack([torch.stack([ca, zero, sa], -1), torch.stack([zero, one, zero], -1),
                       torch.stack([-sa, zero, ca], -1)], -2)
    r_x = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, ce, -se], -1),
                       torch.stack([zero, se, ce], -1)], -2)
    return r_y @ r_x


def rotate(volume: Tensor, rotation: Tensor) -> Tensor:
    """The volume resampled at ``R p`` (eq. 1), trilinear, zero outside the grid: ``(B, C, D, H, W)``
    for ``volume`` ``(B, C, D, H, W)`` and ``rotation`` ``(B, 3, 3)`` (or ``(3, 3)`` for all)."""
    B = volume.shape[0]
    rotation = rotation.to(volume.dtype).expand(B, 3, 3)
    theta = torch.cat([rotation, rotation.new_zeros(B, 3, 1)], -1)  # (B, 3, 4): no translation
    grid = F.affine_grid(theta, list(volume.shape), align_corners=False)  # (B, D, H, W, 3)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def turned(volume: Tensor, azimuth: float | Tensor, elevation: float | Tensor = 0.0) -> Tensor:
    """``volume`` ``(B, C, D, H, W)`` rotated to be seen from ``azimuth`` and ``elevation`` (radians;
    floats, or ``(B,)`` tensors); the identity (no resampling) at zero angles given as floats."""
    if isinstance(azimuth, float) and isinstance(elevation, float) and azimuth == 0.0 and elevation == 0.0:
        return volume
    B = volume.shape[0]

    def angle(a: float | Tensor) -> Tensor:
        return a.to(volume) if isinstance(a, Tensor) else torch.full((B,), float(a), dtype=volume.dtype,
                                                                     device=volume.device)

    return rotate(volume, rotation_matrix(angle(azimuth), angle(elevation)))


def optical_depth(density: Tensor, step: float = 1.0) -> Tensor:
    """``S = s sum_d rho_d`` along depth, ``(B, C, H, W)`` for ``density`` ``(B, C, D, H, W)``."""
    return step * density.sum(2)


def absorption(density: Tensor, step: float = 1.0) -> Tensor:
    """Eq. (2): ``1 - exp(-S)``, the share of light absorbed along each ray, ``(B, C, H, W)``."""
    return -torch.expm1(-optical_depth(density, step))


def absorption_logits(depth: Tensor) -> Tensor:
    """The log-odds ``log((1 - e^-S) / e^-S) = log(expm1(S))`` of a pixel of eq. (2) being lit, for
    optical depths ``S >= 0``, stable at both ends (``S + log1p(-e^-S)`` for large ``S``; ``S`` is
    clamped away from 0, where the log-odds are -inf)."""
    depth = depth.clamp_min(1e-12 if depth.dtype == torch.float64 else 1e-7)
    large = depth > 1
    return torch.where(large, depth + torch.log1p(-torch.exp(-depth.clamp_min(1))),
                       torch.log(torch.expm1(depth.clamp_max(1))))


def occupancy(volume: Tensor) -> Tensor:
    """Eq. (3): ``1 - prod_d (1 - o_d)`` for occupancies ``o`` in [0, 1], ``(B, C, H, W)``."""
    return 1 - (1 - volume.clamp(0, 1)).prod(2)


def maximum(volume: Tensor) -> Tensor:
    """Eq. (4): the largest value along each ray, ``(B, C, H, W)``."""
    return volume.amax(2)


def project(volume: Tensor, azimuth: float | Tensor = 0.0, elevation: float | Tensor = 0.0, *,
            how: Projection = "absorption", step: float = 1.0) -> Tensor:
    """The view ``(B, C, H, W)`` of ``volume`` ``(B, C, D, H, W)`` from ``azimuth`` / ``elevation``
    (radians): the volume turned by eq. (1), then projected along depth by eq. (2), (3) or (4)
    (``how``; ``step`` for absorption: a voxel's length in units of the density)."""
    v = turned(volume, azimuth, elevation)
    if how == "absorption":
        return absorption(v, step)
    if how == "occupancy":
        return occupancy(v)
    if how == "max":
        return maximum(v)
    raise ValueError(f"unknown projection {how!r}: choose absorption, occupancy or max")


def shaded(volume: Tensor, azimuth: float = 0.0, elevation: float = 0.0, *, depth_cue: float = 0.6) -> Tensor:
    """A picture of occupancies ``(B, 1, D, H, W)`` in [0, 1]: front-to-back compositing, each voxel
    seen with weight ``o_d prod_{j<d} (1 - o_j)`` and brightness ``1 - depth_cue d / D`` (nearer is
    brighter), so the shape's depth shows; ``(B, 1, H, W)`` in [0, 1]."""
    o = turned(volume.clamp(0, 1), azimuth, elevation)
    D = o.shape[2]
    before = torch.cumprod(torch.cat([torch.ones_like(o[:, :, :1]), 1 - o[:, :, :-1]], 2), 2)  # (B,1,D,H,W)
    brightness = 1 - depth_cue * torch.arange(D, dtype=o.dtype, device=o.device) / D
    return (o * before * brightness.view(1, 1, D, 1, 1)).sum(2)


def degrees(angles: tuple[float, ...] | list[float]) -> list[float]:
    """Angles in degrees as radians."""
    return [math.radians(a) for a in angles]
