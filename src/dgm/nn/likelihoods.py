"""Observation likelihoods ``p(x | params)``, factorised over the dimensions of ``x``.

A network (a decoder, an autoregressive model) outputs ``params`` of shape
``(B, *likelihood.params_shape)``; the likelihood turns them into log-probabilities in nats, samples
and means. Parameters are laid out channel-major: ``(B, C * P, H, W)`` is viewed as
``(B, C, P, H, W)`` (``(B, D * P)`` as ``(B, D, P)`` for vectors), with ``P = params_per_dim``.

The discrete likelihoods work on the ``L = spec.levels`` intensity levels whatever the
representation (``levels``, ``unit`` or ``signed``), and the logistic ones place level ``k`` at
``k / (L - 1)`` in [0, 1], so the network's output scale does not depend on the representation.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import BINARY_REPRESENTATIONS, DataSpec
from dgm.errors import DgmError, unknown_name
from dgm.nn.distributions import bivariate_normal_log_prob, normal_log_prob

LEVEL_REPRESENTATIONS = ("unit", "levels", "signed")
MIN_LOG_SCALE = -7.0  # log s is clamped here (PixelCNN++'s code): s >= 1e-3, below a bin of 256 levels
MIXTURE_COMPONENTS = 5  # logistics in a discretized mixture by default (PixelCNN++ uses 10 on CIFAR-10)


def to_levels(x: Tensor, spec: DataSpec) -> Tensor:
    """The intensity level ``k`` in ``{0, ..., L - 1}`` of each value of ``x`` (int64)."""
    L = spec.levels
    rep = spec.representation
    if L is None or rep not in LEVEL_REPRESENTATIONS:
        raise ValueError(f"no intensity levels in the {rep!r} representation")
    if rep == "levels":
        return x.long().clamp(0, L - 1)
    unit = (x + 1) / 2 if rep == "signed" else x
    return torch.round(unit * (L - 1)).long().clamp(0, L - 1)


def from_levels(k: Tensor, spec: DataSpec) -> Tensor:
    """The value of level ``k`` in ``spec.representation`` (the inverse of :func:`to_levels`);
    float ``k`` (an expected level) gives floats, int64 ``k`` keeps int64 for ``levels``."""
    if spec.representation == "levels":
        return k
    unit = k / (spec.levels - 1)
    return unit * 2 - 1 if spec.representation == "signed" else unit


def sample_categorical(logits: Tensor, dim: int, generator: torch.Generator | None) -> Tensor:
    """Indices drawn from ``softmax(logits)`` along ``dim`` by the Gumbel-max trick, keeping
    ``dim`` (size 1); all randomness comes from ``generator`` (drawn on its device, so a CPU
    generator also serves logits on a GPU)."""
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
    return (logits + gumbel).argmax(dim, keepdim=True)


def _logistic_bin_log_prob(k: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """``log P(level k)`` of a logistic discretised into ``levels`` bins of width
    ``1 / (levels - 1)`` centred on ``k / (levels - 1)``, the end bins extended to -inf / +inf.

    With ``a, b`` the standardised upper and lower bin edges, ``sigmoid(a) - sigmoid(b) =
    sigmoid(a) sigmoid(-b) (1 - exp(b - a))``, so the log-probability is a sum of log-sigmoids and
    ``log(1 - exp(-width / s))``, each of which is exact in floating point for any mean and scale.
    PixelCNN++ subtracts the two CDFs instead and has to fall back to the density at the bin centre
    when the difference underflows; this form needs no fallback and never underflows.
    """
    half = 0.5 / (levels - 1)
    centre = k.to(mean.dtype) / (levels - 1)
    inv_s = torch.exp(-log_scale)
    upper = torch.where(k == levels - 1, math.inf, (centre + half - mean) * inv_s)
    lower = torch.where(k == 0, -math.inf, (centre - half - mean) * inv_s)
    # log(1 - exp(b - a)); b - a = -inf for the end bins, whose factor is 1
    log_width = torch.log(-torch.expm1(lower - upper))
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + log_width


def _logistic_sample(mean: Tensor, log_scale: Tensor, levels: int,
                     generator: torch.Generator | None) -> Tensor:
    """A draw of the discretised logistic (int64 levels): a logistic draw by inversion, rounded
    to the nearest level; clamping to the end levels is exactly the end bins' extension to
    +-inf, so this samples the pmf of :func:`_logistic_bin_log_prob`."""
    u = torch.rand(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    x = mean + torch.exp(log_scale) * torch.logit(u)  # u = 0 gives -inf: level 0
    return torch.round(x * (levels - 1)).clamp(0, levels - 1).long()


def _logistic_expected_level(mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """``E[k]`` of the discretised logistic, as the tail sum ``sum_{j < L-1} P(k > j)`` where
    ``P(k > j) = sigmoid((mean - (j + 1/2) / (L - 1)) / s)``; one pass per edge keeps the memory
    at that of ``mean`` (an ``(L, ...)`` tensor would be 256 times larger)."""
    inv_s = torch.exp(-log_scale)
    total = torch.zeros_like(mean)
    for j in range(levels - 1):
        total = total + torch.sigmoid((mean - (j + 0.5) / (levels - 1)) * inv_s)
    return total


class Likelihood(nn.Module):
    """A factorised observation model ``p(x | params) = prod_d p(x_d | params_d)``.

    Class attributes:
        name: the registry name (``make_likelihood(name, ...)``).
        discrete: True for a pmf over the discrete data (log-probabilities are ``-`` code
            lengths); False for a density.
        representations: the data representations it accepts for ``x``.
        default_representation: the representation to ask for when the data is discrete.
        needs: how the error message describes the accepted data.

    Attributes:
        spec: the data it models.
        params_per_dim: network output channels per data channel.
    """

    name: ClassVar[str]
    discrete: ClassVar[bool]
    representations: ClassVar[tuple[str, ...]]
    default_representation: ClassVar[str]
    needs: ClassVar[str]
    params_per_dim: int = 1

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        if spec.representation not in self.representations:
            fix = (f"set data.representation={self.default_representation}" if spec.levels is not None
                   else "use likelihood=gaussian")
            raise DgmError(
                f"the {self.name} likelihood needs {self.needs} data "
                f"(representation {' or '.join(self.representations)}), but {spec.name!r} is "
                f"{spec.representation!r}: {fix}"
            )
        self.spec = spec

    def extra_repr(self) -> str:
        return f"{self.spec.name!r}, shape={self.spec.shape}, representation={self.spec.representation!r}"

    @property
    def params_shape(self) -> tuple[int, ...]:
        """What the network must output per example: ``(C * P, H, W)`` or ``(D * P,)``."""
        first, *rest = self.spec.shape
        return (first * self.params_per_dim, *rest)

    def _split(self, params: Tensor) -> Tensor:
        """View ``(B, *params_shape)`` as ``(B, C, P, *rest)``: the P parameters of each dim. The
        trailing sizes may be those of a crop of the data (an autoregressive sampler asks for the
        pixels drawn so far, or for one pixel)."""
        if params.dim() != len(self.params_shape) + 1 or params.shape[1] != self.params_shape[0]:
            raise ValueError(f"{type(self).__name__} expects params of shape (B, {self.params_shape}), "
                             f"got {tuple(params.shape)}")
        first = self.spec.shape[0]
        return params.view(params.shape[0], first, self.params_per_dim, *params.shape[2:])

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        """``log p(x_d | params_d)`` in nats, ``(B, *spec.shape)``."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``log p(x | params)`` in nats, summed over dimensions, ``(B,)``."""
        return self.log_prob_per_dim(params, x).flatten(1).sum(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw ``x ~ p(x | params)``, ``(B, *spec.shape)`` in ``spec.representation``."""
        raise NotImplementedError

    @property
    def num_outcomes(self) -> int:
        """How many values a dimension takes (discrete likelihoods): 2 for binary data, ``L`` levels."""
        raise NotImplementedError(f"the {self.name} likelihood is a density, not a pmf over levels")

    def outcome_log_probs(self, params: Tensor) -> Tensor:
        """``log P(x_d = k | params_d)`` for every outcome k (the level, or 0/1), ``(B, C, K, *rest)``
        with ``K = num_outcomes``: the whole pmf of each dimension, e.g. to convolve it with a Gaussian."""
        raise NotImplementedError(f"the {self.name} likelihood is a density, not a pmf over levels")

    def mean(self, params: Tensor) -> Tensor:
        """``E[x | params]``, ``(B, *spec.shape)`` floats in the representation's value range."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli over binarised data, ``params`` = logits ``l``:
    ``log p(x) = x log sigmoid(l) + (1 - x) log sigmoid(-l)`` (the negative binary cross-entropy),
    as in the VAE of Kingma & Welling 2014 (arXiv:1312.6114) on binarised MNIST."""

    name = "bernoulli"
    discrete = True
    representations = BINARY_REPRESENTATIONS
    default_representation = "binary-dynamic"
    needs = "binarized"

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        logits = self._split(params).squeeze(2)  # (B, *shape)
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean(params), generator=generator)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(self._split(params).squeeze(2))

    num_outcomes = 2

    def outcome_log_probs(self, params: Tensor) -> Tensor:
        logits = self._split(params)  # (B, C, 1, *rest)
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], 2)  # (B, C, 2, *rest): x = 0, x = 1


class Gaussian(Likelihood):
    """Diagonal Gaussian density, ``log p(x) = -((x - mu) / s)^2 / 2 - log s - log(2 pi) / 2``.

    Args:
        spec: the data.
        scale: ``"learned"``: the network outputs the mean only, and ``log s`` is a free parameter
            per data dimension, shared by all inputs (with a linear decoder the model is factor
            analysis, Tipping & Bishop 1999, whose ``p(x)`` is known in closed form);
            ``"output"``: the network outputs mean and ``log s`` per dimension (Kingma & Welling
            2014, arXiv:1312.6114, appendix C.2).
        min_log_scale: ``log s`` is clamped from below, so a density on data that is nearly
            constant in some dimension (image borders) cannot grow without bound.
    """

    name = "gaussian"
    discrete = False
    representations = ("dequantized", "continuous", "unit", "signed")
    default_representation = "dequantized"
    needs = "continuous or dequantized"

    def __init__(self, spec: DataSpec, *, scale: Literal["learned", "output"] = "learned",
                 min_log_scale: float = MIN_LOG_SCALE) -> None:
        super().__init__(spec)
        if scale not in ("learned", "output"):
            raise unknown_name("gaussian scale", scale, ("learned", "output"))
        self.scale = scale
        self.min_log_scale = min_log_scale
        self.params_per_dim = 2 if scale == "output" else 1
        # None when the network outputs the scale
        self.log_scale = nn.Parameter(torch.zeros(spec.shape)) if scale == "learned" else None

    def loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and the (clamped) log-scale, each ``(B, *shape)``."""
        p = self._split(params)  # (B, C, P, *rest)
        mu = p[:, :, 0]
        log_s = self.log_scale.to(mu.dtype).expand_as(mu) if self.log_scale is not None else p[:, :, 1]
        return mu, log_s.clamp(min=self.min_log_scale)

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_s = self.loc_scale(params)
        return normal_log_prob(x, mu, 2 * log_s)

    @torch.no_grad()  # a draw, like the others, not a reparameterised sample
    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw of the density (on the real line: not clamped to the data's range)."""
        mu, log_s = self.loc_scale(params)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(log_s) * eps

    def mean(self, params: Tensor) -> Tensor:
        return self.loc_scale(params)[0]


class _Discrete(Likelihood):
    """Shared parts of the likelihoods over the ``L`` intensity levels."""

    discrete = True
    representations = LEVEL_REPRESENTATIONS
    default_representation = "unit"
    needs = "discrete (not binarized or dequantized)"

    @property
    def levels(self) -> int:
        return self.spec.levels

    @property
    def num_outcomes(self) -> int:
        return self.spec.levels

    def _all_levels(self, like: Tensor) -> Tensor:
        """The levels 0..L-1 laid along dim 2 of a ``(B, C, ·, *rest)`` tensor like ``like``."""
        k = torch.arange(self.levels, device=like.device)
        return k.view(1, 1, self.levels, *[1] * (like.dim() - 3))


class DiscretizedLogistic(_Discrete):
    """Discretised logistic (Kingma et al. 2016, IAF, arXiv:1606.04934; Salimans et al. 2017,
    PixelCNN++, arXiv:1701.05517), ``params`` = mean ``mu`` and ``log s`` on the [0, 1] scale:

    ``P(k) = sigmoid((x_k + h - mu) / s) - sigmoid((x_k - h - mu) / s)``, ``x_k = k / (L - 1)``,
    ``h = 1 / (2 (L - 1))``, with ``x_0 - h = -inf`` and ``x_{L-1} + h = +inf`` so that the pmf sums
    to 1 over the ``L`` levels. Computed in log space without underflow (see
    :func:`_logistic_bin_log_prob`); ``log s`` is clamped below at ``min_log_scale`` as in PixelCNN++.
    """

    name = "logistic"
    params_per_dim = 2

    def __init__(self, spec: DataSpec, *, min_log_scale: float = MIN_LOG_SCALE) -> None:
        super().__init__(spec)
        self.min_log_scale = min_log_scale

    def loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and the (clamped) log-scale on the [0, 1] scale, each ``(B, *shape)``."""
        p = self._split(params)  # (B, C, 2, *rest)
        return p[:, :, 0], p[:, :, 1].clamp(min=self.min_log_scale)

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_s = self.loc_scale(params)
        return _logistic_bin_log_prob(to_levels(x, self.spec), mu, log_s, self.levels)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu, log_s = self.loc_scale(params)
        return from_levels(_logistic_sample(mu, log_s, self.levels, generator), self.spec)

    def mean(self, params: Tensor) -> Tensor:
        mu, log_s = self.loc_scale(params)
        return from_levels(_logistic_expected_level(mu, log_s, self.levels), self.spec)

    def outcome_log_probs(self, params: Tensor) -> Tensor:
        mu, log_s = (t.unsqueeze(2) for t in self.loc_scale(params))  # (B, C, 1, *rest)
        return _logistic_bin_log_prob(self._all_levels(mu), mu, log_s, self.levels)


class DiscretizedLogisticMixture(_Discrete):
    """Mixture of ``K`` discretised logistics per dimension (Salimans et al. 2017, PixelCNN++,
    arXiv:1701.05517): ``P(k) = sum_j pi_j P_j(k)``, each ``P_j`` a :class:`DiscretizedLogistic`,
    ``pi = softmax(logits)``; ``params`` = K logits, K means, K log-scales per dimension.

    The channels are independent given ``params``: PixelCNN++'s coupling of the R, G, B means
    within a pixel is left out, so this fits any number of channels and any network.
    """

    name = "logistic-mixture"

    def __init__(self, spec: DataSpec, *, components: int = MIXTURE_COMPONENTS, min_log_scale: float = MIN_LOG_SCALE) -> None:
        super().__init__(spec)
        self.components = components
        self.min_log_scale = min_log_scale
        self.params_per_dim = 3 * components

    def _unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights, means and clamped log-scales, each ``(B, C, K, *rest)``."""
        logits, mu, log_s = self._split(params).chunk(3, dim=2)
        return logits.log_softmax(2), mu, log_s.clamp(min=self.min_log_scale)

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        log_pi, mu, log_s = self._unpack(params)
        k = to_levels(x, self.spec).unsqueeze(2)  # (B, C, 1, *rest)
        return torch.logsumexp(log_pi + _logistic_bin_log_prob(k, mu, log_s, self.levels), dim=2)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        log_pi, mu, log_s = self._unpack(params)
        j = sample_categorical(log_pi, 2, generator)  # (B, C, 1, *rest)
        mu, log_s = mu.gather(2, j).squeeze(2), log_s.gather(2, j).squeeze(2)
        return from_levels(_logistic_sample(mu, log_s, self.levels, generator), self.spec)

    def mean(self, params: Tensor) -> Tensor:
        log_pi, mu, log_s = self._unpack(params)
        expected = (log_pi.exp() * _logistic_expected_level(mu, log_s, self.levels)).sum(2)
        return from_levels(expected, self.spec)

    def outcome_log_probs(self, params: Tensor) -> Tensor:
        log_pi, mu, log_s = (t.unsqueeze(3) for t in self._unpack(params))  # (B, C, K, 1, *rest)
        k = self._all_levels(mu[:, :, 0]).unsqueeze(2)  # (1, 1, 1, L, 1...)
        return torch.logsumexp(log_pi + _logistic_bin_log_prob(k, mu, log_s, self.levels), dim=2)


class Categorical(_Discrete):
    """An ``L``-way softmax per dimension (van den Oord et al. 2016, PixelRNN, arXiv:1601.06759):
    ``log P(k) = l_k - logsumexp(l)``; ``params`` = the ``L`` logits of each dimension, laid out
    ``(B, C * L, H, W)`` and viewed as ``(B, C, L, H, W)`` (``(B, D * L)`` as ``(B, D, L)``)."""

    name = "categorical"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.params_per_dim = self.levels

    def log_prob_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        log_p = self._split(params).log_softmax(2)  # (B, C, L, *rest)
        return log_p.gather(2, to_levels(x, self.spec).unsqueeze(2)).squeeze(2)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        k = sample_categorical(self._split(params), 2, generator).squeeze(2)
        return from_levels(k, self.spec)

    def mean(self, params: Tensor) -> Tensor:
        p = self._split(params).softmax(2)  # (B, C, L, *rest)
        k = torch.arange(self.levels, device=p.device, dtype=p.dtype)
        k = k.view(self.levels, *[1] * (p.dim() - 3))  # broadcast over (*rest)
        return from_levels((p * k).sum(2), self.spec)

    def outcome_log_probs(self, params: Tensor) -> Tensor:
        return self._split(params).log_softmax(2)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, Gaussian, DiscretizedLogistic, DiscretizedLogisticMixture, Categorical)
}


def make_likelihood(name: str, spec: DataSpec, **options: object) -> Likelihood:
    """The likelihood registered as ``name`` for data ``spec``, with keyword ``options``
    (e.g. ``make_likelihood("gaussian", spec, scale="output")``)."""
    if name not in LIKELIHOODS:
        raise unknown_name("likelihood", name, LIKELIHOODS)
    cls = LIKELIHOODS[name]
    accepted = [p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DgmError(f"the {name} likelihood has no option {', '.join(map(repr, unknown))}: "
                       f"its options are {', '.join(accepted) or 'none'}")
    return cls(spec, **options)


# --- one point of a pen-stroke sequence ----------------------------------------------------------------
#: the least log sigma of a pen offset's Gaussians (sigma >= 1.2e-4 data units), so a spike stays finite
MIN_LOG_STD = -9.0


@dataclass
class PenMixture:
    """The distribution of the next point ``(dx, dy, e)`` of a pen-stroke sequence given a network's
    output ``y_t``, ``(...)`` points at once: Graves 2013, "Generating Sequences With Recurrent Neural
    Networks" (arXiv:1308.0850), section 4.1, eq. 23: an ``M``-component bivariate Gaussian mixture over
    the pen offset and a Bernoulli end-of-stroke bit ``e``::

        Pr(x_{t+1} | y_t) = sum_j pi_t^j N(dx, dy | mu_t^j, sigma_t^j, rho_t^j) * (e_t if e = 1 else 1 - e_t)

    times, where a stroke ends (``e = 1``), a Bernoulli bit ``s``: whether the sequence ends there
    (probability ``q_t``). Graves draws a fixed number of points; the end bit lets a model finish a
    glyph, and summed over ``s`` it leaves eq. 23 unchanged, so the density still integrates to one
    over ``(dx, dy)`` and sums to one over the pen states ``(e, s)`` in ``{(0, -), (1, 0), (1, 1)}``.

    The parameters, from ``y_t = (e^, s^, pi^, mu, sigma^, rho^)`` (eqs. 17-22; :meth:`from_outputs`):
    ``e_t = 1 / (1 + exp(e^))`` (eq. 18), ``q_t = sigmoid(s^)``, ``pi = softmax(pi^)`` (19), ``mu`` (20),
    ``sigma = exp(sigma^)`` (21), ``rho = tanh(rho^)`` (22).
    """

    logits: Tensor  # (..., M): pi^, the mixture weights are softmax(logits) (eq. 19)
    mean: Tensor  # (..., M, 2): mu_t^j (eq. 20)
    log_std: Tensor  # (..., M, 2): log sigma_t^j (eq. 21)
    rho: Tensor  # (..., M): rho_t^j = tanh(rho^) (eq. 22)
    pen_logit: Tensor  # (...): e^, the end of a stroke has probability e_t = sigmoid(-e^) (eq. 18)
    stop_logit: Tensor  # (...): s^, the end of the sequence at the end of a stroke has probability sigmoid(s^)

    @staticmethod
    def num_params(components: int) -> int:
        """The size of ``y_t`` for ``M = components``: ``e^``, ``s^`` and ``6 M`` mixture parameters."""
        return 2 + 6 * components

    @classmethod
    def from_outputs(cls, y: Tensor, components: int, *, bias: float = 0.0) -> PenMixture:
        """The distribution of outputs ``y (..., num_params(M))``; ``bias`` b >= 0 sharpens it as
        Graves's biased sampling (section 5.4, eqs. 61-62): ``sigma = exp(sigma^ - b)``,
        ``pi = softmax(pi^ (1 + b))``; b = 0 is the model's own distribution."""
        M = components
        pen, stop, logits, mean, log_std, rho = y.split([1, 1, M, 2 * M, 2 * M, M], dim=-1)
        return cls(logits * (1 + bias), mean.unflatten(-1, (M, 2)),
                   log_std.unflatten(-1, (M, 2)).clamp_min(MIN_LOG_STD) - bias, rho.tanh(),
                   pen.squeeze(-1), stop.squeeze(-1))

    def offset_log_prob(self, offset: Tensor) -> Tensor:
        """``log sum_j pi_j N(offset | mu_j, sigma_j, rho_j)``, nats, ``(...)``, of offsets ``(..., 2)``."""
        log_n = bivariate_normal_log_prob(offset.unsqueeze(-2), self.mean, self.log_std, self.rho)  # (..., M)
        return (self.logits.log_softmax(-1) + log_n).logsumexp(-1)

    def log_prob(self, point: Tensor, last: Tensor) -> Tensor:
        """``log p(dx, dy, e, s)``, nats, ``(...)``, of points ``(..., 3)`` (``e = point[..., 2]`` in {0, 1})
        where ``last`` ``(...)`` bool says which end their sequence (``s``, scored where ``e = 1``)."""
        e = point[..., 2] > 0.5
        log_e = torch.where(e, F.logsigmoid(-self.pen_logit), F.logsigmoid(self.pen_logit))  # eq. 18
        log_s = torch.where(last, F.logsigmoid(self.stop_logit), F.logsigmoid(-self.stop_logit))
        return self.offset_log_prob(point[..., :2]) + log_e + torch.where(e, log_s, 0.0)

    def sample(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A point ``(..., 3)`` (its pen bit 0.0 or 1.0) and whether the sequence ends at it ``(...)``
        bool, all noise from ``generator`` (drawn on its device)."""
        j = sample_categorical(self.logits, -1, generator)  # (..., 1): the component
        mean = self.mean.gather(-2, j[..., None].expand(*j.shape, 2)).squeeze(-2)  # (..., 2)
        std = self.log_std.gather(-2, j[..., None].expand(*j.shape, 2)).squeeze(-2).exp()
        rho = self.rho.gather(-1, j).squeeze(-1)
        device = generator.device if generator is not None else mean.device
        z = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        u = torch.rand((2, *rho.shape), generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        correlated = torch.stack([z[..., 0], rho * z[..., 0] + (1 - rho ** 2).clamp_min(0).sqrt() * z[..., 1]], -1)
        e = u[0] < torch.sigmoid(-self.pen_logit)  # eq. 18
        stop = e & (u[1] < torch.sigmoid(self.stop_logit))
        return torch.cat([mean + std * correlated, e.to(mean.dtype).unsqueeze(-1)], -1), stop
