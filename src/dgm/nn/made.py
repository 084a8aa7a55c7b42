"""Masked autoencoders and the masked autoregressive flow built on them.

MADE: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution
Estimation", arXiv:1502.03509, section 4. An MLP whose weights are multiplied by binary masks so
that the outputs for dimension d see only the inputs before d in an ordering. Every unit carries a
degree; with ``position[d]`` the place of dimension d in the ordering (section 4.2)::

    m^0(d)  = position[d] + 1                      inputs, 1..D
    m^l(k)  = low + (k mod max(D - low, 1))        hidden unit k of every layer (deterministic)
    M^{W^l}_{k', k} = 1[m^l(k') >= m^{l-1}(k)]     hidden layers
    M^{V}_{d, k}    = 1[m^0(d) > m^L(k)]           output layer: strictly later

with ``low = 1`` (the usual degrees 1..D-1, as in nflows) and ``low = 0`` when there is a context.
The context enters the first layer unmasked; a hidden unit of degree 0 sees the context and no
input, and every output sees it, so the first dimension in the ordering (and the only one when
D = 1) is a nonlinear function of the context rather than a constant.

MAF: Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation",
arXiv:1705.07057, section 3.1, eqs. 2-3, written with any elementwise family
(:class:`dgm.nn.flows.Elementwise`)::

    y_d = f(x_d; theta_d(x_<d, context))       one MADE pass for every d (the density direction)
    x_d = f^{-1}(y_d; theta_d(x_<d, context))  D passes, one dimension each, in the ordering

so the log-determinant is the sum of the elementwise log-derivatives (the Jacobian is triangular).
Its inverse, ``Inverse(MaskedAutoregressive(...))``, is the inverse autoregressive flow (Kingma et
al. 2016, arXiv:1606.04934): one pass to sample, D passes to evaluate a density.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.errors import DgmError
from dgm.nn.flows import Elementwise, Transform


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a binary mask ``(out, in)`` given at each call."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return F.linear(x, masked_weight(self.weight, mask), self.bias)


def masked_weight(weight: Tensor, mask: Tensor) -> Tensor:
    """``weight * mask`` in the dtype the matmul will use: under autocast the weight is cast first
    and multiplied in bf16 (less memory traffic than a float32 product cast afterwards)."""
    device = weight.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return weight.to(dtype) * mask.to(dtype)


def _check_order(order: Tensor | None, features: int) -> Tensor:
    """``order`` as a long tensor ``(D,)`` (the natural order when None), checked to be a permutation."""
    if order is None:
        return torch.arange(features)
    order = torch.as_tensor(order).detach().cpu().long()
    if order.shape != (features,) or not torch.equal(order.sort().values, torch.arange(features)):
        raise DgmError(f"order must be a permutation of 0..{features - 1} (order[p] = the dimension at "
                       f"position p), got {order.tolist()}")
    return order


class MADE(nn.Module):
    """A masked autoencoder (Germain et al. 2015, arXiv:1502.03509, section 4) that maps ``x (B, D)``
    and an optional ``context (B, context_features)`` to parameters ``(B, D, P)``, where
    ``params[:, d]`` depends only on the inputs before d in ``order`` (and on the context).

    Degrees are deterministic (module docstring), the masks are buffers built once, and the output
    layer starts at zero so that a transform it conditions starts as a fixed elementwise map (the
    identity for :class:`~dgm.nn.flows.Additive`, :class:`~dgm.nn.flows.Affine` and the spline).

    Args:
        features: D, the dimensions of ``x``.
        hidden: widths of the masked hidden layers (ReLU between layers); ``()`` for none.
        params_per_dim: P, the parameters produced for every dimension.
        context_features: C, the size of the flattened context; 0 for none (a context is then ignored).
        order: ``order[p]`` is the dimension at position p, ``(D,)``; the natural order when None.

    Example:
        >>> made = MADE(5, (64, 64), 2, context_features=3)
        >>> made(torch.randn(8, 5), torch.randn(8, 3)).shape
        torch.Size([8, 5, 2])
    """

    def __init__(self, features: int, hidden: tuple[int, ...], params_per_dim: int, *,
                 context_features: int = 0, order: Tensor | None = None) -> None:
        super().__init__()
        if features < 1 or params_per_dim < 1 or context_features < 0 or any(h < 1 for h in hidden):
            raise DgmError(f"MADE needs features >= 1, params_per_dim >= 1, context_features >= 0 and "
                           f"positive hidden widths, got features={features}, hidden={hidden}, "
                           f"params_per_dim={params_per_dim}, context_features={context_features}")
        D, P, C = features, params_per_dim, context_features
        self.features, self.params_per_dim, self.context_features = D, P, C
        self.register_buffer("order", _check_order(order, D))  # (D,)

        position = torch.argsort(self.order)  # (D,): position[d] = where dimension d comes
        input_degrees = position + 1  # (D,), 1..D
        low = 0 if C > 0 else 1  # degree-0 units: context only (module docstring)
        degrees = [input_degrees]
        for width in hidden:
            degrees.append(low + torch.arange(width) % max(D - low, 1))  # (H_l,)
        masks = [m_out[:, None] >= m_in[None, :] for m_in, m_out in zip(degrees[:-1], degrees[1:])]
        output = input_degrees[:, None] > degrees[-1][None, :]  # (D, H_L): strictly earlier units
        masks.append(output.repeat_interleave(P, dim=0))  # (D * P, H_L): row d * P + q is dimension d
        # the context feeds every unit of the first layer: all-ones columns after the D inputs
        masks[0] = torch.cat([masks[0], masks[0].new_ones(masks[0].shape[0], C)], dim=1)

        sizes = [D + C, *hidden, D * P]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for i, mask in enumerate(masks):
            # float so that .to(dtype) moves it with the weights; saved with them (persistent)
            self.register_buffer(f"mask_{i}", mask.float())
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def masks(self) -> list[Tensor]:
        """The mask of every layer, ``(out, in)`` each."""
        return [getattr(self, f"mask_{i}") for i in range(len(self.layers))]

    def masked_weights(self) -> list[Tensor]:
        """Every layer's weight times its mask, ``(out, in)`` each: computed once for the D passes of
        an inverse instead of once per pass."""
        return [masked_weight(layer.weight, mask) for layer, mask in zip(self.layers, self.masks())]

    def forward(self, x: Tensor, context: Tensor | None = None, *,
                weights: list[Tensor] | None = None) -> Tensor:
        """The parameters ``(B, D, P)`` for ``x (B, D)`` and ``context (B, ...)`` (flattened to C);
        ``weights``: the :meth:`masked_weights`, when the caller has them already."""
        B, D, C = x.shape[0], self.features, self.context_features
        if x.dim() != 2 or x.shape[1] != D:
            raise DgmError(f"MADE over {D} features takes x of shape (B, {D}), got {tuple(x.shape)}")
        h = x
        if C > 0:
            if context is None:
                raise DgmError(f"this MADE is conditioned on a context of {C} features: pass context=")
            context = context.reshape(B, -1)
            if context.shape[1] != C:
                raise DgmError(f"this MADE takes a context of {C} features, got {context.shape[1]}")
            h = torch.cat([x, context.to(x.dtype)], dim=1)  # (B, D + C)
        weights = self.masked_weights() if weights is None else weights
        for i, (layer, weight) in enumerate(zip(self.layers, weights)):
            h = F.linear(h, weight, layer.bias)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h.view(B, D, self.params_per_dim)  # (B, D, P)


class MaskedAutoregressive(Transform):
    """The masked autoregressive flow transform (Papamakarios et al. 2017, arXiv:1705.07057, section
    3.1, eqs. 2-3) with any elementwise family: ``y_d = f(x_d; theta_d(x_<d))``, the parameters of
    every dimension from one :class:`MADE` pass. The forward pass (the density direction) costs one
    network pass; the inverse costs D, one dimension at a time in ``order``.

    ``Inverse(MaskedAutoregressive(...))`` is an inverse autoregressive flow (IAF; Kingma et al.
    2016, arXiv:1606.04934): one pass to sample, D to evaluate a density.

    Args:
        features: D, the dimensions of ``x (B, D)``.
        hidden: widths of the MADE's hidden layers.
        elementwise: the scalar bijection ``f`` (:class:`~dgm.nn.flows.Additive`,
            :class:`~dgm.nn.flows.Affine`, :class:`~dgm.nn.splines.RationalQuadraticSpline`, ...).
        context_features: C, the size of the flattened context; 0 for none.
        order: ``order[p]`` is the dimension at position p; the natural order when None.

    Example:
        >>> maf = MaskedAutoregressive(5, (64,), Affine())
        >>> y, log_abs_det = maf(torch.randn(8, 5))  # (8, 5), (8,)
        >>> iaf = Inverse(MaskedAutoregressive(5, (64,), RationalQuadraticSpline()))
    """

    def __init__(self, features: int, hidden: tuple[int, ...], elementwise: Elementwise, *,
                 context_features: int = 0, order: Tensor | None = None) -> None:
        super().__init__()
        self.elementwise = elementwise
        self.made = MADE(features, hidden, elementwise.params_per_dim,
                         context_features=context_features, order=order)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, log_derivative = self.forward_per_dim(x, context)
        return y, log_derivative.sum(1)

    def forward_per_dim(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y`` and the log-derivative of every dimension, ``(B, D)`` each (their sum is the
        log-determinant): an IAF posterior counts its KL per latent unit from them."""
        # the bijection and its log-determinant in the data's dtype (float32 under bf16 autocast)
        params = self.made(x, context).to(x.dtype)  # (B, D, P), dimension d from x_<d
        return self.elementwise.forward(x, params)  # (B, D) each

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        D = self.made.features
        if y.dim() != 2 or y.shape[1] != D:
            raise DgmError(f"a masked autoregressive transform over {D} features takes (B, {D}), "
                           f"got {tuple(y.shape)}")
        # row p selects dimension order[p]; the dimensions not yet inverted stay at 0 so that what
        # the later outputs see is finite and fixed (their masked weights multiply it by zero)
        select = F.one_hot(self.made.order, D).to(torch.bool)  # (D, D)
        x = torch.zeros_like(y)
        log_derivative = torch.zeros_like(y)
        weights = self.made.masked_weights()
        for p in range(D):
            # the parameters of dimension order[p] depend on positions < p only, all set by now
            params = self.made(x, context, weights=weights).to(y.dtype)  # (B, D, P)
            x_new, log_derivative = self.elementwise.inverse(y, params)  # (B, D) each
            x = torch.where(select[p], x_new, x)
        # the last pass saw every position before the last one: its parameters, hence its
        # log-derivatives, are those of the final x for every dimension
        return x, log_derivative.sum(1)
