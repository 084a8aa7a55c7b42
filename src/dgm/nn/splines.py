"""Monotonic rational-quadratic splines: the elementwise bijection of neural spline flows.

Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", arXiv:1906.04032, section 3.1
(eqs. 4-6) and appendix A. On ``[-B, B]`` the map is a monotonic spline of ``K`` rational-quadratic
bins (Gregory & Delbourgo 1982) through ``K + 1`` knots ``(x^k, y^k)`` with positive derivatives
``delta^k`` at the knots; outside it is the identity (the *linear tails*), and the boundary
derivatives are fixed to 1 so the whole map is C1. In bin ``k`` (width ``w^k``, height ``h^k``)::

    xi    = (x - x^k) / w^k                  in [0, 1]
    s^k   = h^k / w^k                        the bin's slope
    y     = y^k + h^k [s^k xi^2 + delta^k xi (1 - xi)] / [s^k + (delta^{k+1} + delta^k - 2 s^k) xi (1 - xi)]
    dy/dx = (s^k)^2 [delta^{k+1} xi^2 + 2 s^k xi (1 - xi) + delta^k (1 - xi)^2]
            / [s^k + (delta^{k+1} + delta^k - 2 s^k) xi (1 - xi)]^2

The inverse solves the quadratic ``a xi^2 + b xi + c = 0`` for the bin that holds ``y``
(appendix A)::

    a  = h^k (s^k - delta^k) + (y - y^k)(delta^{k+1} + delta^k - 2 s^k)
    b  = h^k delta^k - (y - y^k)(delta^{k+1} + delta^k - 2 s^k)
    c  = -s^k (y - y^k)
    xi = 2c / (-b - sqrt(b^2 - 4ac))

the root written without the subtraction ``-b + sqrt(.)`` that cancels catastrophically when ``a``
is small (the numerically stable form; ``c <= 0 < b`` in the bin, so the denominator never
vanishes).

The ``3K - 1`` parameters per dimension are unnormalised: ``K`` widths and ``K`` heights through a
softmax (each at least ``min_bin_width`` / ``min_bin_height`` of the interval), and the ``K - 1``
interior derivatives through a softplus shifted so that raw parameters of zero give derivative 1.
Zero parameters are therefore the identity (equal bins, slope 1 and derivative 1 everywhere), as is
a freshly zero-initialised conditioner.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.errors import DgmError
from dgm.nn.flows import Elementwise


class RationalQuadraticSpline(Elementwise):
    """A monotonic rational-quadratic spline on ``[-bound, bound]`` with identity tails (Durkan et al.
    2019, arXiv:1906.04032, section 3.1, eqs. 4-6; inverse by appendix A). See the module docstring.

    Args:
        bins: K, the number of rational-quadratic bins.
        bound: B, the spline acts on ``[-B, B]`` and is the identity outside.
        min_bin_width: the least width of a bin, as a fraction of ``2B`` (keeps slopes finite).
        min_bin_height: the least height of a bin, as a fraction of ``2B``.
        min_derivative: the least derivative at an interior knot (keeps the map strictly monotone).

    Parameters per dimension (``params_per_dim = 3K - 1``, last axis): K unnormalised widths, K
    unnormalised heights, K - 1 unconstrained interior derivatives.

    Example:
        >>> spline = RationalQuadraticSpline(bins=8, bound=3.0)
        >>> x, params = torch.randn(4, 2), torch.randn(4, 2, spline.params_per_dim)
        >>> y, log_derivative = spline.forward(x, params)  # (4, 2), (4, 2)
        >>> spline.inverse(y, params)[0]  # x again
    """

    def __init__(self, bins: int = 8, bound: float = 3.0, min_bin_width: float = 1e-3,
                 min_bin_height: float = 1e-3, min_derivative: float = 1e-3) -> None:
        if bins < 1:
            raise DgmError(f"a rational-quadratic spline needs at least one bin, got bins={bins}")
        if not bound > 0:
            raise DgmError(f"the spline interval [-bound, bound] needs bound > 0, got bound={bound}")
        if min_bin_width * bins > 1 or min_bin_height * bins > 1:
            raise DgmError(f"{bins} bins of at least min_bin_width={min_bin_width} / min_bin_height="
                           f"{min_bin_height} do not fit in the interval: lower the minima or the bins")
        if not 0 < min_derivative < 1:
            raise DgmError(f"min_derivative must lie in (0, 1) so that derivative 1 is reachable, "
                           f"got {min_derivative}")
        self.bins = bins
        self.bound = bound
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.params_per_dim = 3 * bins - 1
        # softplus(c) = 1 - min_derivative, so a raw derivative of 0 gives delta = 1 exactly
        self.derivative_shift = math.log(math.expm1(1 - min_derivative))

    # --- the spline's knots from its parameters ------------------------------------------------------
    def _knots(self, raw: Tensor, minimum: float) -> tuple[Tensor, Tensor]:
        """Knot positions ``(..., K + 1)`` from ``-B`` to ``B`` and bin sizes ``(..., K)`` from raw
        widths or heights ``(..., K)``."""
        K, B = self.bins, self.bound
        fraction = minimum + (1 - minimum * K) * torch.softmax(raw, dim=-1)  # (..., K), sums to 1
        knots = F.pad(torch.cumsum(fraction, dim=-1), (1, 0))  # (..., K + 1) in [0, 1]
        knots = 2 * B * knots - B
        # pin the ends exactly so the spline meets the identity tails without a rounding gap
        knots = torch.cat([torch.full_like(knots[..., :1], -B), knots[..., 1:-1],
                           torch.full_like(knots[..., :1], B)], dim=-1)
        return knots, knots[..., 1:] - knots[..., :-1]

    def _spline(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(x knots, widths, y knots, heights, derivatives)``: ``(..., K + 1)``, ``(..., K)``,
        ``(..., K + 1)``, ``(..., K)``, ``(..., K + 1)`` with the boundary derivatives equal to 1."""
        K = self.bins
        if params.shape[-1] != self.params_per_dim:
            raise DgmError(f"a spline with {K} bins takes 3 * bins - 1 = {self.params_per_dim} parameters "
                           f"per dimension (last axis), got {params.shape[-1]}")
        x_knots, widths = self._knots(params[..., :K], self.min_bin_width)
        y_knots, heights = self._knots(params[..., K:2 * K], self.min_bin_height)
        interior = self.min_derivative + F.softplus(params[..., 2 * K:] + self.derivative_shift)  # (..., K - 1)
        one = torch.ones_like(params[..., :1])
        derivatives = torch.cat([one, interior, one], dim=-1)  # (..., K + 1): delta^0 = delta^K = 1 (C1 tails)
        return x_knots, widths, y_knots, heights, derivatives

    @staticmethod
    def _bin(knots: Tensor, v: Tensor) -> Tensor:
        """The bin ``k`` with ``knots[k] <= v``, clamped to ``[0, K - 1]``, ``(..., 1)``."""
        k = torch.searchsorted(knots.contiguous(), v.unsqueeze(-1).contiguous(), right=True) - 1
        return k.clamp(0, knots.shape[-1] - 2)

    @staticmethod
    def _log_derivative(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        """log dy/dx in a bin at ``xi``: the derivative of the bin's rational quadratic (section 3.1)."""
        xi1 = xi * (1 - xi)
        denominator = s + (d1 + d0 - 2 * s) * xi1
        numerator = s.pow(2) * (d1 * xi.pow(2) + 2 * s * xi1 + d0 * (1 - xi).pow(2))
        return torch.log(numerator) - 2 * torch.log(denominator)

    def _unpack(self, params: Tensor, v: Tensor, by_y: bool) -> tuple[Tensor, ...]:
        """The knots and derivatives of the bin of every element of ``v`` (located among the y knots
        when ``by_y``), each the shape of ``v``."""
        x_knots, widths, y_knots, heights, derivatives = self._spline(params)
        k = self._bin(y_knots if by_y else x_knots, v)  # (..., 1)

        def take(t: Tensor, shift: int = 0) -> Tensor:
            return t.gather(-1, k + shift).squeeze(-1)

        w, h = take(widths), take(heights)
        return take(x_knots), w, take(y_knots), h, h / w, take(derivatives), take(derivatives, 1)

    # --- the elementwise bijection ------------------------------------------------------------------
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log dy/dx)`` elementwise for ``x`` and ``params (*x.shape, 3K - 1)``."""
        B = self.bound
        inside = (x >= -B) & (x <= B)
        # evaluate the spline at a clamped copy so the outside elements stay finite (and so do their
        # gradients, which torch.where would otherwise turn into 0 * nan)
        xc = x.clamp(-B, B)
        x_k, w, y_k, h, s, d0, d1 = self._unpack(params, xc, by_y=False)
        xi = ((xc - x_k) / w).clamp(0, 1)
        xi1 = xi * (1 - xi)
        y = y_k + h * (s * xi.pow(2) + d0 * xi1) / (s + (d1 + d0 - 2 * s) * xi1)  # the bin's rational quadratic
        log_derivative = self._log_derivative(xi, s, d0, d1)
        return torch.where(inside, y, x), torch.where(inside, log_derivative, torch.zeros_like(x))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log dx/dy)`` elementwise for ``y`` and ``params (*y.shape, 3K - 1)``."""
        B = self.bound
        inside = (y >= -B) & (y <= B)
        yc = y.clamp(-B, B)
        x_k, w, y_k, h, s, d0, d1 = self._unpack(params, yc, by_y=True)
        dy = yc - y_k  # (y - y^k) >= 0 in the bin
        curvature = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * curvature
        b = h * d0 - dy * curvature
        c = -s * dy
        # b^2 - 4ac > 0 in exact arithmetic; the clamp only absorbs rounding
        discriminant = (b.pow(2) - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - torch.sqrt(discriminant))).clamp(0, 1)  # appendix A, stable root
        x = x_k + xi * w
        log_derivative = -self._log_derivative(xi, s, d0, d1)
        return torch.where(inside, x, y), torch.where(inside, log_derivative, torch.zeros_like(y))
