"""Helmholtz machines: a layered belief net trained with a recognition model by wake-sleep variants.

Vértes & Sahani 2018, "Flexible and accurate inference and learning for deep generative models",
NeurIPS, arXiv:1805.11051 (the DDC Helmholtz machine, ``ddc-hm``).
Bornschein & Bengio 2015, "Reweighted Wake-Sleep", ICLR, arXiv:1406.2751 (``rws``).

The generative model (:class:`LayeredBeliefNet`, shared by both) is a directed stack, z_1 next to
the data and z_L on top::

    p(x, z) = p(z_L) prod_{l<L} p(z_l | z_{l+1}) p(x | z_1)
    Bernoulli layer:  p(z_l = 1 | z_{l+1}) = sigmoid(W_l z_{l+1} + b_l)        (a sigmoid belief net)
    Gaussian layer:   p(z_l | z_{l+1})     = N(W_l z_{l+1} + b_l, diag exp(c_l))
    observation:      log p(x | z_1) = x . eta(z_1) - A(eta(z_1)),  eta = W_0 z_1 + b_0,
                      A(eta) = sum_d softplus(eta_d)                             (Bernoulli pixels)

**DDC Helmholtz machine.** The posterior is represented by a distributed distributional code, the
expectations of fixed non-linear features T(z) of all the latents (VS18 sec. 3; no equation
numbers here: they were not checked against the paper)::

    r(x) = E_{p(z|x)}[T(z)],   T(z) = [z, z^2 (Gaussian units), sigmoid(A z + a)]   (A, a fixed, random)

so E[z | x] is read off r directly. Sleep: draw (z_s, x_s) ~ p_theta and regress
T(z_s) on x_s, min_phi sum_s ||T(z_s) - r_phi(x_s)||^2 — a regression whose optimum is the
posterior expectation. Wake: the generative gradient is
grad_theta F = E_{p(z|x)}[grad_theta log p(x, z)], split for the exponential-family observation into

    grad log p(x, z) = grad[x . eta(z_1)] + h(z),    h(z) = grad_theta[log p(z) - A(eta(z_1))]

The first term is linear in z_1 (eta is affine), so its expectation is grad[x . eta(E[z_1|x])],
read exactly from the DDC. The second depends on z alone; as in the paper its expectation is a
linear readout of the DDC, E[h(z)|x] ~ alpha r(x), with alpha fitted on dreams by least squares
h(z_s) ~ alpha [1, T(z_s)]. (The paper learns alpha online in the sleep phase; here it is solved
in closed form on ``readout_samples`` fresh dreams at every wake step, so it never lags theta.)
With the ridge solution alpha = H^T Phi (Phi^T Phi + lambda N I)^-1 this is a weighted sum of
sleep-sample gradients,

    alpha r(x) = sum_s omega_s(x) h(z_s),  omega(x) = Phi (Phi^T Phi + lambda N I)^-1 [1, r(x)]

so the wake step differentiates sum_s omega_s log-terms of z_s (omega detached) instead of forming
one gradient vector per sample — the same estimator, without the (parameters x features) matrix.

**Reweighted wake-sleep.** A layered recognition model q(z|x) = q(z_1|x) prod q(z_{l+1}|z_l) (sigmoid
or Gaussian layers) proposes K samples; w_k = p(x, z_k) / q(z_k|x), w~_k = w_k / sum_j w_j:

    wake p:  grad_theta ~ sum_k w~_k grad_theta log p(x, z_k)                          (wake phase, p)
    wake q:  grad_phi   ~ sum_k w~_k grad_phi log q(z_k | x)                           (wake phase, q)
    sleep q: grad_phi   =  grad_phi log q(z_s | x_s),  (x_s, z_s) ~ p                   (sleep phase, q)

**Likelihood.** Both give log p(x) by importance sampling, L_K = log 1/K sum_k p(x, z_k)/q(z_k|x)
(a stochastic lower bound, Burda et al. 2016 eq. 8): RWS with its q, the DDC machine with a
factorial proposal matched to the DDC's moments (Bernoulli units: mean E[z_j|x]; Gaussian units:
mean and variance from E[z_j], E[z_j^2]).

:func:`exact_posterior` enumerates the posterior of a small all-Bernoulli net (the known answer the
tests and ``benchmarks/helmholtz.py`` compare against).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import BINARY_REPRESENTATIONS, Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, rand, randn, register
from dgm.models.refusals import refuse_variable_length
from dgm.nn import MLP
from dgm.nn.distributions import normal_log_prob
from dgm.settings import Fraction, NonNegativeInt, PositiveFloat, PositiveInt

Latents = Literal["bernoulli", "gaussian", "mixed"]
PADDING_REASON = "its Bernoulli likelihood covers every position of a fixed-size example"


# --- the generative model both machines share --------------------------------------------------------
def layer_log_prob(kind: str, z: Tensor, params: Tensor, log_var: Tensor | None) -> Tensor:
    """log p(z | params) of one layer summed over units, ``(N,)``: Bernoulli with logits ``params``
    or a diagonal Gaussian with mean ``params`` and log-variance ``log_var``."""
    if kind == "bernoulli":
        return -F.binary_cross_entropy_with_logits(params, z, reduction="none").sum(-1)
    return normal_log_prob(z, params, log_var).sum(-1)


def layer_sample(kind: str, params: Tensor, log_var: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """A draw of one layer given its parameters (see :func:`layer_log_prob`), ``(N, d)``."""
    if kind == "bernoulli":
        return (rand(params.shape, like=params, generator=generator) < torch.sigmoid(params)).to(params.dtype)
    return params + (0.5 * log_var).exp() * randn(params.shape, like=params, generator=generator)


def layer_kinds(latents: str, depth: int) -> tuple[str, ...]:
    """The kind of z_1, ..., z_L: all Bernoulli, all Gaussian, or ``mixed`` (a Bernoulli top layer
    over Gaussian layers: a discrete cause of continuous ones)."""
    if latents == "mixed":
        return ("gaussian",) * (depth - 1) + ("bernoulli",)
    return (latents,) * depth


class LayeredBeliefNet(nn.Module):
    """p(x, z) of the module docstring over ``dim`` binary pixels, latents ``dims`` (z_1 first) of
    ``kinds``. Latents travel as lists ``[z_1 (N, d_1), ..., z_L (N, d_L)]``."""

    def __init__(self, dim: int, dims: tuple[int, ...], kinds: tuple[str, ...]) -> None:
        super().__init__()
        self.dim, self.dims, self.kinds = dim, dims, kinds
        self.top = nn.Parameter(torch.zeros(dims[-1]))  # logits of a Bernoulli top, the mean of a Gaussian N(top, I)
        # top-down maps z_{l+1} -> params of z_l, l = 1..L-1; ``observation`` maps z_1 -> eta
        self.down = nn.ModuleList(nn.Linear(dims[l + 1], dims[l]) for l in range(len(dims) - 1))
        # log-variances of the Gaussian layers below the top, by layer index
        self.log_var = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(dims[l]))
                                         for l in range(len(dims) - 1) if kinds[l] == "gaussian"})
        self.observation = nn.Linear(dims[0], dim)

    def _top_params(self, n: int) -> Tensor:
        return self.top.expand(n, -1)

    def _top_log_var(self) -> Tensor:
        return self.top.new_zeros(self.dims[-1])  # a Gaussian top has unit variance

    def _log_var(self, l: int) -> Tensor | None:
        return self.log_var[str(l)] if str(l) in self.log_var else None

    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> list[Tensor]:
        """Ancestral draws ``[z_1, ..., z_L]`` from p(z)."""
        z = layer_sample(self.kinds[-1], self._top_params(n), self._top_log_var(), generator)
        zs = [z]
        for l in reversed(range(len(self.down))):
            z = layer_sample(self.kinds[l], self.down[l](z), self._log_var(l), generator)
            zs.insert(0, z)
        return zs

    def eta(self, z1: Tensor) -> Tensor:
        """Natural parameters (logits) of p(x | z_1), ``(N, dim)``."""
        return self.observation(z1)

    def sample_x(self, z1: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return layer_sample("bernoulli", self.eta(z1), None, generator)

    def log_prior(self, zs: list[Tensor]) -> Tensor:
        """log p(z) = log p(z_L) + sum_l log p(z_l | z_{l+1}), ``(N,)``."""
        top = zs[-1]
        out = layer_log_prob(self.kinds[-1], top, self._top_params(len(top)), self._top_log_var())
        for l, layer in enumerate(self.down):
            out = out + layer_log_prob(self.kinds[l], zs[l], layer(zs[l + 1]), self._log_var(l))
        return out

    def log_likelihood(self, x: Tensor, z1: Tensor) -> Tensor:
        """log p(x | z_1), ``(N,)``, x flattened ``(N, dim)``."""
        return layer_log_prob("bernoulli", x, self.eta(z1), None)

    def log_joint(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        return self.log_prior(zs) + self.log_likelihood(x, zs[0])

    def log_partition(self, z1: Tensor) -> Tensor:
        """A(eta(z_1)) = sum_d softplus(eta_d), ``(N,)``: log p(x|z_1) = x . eta - A."""
        return F.softplus(self.eta(z1)).sum(-1)


def exact_posterior(net: LayeredBeliefNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """Exact log p(x) ``(B,)`` and E[z | x] ``(B, sum d_l)`` of an all-Bernoulli ``net`` by
    enumerating all 2^(sum d_l) latent configurations (only for small nets: <= 20 units)."""
    total = sum(net.dims)
    if any(k != "bernoulli" for k in net.kinds) or total > 20:
        raise DgmError(f"exact_posterior enumerates all-Bernoulli nets of <= 20 latent units, got {net.kinds} "
                       f"with {total}: use a smaller net")
    configs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=total)), dtype=x.dtype)  # (M, total)
    zs = list(configs.split(list(net.dims), -1))
    B, M = len(x), len(configs)
    log_joint = net.log_joint(x.repeat_interleave(M, 0), [z.repeat(B, 1) for z in zs]).view(B, M)
    log_px = log_joint.logsumexp(-1)  # (B,)
    mean = (log_joint - log_px[:, None]).exp() @ configs  # (B, total)
    return log_px, mean


# --- what both machines share: data, sampling, importance-sampled likelihood -----------------------
@dataclass
class HelmholtzConfig:
    """Settings of the generative model both Helmholtz machines share."""

    latent_dims: tuple[PositiveInt, ...] = (64, 32)  # sizes of z_1 (next to x), ..., z_L (top)
    latents: Latents = "bernoulli"  # bernoulli (a sigmoid belief net), gaussian, or mixed (Bernoulli top layer)


class HelmholtzMachine(GenerativeModel):
    """A :class:`LayeredBeliefNet` over flattened binarized data, with what follows from a proposal
    q(z|x): importance weights and the IWAE estimate of log p(x). Subclasses give the recognition
    model, its :meth:`propose` and the wake and sleep phases."""

    def __init__(self, config: HelmholtzConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        if spec.representation not in BINARY_REPRESENTATIONS:
            raise DgmError(f"{self.name} models binary data, but {spec.name!r} is {spec.representation!r}: "
                           f"use a binarizable image dataset with data.representation=binary-dynamic")
        self.generative = LayeredBeliefNet(spec.dim, config.latent_dims, layer_kinds(config.latents,
                                                                                      len(config.latent_dims)))

    @classmethod
    def default_representation(cls, config: HelmholtzConfig, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        if spec.levels is None:
            raise DgmError(f"{cls.name} models binary data, but {spec.name!r} is continuous: use an image dataset")
        return "binary-dynamic"

    @staticmethod
    def flat(x: Tensor) -> Tensor:
        return x.flatten(1).float()  # images (B, C, H, W) -> (B, D)

    def propose(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
        """``k`` draws per example from the proposal, ``[z_l (k*B, d_l)]`` (sample-major), and their
        log q ``(k*B,)``; ``x`` flat ``(B, D)``."""
        raise NotImplementedError

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log w_i = log p(x, z_i) - log q(z_i | x), ``(k, B)``."""
        x = self.flat(x)
        zs, log_q = self.propose(x, k, generator=generator)
        return (self.generative.log_joint(x.repeat(k, 1), zs) - log_q).view(k, len(x))

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """L_k = log 1/k sum_i w_i in nats, ``(B,)``, the k draws taken ``chunk`` at a time."""
        with torch.no_grad():
            parts = [self.log_weights(x, min(chunk, k - i), generator=generator) for i in range(0, k, chunk)]
        return torch.cat(parts).logsumexp(0) - math.log(k)

    @property
    def log_prob_description(self) -> str:
        return "importance sampled"

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        if condition is not None:
            raise DgmError(f"{self.name} is unconditional: drop the condition")
        z1 = self.generative.sample_latents(n, generator=generator)[0]
        return self.generative.sample_x(z1, generator=generator).view(n, *self.spec.shape)

    def dream(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, list[Tensor]]:
        """(x_s (n, D), [z_l]) ~ p_theta without a graph: the sleep phase's data."""
        with torch.no_grad():
            zs = self.generative.sample_latents(n, generator=generator)
            return self.generative.sample_x(zs[0], generator=generator), zs


# --- the DDC Helmholtz machine ---------------------------------------------------------------------
@dataclass
class DDCConfig(HelmholtzConfig):
    """Settings of :class:`DDCHelmholtzMachine` (``--set model.KEY=VALUE``)."""

    features: PositiveInt = 200  # random sigmoid features sigmoid(A z + a) of T(z), besides z (and z^2)
    feature_scale: PositiveFloat = 1.0  # std of A's entries times sqrt(latent units): the features' sharpness
    hidden: tuple[PositiveInt, ...] = (256, 256)  # recognition MLP widths, x -> r(x)
    sleep_samples: PositiveInt = 128  # dreams (x_s, z_s) per sleep step
    readout_samples: PositiveInt = 512  # dreams per wake step for the gradient readout alpha
    ridge: PositiveFloat = 1e-3  # lambda of the readout's ridge regression, per sample
    proposal_floor: Fraction = 0.02  # Bernoulli proposal means kept in [floor, 1 - floor] (finite weights)
    feature_seed: NonNegativeInt = 0  # seed of the fixed random projection A, a (saved with the weights anyway)


@register
class DDCHelmholtzMachine(HelmholtzMachine):
    """DDC Helmholtz machine (Vértes & Sahani 2018): a recognition MLP outputs the posterior
    expectations of random features of the latents; extended wake-sleep trains both.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> hm = dgm.create("ddc-hm", data.spec, latent_dims=(16, 8))
    """

    name = "ddc-hm"
    Config = DDCConfig
    description = "DDC Helmholtz machine: distributional posterior codes, extended wake-sleep (sigmoid belief nets)"

    def __init__(self, config: DDCConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        units = sum(config.latent_dims)
        g = torch.Generator().manual_seed(config.feature_seed)
        self.register_buffer("A", torch.randn(units, config.features, generator=g) * config.feature_scale
                             / math.sqrt(units))
        self.register_buffer("a", torch.randn(config.features, generator=g) * config.feature_scale)
        offsets = [sum(config.latent_dims[:l]) for l in range(len(config.latent_dims))]
        self.register_buffer("square_index", torch.tensor(
            [offsets[l] + u for l, d in enumerate(config.latent_dims) if self.generative.kinds[l] == "gaussian"
             for u in range(d)], dtype=torch.long))
        self.num_features = units + len(self.square_index) + config.features
        self.recognition = MLP(spec.dim, config.hidden, self.num_features)

    def features(self, zs: list[Tensor]) -> Tensor:
        """T(z) = [z, z^2 of the Gaussian units, sigmoid(A z + a)], ``(N, num_features)``."""
        z = torch.cat(zs, -1)  # (N, units)
        return torch.cat([z, z[:, self.square_index] ** 2, torch.sigmoid(z @ self.A + self.a)], -1)

    def ddc(self, x: Tensor) -> Tensor:
        """r(x) ~ E_{p(z|x)}[T(z)], ``(B, num_features)``."""
        return self.recognition(self.flat(x))

    def posterior_mean(self, x: Tensor) -> Tensor:
        """E[z | x] read off the DDC, ``(B, units)`` (z_1 first)."""
        return self.ddc(x)[:, :sum(self.config.latent_dims)]

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior_mean(x)

    # --- training ---------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase("sleep", list(self.recognition.parameters())),
                Phase("wake", list(self.generative.parameters()))]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        if phase == "sleep":
            return self.sleep_loss(progress.generator)
        if phase == "wake":
            return self.wake_loss(self.flat(batch.x), progress.generator)
        raise ValueError(f"unknown phase {phase!r}")

    def sleep_loss(self, generator: torch.Generator | None) -> Loss:
        """The sleep regression: mean_s ||T(z_s) - r(x_s)||^2 over dreams (x_s, z_s) ~ p_theta."""
        x, zs = self.dream(self.config.sleep_samples, generator)
        error = (self.features(zs) - self.recognition(x)).pow(2).sum(-1)  # (N,)
        return Loss(error.mean(), {"sleep_error": error.mean()})

    def readout_weights(self, r: Tensor, phi: Tensor) -> Tensor:
        """omega ``(N,)``: the batch-mean of the ridge readout of [1, r(x)] onto the dreams'
        features ``phi`` = [1, T(z_s)] ``(N, F+1)``, so that mean_x alpha r(x) = sum_s omega_s h(z_s)."""
        N = len(phi)
        gram = phi.T @ phi + self.config.ridge * N * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        r1 = torch.cat([r.new_ones(len(r), 1), r], -1).mean(0)  # (F+1,) mean DDC of the batch
        return phi @ torch.linalg.solve(gram, r1)  # (N,)

    def wake_loss(self, x: Tensor, generator: torch.Generator | None) -> Loss:
        """Minus the surrogate whose gradient is the DDC estimate of mean_x E_{p(z|x)}[grad log p(x, z)]:
        x . eta(E[z_1|x]) (exact: eta affine) plus sum_s omega_s [log p(z_s) - A(eta(z_s,1))]."""
        with torch.no_grad():
            r = self.ddc(x)  # (B, F)
            _, zs = self.dream(self.config.readout_samples, generator)
            phi = torch.cat([zs[0].new_ones(len(zs[0]), 1), self.features(zs)], -1)
            omega = self.readout_weights(r, phi)  # (N,)
        m1 = r[:, :self.config.latent_dims[0]]  # E[z_1 | x] from the DDC
        net = self.generative
        data_term = (x * net.eta(m1)).sum(-1).mean()
        latent_term = (omega * (net.log_prior(zs) - net.log_partition(zs[0]))).sum()
        surrogate = data_term + latent_term
        return Loss(-surrogate, {"readout_weight_sum": omega.sum()})

    # --- the proposal for the likelihood ----------------------------------------------------------
    def propose(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
        """Factorial proposal with the DDC's moments: Bernoulli(E[z_j|x]) units, Gaussian units
        N(E[z_j], E[z_j^2] - E[z_j]^2)."""
        c = self.config
        r = self.ddc(x)
        units = sum(c.latent_dims)
        means = r[:, :units].split(list(c.latent_dims), -1)
        squares = r[:, units:units + len(self.square_index)]
        zs, log_q, used = [], x.new_zeros(k * len(x)), 0
        for l, kind in enumerate(self.generative.kinds):
            m = means[l].repeat(k, 1)  # (k*B, d_l)
            if kind == "bernoulli":
                logits = torch.logit(m.clamp(c.proposal_floor, 1 - c.proposal_floor))
                z, log_var = layer_sample(kind, logits, None, generator), None
                params = logits
            else:
                d = c.latent_dims[l]
                var = (squares[:, used:used + d].repeat(k, 1) - m ** 2).clamp(min=1e-2)
                used += d
                params, log_var = m, var.log()
                z = layer_sample(kind, params, log_var, generator)
            zs.append(z)
            log_q = log_q + layer_log_prob(kind, z, params, log_var)
        return zs, log_q


# --- reweighted wake-sleep -------------------------------------------------------------------------
@dataclass
class RWSConfig(HelmholtzConfig):
    """Settings of :class:`ReweightedWakeSleep` (``--set model.KEY=VALUE``)."""

    hidden: tuple[PositiveInt, ...] = ()  # widths of each recognition layer's MLP; () is affine (as in RWS)
    samples: PositiveInt = 5  # K proposals per example in the wake updates
    q_update: Literal["wake", "sleep", "both"] = "both"  # which updates train q (RWS recommends both)


@register
class ReweightedWakeSleep(HelmholtzMachine):
    """Reweighted wake-sleep (Bornschein & Bengio 2015): a layered recognition model proposes K
    latents per example, and normalised importance weights train both models.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> rws = dgm.create("rws", data.spec, latent_dims=(16, 8), samples=5)
    """

    name = "rws"
    Config = RWSConfig
    description = "reweighted wake-sleep: importance-weighted wake updates of p and q, sleep updates of q"

    def __init__(self, config: RWSConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        dims, kinds = config.latent_dims, self.generative.kinds
        # bottom-up q(z_1 | x), q(z_{l+1} | z_l): logits, or mean and log-variance
        inputs = (spec.dim, *dims[:-1])
        self.up = nn.ModuleList(MLP(i, config.hidden, d * (1 if kind == "bernoulli" else 2))
                                for i, d, kind in zip(inputs, dims, kinds))

    def q_params(self, l: int, below: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.up[l](below)
        return (out, None) if self.generative.kinds[l] == "bernoulli" else tuple(out.chunk(2, -1))

    def log_q(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """log q(z | x) of given latents, ``(N,)``."""
        below, out = x, x.new_zeros(len(x))
        for l, z in enumerate(zs):
            params, log_var = self.q_params(l, below)
            out, below = out + layer_log_prob(self.generative.kinds[l], z, params, log_var), z
        return out

    def propose(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
        below, zs, log_q = x.repeat(k, 1), [], x.new_zeros(k * len(x))
        for l, kind in enumerate(self.generative.kinds):
            params, log_var = self.q_params(l, below)
            below = layer_sample(kind, params, log_var, generator)
            zs.append(below)
            log_q = log_q + layer_log_prob(kind, below, params, log_var)
        return zs, log_q

    def phases(self) -> list[Phase]:
        return [Phase("model", list(self.generative.parameters())),
                Phase("recognition", list(self.up.parameters()))]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x, c = self.flat(batch.x), self.config
        if phase not in ("model", "recognition"):
            raise ValueError(f"unknown phase {phase!r}")
        terms, metrics = [], {}
        if phase == "model" or c.q_update != "sleep":
            with torch.no_grad():
                zs, _ = self.propose(x, c.samples, generator=progress.generator)
            xk = x.repeat(c.samples, 1)
            # each phase differentiates its own model only: the other's log-density is a constant
            with torch.set_grad_enabled(phase == "model"):
                log_p = self.generative.log_joint(xk, zs).view(c.samples, len(x))  # (K, B)
            with torch.set_grad_enabled(phase == "recognition"):
                log_q = self.log_q(xk, zs).view(c.samples, len(x))
            log_w = (log_p - log_q).detach()
            w = log_w.softmax(0)  # (K, B) normalised importance weights
            metrics["iwae"] = (log_w.logsumexp(0) - math.log(c.samples)).mean()
            if phase == "model":  # wake p
                return Loss(-(w * log_p).sum(0).mean(), metrics)
            terms.append(-(w * log_q).sum(0).mean())  # wake q
        if c.q_update != "wake":  # sleep q: fit q to dreams
            x_s, zs_s = self.dream(len(x), progress.generator)
            sleep = -self.log_q(x_s, zs_s).mean()
            metrics["sleep_nll"] = sleep
            terms.append(sleep)
        return Loss(sum(terms), metrics)
