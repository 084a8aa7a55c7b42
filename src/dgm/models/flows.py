"""Normalizing flows: an exact log-likelihood by the change of variables, exact encoding, one-pass sampling.

A flow is an invertible map ``f`` from data to a latent of the same size with a standard normal
base distribution (Dinh et al. 2017, RealNVP, arXiv:1605.08803, eq. 3)::

    log p(y) = log N(f(y); 0, I) + log |det df/dy|,        y = f^-1(z),  z ~ N(0, T^2 I)

``T`` is the sampling temperature (Glow, Kingma & Dhariwal 2018, arXiv:1807.03039, section 5: T < 1
trades diversity for quality). The transforms are in :mod:`dgm.nn.flows` (couplings, actnorm,
invertible 1x1 convolutions, squeezes, the logit), :mod:`dgm.nn.made` (MAF / IAF),
:mod:`dgm.nn.splines` (rational-quadratic splines) and :mod:`dgm.nn.multiscale` (factor-out).

**8-bit images.** A density needs continuous data, so the L levels are dequantized,
``y = (x + u) / L`` in [0, 1)^D, then mapped by the logit with ``alpha`` (RealNVP, section 4.1)
before the flow:

* uniform (``dequantization=uniform``, the ``dequantized`` representation): ``u ~ U[0, 1)^D`` drawn
  afresh per batch; ``E_u log p(y) - D log L`` is a lower bound on the discrete ``log P(x)``, so
  ``bits/dim = (-log p(y) + D log L) / (D ln 2)`` bounds the model's bits per dimension of the 8-bit
  data (Theis et al. 2016, arXiv:1511.01844), as :func:`dgm.eval.likelihood.bits_per_dim` reports;
* variational (``dequantization=variational``, the ``levels`` representation): ``u ~ q(u | x)``, a
  conditional flow ending in a sigmoid (Ho et al. 2019, Flow++, arXiv:1902.00275, section 3.1, eq.
  12)::

      log P(x) >= E_{q(u|x)} [log p((x + u) / L) - D log L - log q(u | x)]

  reported as the model's ``elbo`` (and its importance-weighted ``iwae_bound``), a bound on the
  discrete data itself; ``q`` trains jointly with the flow.

**The models** are a config and a ``build_flow`` each: ``nice`` (additive couplings on the flattened
image and a diagonal scaling; Dinh et al. 2015, arXiv:1410.8516), ``realnvp`` (affine couplings with
checkerboard and channel masks, squeezes and factor-out; MLP couplings on vectors), ``glow``
(actnorm, invertible 1x1 convolutions, affine couplings, multi-scale with a learned prior of each
factored half), ``maf`` and ``iaf`` (MADE affine transforms with alternating orders; Papamakarios et
al. 2017, arXiv:1705.07057; Kingma et al. 2016, arXiv:1606.04934), and ``spline-flow``
(rational-quadratic splines in couplings or MADE; Durkan et al. 2019, arXiv:1906.04032). Vector
models flatten images; on continuous data (the 2-D toys) they start with a data-initialised actnorm
instead of the logit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, randn, register
from dgm.models.refusals import refuse_variable_length
from dgm.nn.distributions import normal_log_prob
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
    Squeeze,
    Transform,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    sum_per_example,
)
from dgm.nn.made import MaskedAutoregressive
from dgm.nn.multiscale import MultiScale
from dgm.nn.splines import RationalQuadraticSpline
from dgm.settings import PositiveFloat, PositiveInt, Range

#: why a flow refuses token sequences and point sets (the set flow models those)
PADDING_REASON = "it maps a fixed-size example to a latent of the same size, so padding would be modelled as data"


@dataclass
class FlowOptions:
    """Options of a flow's sampler."""

    temperature: PositiveFloat | None = field(default=None, metadata={
        "help": "standard deviation T of the base noise z ~ N(0, T^2 I); below 1 gives cleaner, less "
                "varied samples (Glow); default 1"})


@dataclass
class FlowConfig:
    """Settings every flow shares (``--set model.KEY=VALUE``); each model's config adds its own."""

    dequantization: Literal["uniform", "variational"] = "uniform"  # of 8-bit data: U[0,1) noise, or a learned q(u|x)
    logit_alpha: Annotated[float, Range(0, 0.5, high_open=True)] = 0.05  # the logit's margin on [0, 1] (RealNVP: 0.05)
    dequantizer_width: PositiveInt = 32  # channels (or units) of the variational dequantizer's couplings
    dequantizer_couplings: PositiveInt = 4  # affine couplings of q(u|x)


class FlowModel(GenerativeModel):
    """What every flow shares: dequantization and the logit, the base distribution, the exact
    log-likelihood, temperature sampling, encode / decode. A model gives :meth:`build_flow`."""

    samplers = (Sampler("flow", "z ~ N(0, T^2 I) mapped through the inverse flow (exact)", FlowOptions),)
    #: whether the flow works on images ``(C, H, W)`` (multi-scale) rather than flattened vectors
    multiscale: bool = False

    @classmethod
    def default_representation(cls, config: FlowConfig, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        if spec.levels is None:
            return "continuous"
        return "levels" if config.dequantization == "variational" else "dequantized"

    def __init__(self, config: FlowConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        expected = self.default_representation(config, spec)
        if spec.representation != expected:
            raise DgmError(f"model {self.name!r} with dequantization={config.dequantization!r} reads the "
                           f"{expected!r} representation, got {spec.representation!r}: drop the "
                           "data.representation setting")
        if self.multiscale and not spec.is_image:
            raise DgmError(f"model {self.name!r} is a multi-scale flow over images (C, H, W), but "
                           f"{spec.name!r} holds vectors of shape {spec.shape}: use an image dataset, or a "
                           "vector flow (maf, iaf, spline-flow, nice, realnvp with flatten=true)")
        self.discrete = spec.levels is not None
        self.dim = spec.dim  # D
        # the map to the flow's input: the logit of the dequantized 8-bit data, nothing for floats
        self.preprocess: Transform = Logit(config.logit_alpha) if self.discrete else Compose()
        self.flow_shape = spec.shape if self.multiscale else (self.dim,)
        self.flow = self.build_flow(self.flow_shape)
        self.dequantizer = (VariationalDequantizer(spec.shape, config.dequantizer_width, config.dequantizer_couplings)
                            if self.discrete and config.dequantization == "variational" else None)

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        """The flow from the preprocessed data, of ``shape`` (``(D,)``, or ``(C, H, W)`` when
        :attr:`multiscale`), to the latent."""
        raise NotImplementedError

    # --- the density ------------------------------------------------------------------------------
    def latent(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``z = f(y)`` flattened ``(B, D)`` and ``log |det df/dy|`` ``(B,)`` for data ``y`` in the
        flow's continuous space (dequantized [0, 1) values, or the raw floats)."""
        h, log_abs_det = self.preprocess(y)
        z, flow_log_abs_det = self.flow(h.reshape(len(h), *self.flow_shape))
        return z.flatten(1), log_abs_det + flow_log_abs_det

    def log_density(self, y: Tensor) -> Tensor:
        """``log p(y)`` in nats ``(B,)``: the change of variables (module docstring)."""
        z, log_abs_det = self.latent(y)
        return normal_log_prob(z).sum(1) + log_abs_det

    def log_prob(self, x: Tensor) -> Tensor:
        """The exact log-density of the data in its representation (uniformly dequantized values in
        [0, 1), or the raw floats), nats ``(B,)``."""
        return self.log_density(x.to(self.dtype))

    def elbo(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``log p((x + u) / L) - D log L - log q(u | x)`` for one ``u ~ q(u | x)``: a lower bound on
        the discrete ``log P(x)`` of the levels ``x``, nats ``(B,)`` (variational dequantization)."""
        x = x.to(self.dtype)
        u, log_q = self.dequantizer.sample(x, self.spec.levels, generator=generator)
        y = (x + u) / self.spec.levels
        return self.log_density(y) - self.dim * math.log(self.spec.levels) - log_q

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500) -> Tensor:
        """``log (1/k sum_j P_j)`` over ``k`` dequantizations (Burda et al. 2016's bound, Flow++'s
        evaluation), nats ``(B,)``."""
        per_chunk = max(1, chunk // len(x))  # dequantizations per network pass
        bounds = [self.elbo(x.repeat(r, *[1] * (x.ndim - 1))).view(r, len(x))
                  for r in (min(per_chunk, k - i) for i in range(0, k, per_chunk))]
        return torch.cat(bounds).logsumexp(0) - math.log(k)

    def withheld_capabilities(self) -> dict[str, str]:
        if self.dequantizer is not None:
            return {"log_prob": "variational dequantization bounds the discrete likelihood (elbo, iwae_bound)"}
        return {"elbo": "uniform dequantization gives the density itself (log_prob)",
                "iwae_bound": "uniform dequantization gives the density itself (log_prob)"}

    @property
    def elbo_description(self) -> str:
        return "variational dequantization bound, 1 sample of q(u|x)"

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x = batch.x
        if self.dequantizer is not None:
            nll = -self.elbo(x, generator=progress.generator).mean()
        else:
            nll = -self.log_density(x).mean()
        metrics = {"nll": nll.detach()}
        if self.discrete:  # bits/dim of the 8-bit data (module docstring)
            bound = nll.detach() + (self.dim * math.log(self.spec.levels) if self.dequantizer is None else 0.0)
            metrics["bits_per_dim"] = bound / (self.dim * math.log(2))
        return Loss(nll, metrics)

    # --- encoding and generation ------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def continuous(self, x: Tensor) -> Tensor:
        """The flow's continuous value of data ``x``: levels at the centres of their bins."""
        if self.spec.representation == "levels":
            return (x.to(self.dtype) + 0.5) / self.spec.levels
        return x.to(self.dtype)

    def to_data(self, y: Tensor) -> Tensor:
        """Continuous values ``y`` back in the data representation."""
        y = y.reshape(len(y), *self.spec.shape)
        if not self.discrete:
            return y
        if self.spec.representation == "levels":
            return (y * self.spec.levels).floor().clamp(0, self.spec.levels - 1).long()
        return y.clamp(0, 1 - 0.5 / self.spec.levels)

    def invert(self, z: Tensor) -> Tensor:
        """``y = f^-1(z)`` in the flow's continuous space, ``(B, *spec.shape)``, for latents ``(B, D)``."""
        h, _ = self.flow.inverse(z if self.multiscale else z.reshape(len(z), self.dim))
        y, _ = self.preprocess.inverse(h.reshape(len(h), *self.spec.shape))
        return y

    def encode(self, x: Tensor) -> Tensor:
        """The exact latent ``z = f(y)`` of each example, ``(B, D)``."""
        return self.latent(self.continuous(x))[0]

    def decode(self, z: Tensor) -> Tensor:
        """``f^-1(z)`` in the data representation, ``(B, *spec.shape)``."""
        return self.to_data(self.invert(z))

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None) -> Tensor:
        """``n`` samples ``(n, *spec.shape)``: ``z ~ N(0, T^2 I)`` through the inverse flow."""
        if condition is not None:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (--class)")
        ref = next(self.parameters())
        z = randn((n, self.dim), like=ref, generator=generator) * (1.0 if temperature is None else temperature)
        return self.decode(z)


# --- variational dequantization -----------------------------------------------------------------------
class VariationalDequantizer(nn.Module):
    """``q(u | x)`` on [0, 1)^D: ``u = sigmoid(g(eps; x))``, ``eps ~ N(0, I)``, ``g`` affine couplings
    conditioned on the image (Flow++, section 3.1)::

        log q(u | x) = log N(eps; 0, I) - log |det dg/deps| - log |det d sigmoid / dv|
    """

    def __init__(self, shape: tuple[int, ...], width: int, couplings: int) -> None:
        super().__init__()
        self.shape = shape
        if len(shape) == 3:  # images: checkerboard couplings, the image as extra channels
            C, H, W = shape
            layers: list[Transform] = [
                Coupling(checkerboard_mask(H, W, i % 2), ConvConditioner(C, width, 2 * C, context_channels=C), Affine())
                for i in range(couplings)]
        else:
            D = math.prod(shape)
            if D < 2:
                raise DgmError("variational dequantization needs at least 2 dimensions to couple: use "
                               "model.dequantization=uniform")
            layers = [mlp_coupling(half_mask(D, i % 2), (width, width), Affine(), context_features=D)
                      for i in range(couplings)]
        self.g = Compose(*layers, Inverse(Logit(0.0)))  # ... then the sigmoid onto (0, 1)

    def sample(self, x: Tensor, levels: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``u ~ q(u | x)`` ``(B, *shape)`` and ``log q(u | x)`` ``(B,)`` for levels ``x``."""
        flat = x.reshape(len(x), *self.shape) if len(self.shape) == 3 else x.reshape(len(x), -1)
        context = flat / (levels - 1) * 2 - 1  # the image in [-1, 1]
        eps = randn(flat.shape, like=flat, generator=generator)
        u, log_abs_det = self.g(eps, context)
        return u.reshape(x.shape), sum_per_example(normal_log_prob(eps)) - log_abs_det


# --- the models ---------------------------------------------------------------------------------------
def continuous_start(model: FlowModel, D: int) -> list[Transform]:
    """A data-initialised actnorm first on continuous data (the 2-D toys), whose scale is arbitrary;
    8-bit data comes through the logit already on a fixed scale."""
    return [] if model.discrete else [ActNorm(D)]


def mlp_coupling(mask: Tensor, hidden: tuple[int, ...], elementwise: Elementwise, *,
                 context_features: int = 0) -> Coupling:
    """A coupling of vectors: the features where ``mask`` holds feed an MLP whose outputs are the
    ``elementwise`` parameters of the other features."""
    kept, changed = int(mask.sum()), int((~mask).sum())
    return Coupling(mask, MLPConditioner(kept, hidden, elementwise.params_per_dim * changed,
                                         context_features=context_features), elementwise)


def channel_coupling(channels: int, parity: int, width: int, blocks: int) -> Coupling:
    """An affine coupling of image channels: one half of them feeds a convolutional network whose
    outputs are the shift and log-scale of the other half (RealNVP's channel mask, Glow's coupling)."""
    return Coupling(channel_mask(channels, parity), ConvConditioner(channels // 2, width, channels, blocks=blocks),
                    Affine())


def refuse_too_few(model: str, D: int) -> None:
    if D < 2:
        raise DgmError(f"model {model!r} couples halves of each example, but the data has {D} dimension: "
                       "use maf or iaf for 1-dimensional data")


@dataclass
class NICEConfig(FlowConfig):
    """Settings of :class:`NICE`."""

    couplings: PositiveInt = 4  # additive coupling layers, alternating odd and even dimensions (the paper's 4)
    hidden: tuple[PositiveInt, ...] = (1000, 1000, 1000, 1000, 1000)  # each coupling's MLP (the paper's 5 x 1000)


@register
class NICE(FlowModel):
    """NICE: additive couplings of the odd and even dimensions of a flattened example, then a
    diagonal scaling (Dinh, Krueger & Bengio 2015, arXiv:1410.8516, eqs. 6-7; the scaling is a
    data-initialised actnorm; the base is a standard normal instead of the paper's logistic).

    Example:
        >>> data = dgm.data.load("digits", representation="dequantized")
        >>> nice = dgm.create("nice", data.spec, hidden=(64, 64))
        >>> nice.log_prob(data.tensors(8).x)  # exact density of the dequantized data, nats
    """

    name = "nice"
    Config = NICEConfig
    description = "NICE: additive coupling flow with a diagonal scaling (volume-preserving couplings, exact NLL)"

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        (D,) = shape
        refuse_too_few(self.name, D)
        layers = continuous_start(self, D)
        for i in range(self.config.couplings):
            layers.append(mlp_coupling(alternating_mask(D, i % 2), self.config.hidden, Additive()))
        return Compose(*layers, ActNorm(D))  # the diagonal scaling S (eq. 7)


@dataclass
class RealNVPConfig(FlowConfig):
    """Settings of :class:`RealNVP`."""

    flatten: bool = False  # images: MLP couplings on the flattened image instead of the multi-scale conv flow
    scales: PositiveInt = 2  # multi-scale levels; the image side must divide by 2^(scales - 1)
    width: PositiveInt = 32  # channels of each coupling's convolutional network (the paper's 64 on CIFAR-10)
    blocks: PositiveInt = 1  # residual blocks in each coupling's network (the paper's 8 on CIFAR-10)
    couplings: PositiveInt = 6  # vectors (and flatten=true): affine couplings of alternating halves
    hidden: tuple[PositiveInt, ...] = (1024, 1024)  # vectors: each coupling's MLP


@register
class RealNVP(FlowModel):
    """RealNVP: affine couplings with checkerboard and channel masks, squeezes and factor-out
    (Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803, section 3): at every scale but the last
    three checkerboard couplings, a squeeze, three channel couplings, then half the channels leave
    the flow; four checkerboard couplings at the last. On vectors (and ``flatten=true``): affine
    couplings of alternating halves with MLP conditioners.

    Example:
        >>> data = dgm.data.load("digits", representation="dequantized")
        >>> realnvp = dgm.create("realnvp", data.spec, width=16, blocks=1)
        >>> realnvp.encode(data.tensors(8).x).shape  # exact latents, (8, 64)
    """

    name = "realnvp"
    Config = RealNVPConfig
    description = "RealNVP: affine coupling flow, checkerboard/channel masks, multi-scale (exact NLL)"

    @property
    def multiscale(self) -> bool:  # type: ignore[override]
        return self.spec.is_image and not self.config.flatten

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        c = self.config
        if len(shape) == 1:
            (D,) = shape
            refuse_too_few(self.name, D)
            layers = continuous_start(self, D)
            for i in range(c.couplings):
                layers.append(mlp_coupling(half_mask(D, i % 2), c.hidden, Affine()))
            return Compose(*layers)
        C, H, W = shape
        refuse_indivisible(self.name, H, W, 2 ** (c.scales - 1), f"scales={c.scales}", "scales")

        def checkerboard(C: int, H: int, W: int, parity: int) -> Coupling:
            return Coupling(checkerboard_mask(H, W, parity), ConvConditioner(C, c.width, 2 * C, blocks=c.blocks), Affine())

        levels, shapes = [], []
        for scale in range(c.scales):
            if scale == c.scales - 1:  # the last scale: four checkerboard couplings
                levels.append(Compose(*[checkerboard(C, H, W, i % 2) for i in range(4)]))
                shapes.append((C, H, W))
                break
            before = [checkerboard(C, H, W, i % 2) for i in range(3)]
            C, H, W = 4 * C, H // 2, W // 2
            after = [channel_coupling(C, i % 2, c.width, c.blocks) for i in range(3)]
            levels.append(Compose(*before, Squeeze(2), *after))
            shapes.append((C, H, W))
            C //= 2  # half the channels leave the flow
        return MultiScale(levels, shapes)


def refuse_indivisible(model: str, H: int, W: int, factor: int, setting: str, key: str) -> None:
    if H % factor or W % factor:
        raise DgmError(f"model {model!r} with {setting} squeezes the image by {factor} in all, but it is "
                       f"{H}x{W}: use fewer model.{key}, or an image whose sides divide by {factor}")


@dataclass
class GlowConfig(FlowConfig):
    """Settings of :class:`Glow`."""

    levels: PositiveInt = 2  # L: squeeze, K steps, split; the image side must divide by 2^L (the paper's 3 on 32x32)
    steps: PositiveInt = 8  # K: steps of flow per level (actnorm, 1x1 convolution, affine coupling; the paper's 32)
    width: PositiveInt = 128  # channels of each coupling's network (the paper's 512)
    blocks: Annotated[int, Range(0)] = 0  # extra residual blocks in each coupling's network (Glow has none)


@register
class Glow(FlowModel):
    """Glow: levels of (squeeze, K x [actnorm, invertible 1x1 convolution, affine coupling], split)
    with a learned prior of each factored half given the kept half (Kingma & Dhariwal 2018,
    arXiv:1807.03039, section 3, Table 1). The split prior is an affine coupling that maps the
    factored half given the kept half (a conditional Gaussian, like Glow's zero-initialised
    convolution, here with the coupling network).

    Example:
        >>> data = dgm.data.load("digits", representation="dequantized")
        >>> glow = dgm.create("glow", data.spec, levels=2, steps=2, width=16)
        >>> glow.sample(4, temperature=0.7).shape
    """

    name = "glow"
    Config = GlowConfig
    description = "Glow: actnorm + invertible 1x1 convolutions + affine couplings, multi-scale (exact NLL)"
    multiscale = True

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        c = self.config
        C, H, W = shape
        refuse_indivisible(self.name, H, W, 2 ** c.levels, f"levels={c.levels}", "levels")

        levels, shapes = [], []
        for level in range(c.levels):
            C, H, W = 4 * C, H // 2, W // 2
            layers: list[Transform] = [Squeeze(2)]
            for _ in range(c.steps):  # one step of flow (Table 1)
                layers += [ActNorm(C), InvertibleLinear(C), channel_coupling(C, 0, c.width, c.blocks)]
            if level < c.levels - 1:  # the prior of the half that leaves, given the half that stays
                layers.append(channel_coupling(C, 1, c.width, c.blocks))
            levels.append(Compose(*layers))
            shapes.append((C, H, W))
            C //= 2
        return MultiScale(levels, shapes)


@dataclass
class MAFConfig(FlowConfig):
    """Settings of :class:`MAF` and :class:`IAF`."""

    transforms: PositiveInt = 5  # MADE transforms, the order reversed between them (the paper's 5)
    hidden: tuple[PositiveInt, ...] = (1024,)  # each MADE's hidden layers (the paper's 1 x 1024 on MNIST)


@register
class MAF(FlowModel):
    """Masked autoregressive flow: MADE affine transforms with alternating orders; the density in one
    pass per transform, sampling in D passes (Papamakarios, Pavlakou & Murray 2017,
    arXiv:1705.07057, section 3; without the paper's batch norm between transforms).

    Example:
        >>> data = dgm.data.load("moons")
        >>> maf = dgm.create("maf", data.spec, hidden=(64,))
        >>> maf.log_prob(data.tensors(8).x)  # exact density, nats
    """

    name = "maf"
    Config = MAFConfig
    description = "MAF: masked autoregressive flow (MADE affine transforms; fast density, D-pass sampling)"

    def transform(self, D: int, reverse: bool) -> Transform:
        order = torch.arange(D).flip(0) if reverse else None
        return MaskedAutoregressive(D, self.config.hidden, Affine(), order=order)

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        (D,) = shape
        return Compose(*continuous_start(self, D), *[self.transform(D, i % 2 == 1) for i in range(self.config.transforms)])


@register
class IAF(MAF):
    """Inverse autoregressive flow as a density model: each MAF transform run backwards, so sampling
    takes one pass per transform and the density D (Kingma et al. 2016, arXiv:1606.04934;
    Papamakarios et al. 2017, section 3.3). Training by maximum likelihood pays the D passes."""

    name = "iaf"
    description = "IAF: inverse autoregressive flow (one-pass sampling, D-pass density)"

    def transform(self, D: int, reverse: bool) -> Transform:
        return Inverse(super().transform(D, reverse))


@dataclass
class SplineFlowConfig(FlowConfig):
    """Settings of :class:`SplineFlow`."""

    structure: Literal["coupling", "autoregressive"] = "coupling"  # RQ-NSF (C) or RQ-NSF (AR)
    transforms: PositiveInt = 4  # spline transforms, alternating halves (coupling) or orders (autoregressive)
    hidden: tuple[PositiveInt, ...] = (256, 256)  # each transform's network
    bins: PositiveInt = 8  # K: bins of each spline
    bound: PositiveFloat = 3.0  # B: the splines act on [-B, B], the identity outside (the paper's 3)


@register
class SplineFlow(FlowModel):
    """Neural spline flow: monotonic rational-quadratic splines with K bins on [-B, B] whose knots a
    coupling MLP or a MADE computes (Durkan, Bekasov, Murray & Papamakarios 2019, arXiv:1906.04032,
    RQ-NSF (C) and RQ-NSF (AR)).

    Example:
        >>> data = dgm.data.load("checkerboard")
        >>> flow = dgm.create("spline-flow", data.spec, hidden=(64, 64), bins=8)
        >>> flow.sample(1000).shape
    """

    name = "spline-flow"
    Config = SplineFlowConfig
    description = "Neural spline flow: rational-quadratic spline couplings or MADE (exact NLL)"

    def build_flow(self, shape: tuple[int, ...]) -> Transform:
        c = self.config
        (D,) = shape
        spline: Elementwise = RationalQuadraticSpline(bins=c.bins, bound=c.bound)
        layers = continuous_start(self, D)
        for i in range(c.transforms):
            if c.structure == "autoregressive":
                layers.append(MaskedAutoregressive(D, c.hidden, spline, order=torch.arange(D).flip(0) if i % 2 else None))
            else:
                refuse_too_few(self.name, D)
                layers.append(mlp_coupling(half_mask(D, i % 2), c.hidden, spline))
        return Compose(*layers)
