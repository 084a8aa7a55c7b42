"""The ladder variational autoencoder: a hierarchy of Gaussian latents inferred top-down.

Sønderby, Raiko, Maaløe, Sønderby & Winther 2016, "Ladder Variational Autoencoders", NeurIPS,
arXiv:1602.02282. Layers are numbered as in the paper, z_1 next to the data and z_L at the top;
``latent_dims`` lists their sizes in that order (bottom first), e.g. ``(64, 32)``: z_1 in R^64, z_2 in R^32.

**Generative model** (eqs. 1-3)::

    p(z)           = p(z_L) prod_{i=1}^{L-1} p(z_i | z_{i+1})                                     (1)
    p(z_i|z_{i+1}) = N(z_i; mu_{p,i}(z_{i+1}), sigma_{p,i}^2(z_{i+1})),   p(z_L) = N(0, I)       (2)
    p(x | z_1)     = the shared observation likelihood (Bernoulli for binarized data, ...)      (3)

**Inference model**. A deterministic bottom-up pass d_1 = MLP(x), d_i = MLP(d_{i-1}) gives at each
layer an approximate likelihood term (mu^_i, sigma^_i^2) (linear heads on d_i). The top-down pass
samples z_L ~ q(z_L | x) = N(mu^_L, sigma^_L^2) (the top layer has no prior term to combine with but
N(0, I), which stays in the KL), then for i = L-1, ..., 1 combines the bottom-up term with the
generative model's own p(z_i | z_{i+1}) at the sampled z_{i+1} by precision weighting (eqs. 17-19)::

    q(z_i | z_{i+1}, x) = N(z_i; mu_{q,i}, sigma_{q,i}^2)                                       (17)
    mu_{q,i}      = (mu^_i sigma^_i^-2 + mu_{p,i} sigma_{p,i}^-2) / (sigma^_i^-2 + sigma_{p,i}^-2)  (18)
    sigma_{q,i}^2 = 1 / (sigma^_i^-2 + sigma_{p,i}^-2)                                          (19)

i.e. q is the normalised product of the two Gaussian densities (:func:`precision_weighted`, in
log-variances). The top-down networks mu_{p,i}, sigma_{p,i} are shared by inference and generation.

**Objective**: the ELBO with one top-down sample (z_L, ..., z_1) ~ q::

    ELBO = log p(x | z_1) - sum_i KL_i
    KL_L = KL(q(z_L|x) || N(0, I))                       analytic, always
    KL_i = KL(q(z_i|z_{i+1},x) || p(z_i|z_{i+1})), i < L  at the sampled z_{i+1}:
           kl_estimator="analytic": the closed-form KL of the two Gaussians (both are Gaussian given
                                    the same z_{i+1}); an unbiased, lower-variance estimate of the
                                    same term (the expectation over z_i done exactly)
           kl_estimator="sample":   log q(z_i|z_{i+1},x) - log p(z_i|z_{i+1}) at the sampled z_i
                                    (Monte Carlo over z_i as well)

Both have the expectation E_q[log q(z|x) - log p(z)]. Training weighs the KL terms by a linear KL
warm-up beta = min(1, (step + 1) / kl_warmup_steps) (the paper's deterministic warm-up) and can
count each latent unit's batch-averaged KL as at least ``free_bits`` nats (Kingma et al. 2016,
arXiv:1606.04934, eq. 15). Batch normalisation of the deterministic blocks (the paper's) is an
option; the bounds, codes and samples always use its running statistics (eval mode).

Bounds: :meth:`LadderVAE.elbo` and the importance-weighted :meth:`LadderVAE.iwae_bound` (Burda et al.
2016, arXiv:1509.00519, eq. 8) with w = p(x|z_1) p(z) / q(z|x) at full top-down samples.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, capability, randn, register
from dgm.models.refusals import refuse_variable_length
from dgm.models.vae import PADDING_REASON, VAE, emit, likelihood_of, weighted_kl
from dgm.nn.distributions import diagonal_gaussian, normal_kl, normal_log_prob
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt


@dataclass
class LadderVAEConfig:
    """Settings of :class:`LadderVAE` (``--set model.KEY=VALUE``; tuples as ``64,32``)."""

    latent_dims: tuple[PositiveInt, ...] = (64, 32)  # sizes of z_1 (next to x), ..., z_L (top); at least 2 layers
    # width of each deterministic block d_i, bottom first: one per layer, or one for all
    hidden: tuple[PositiveInt, ...] = (512, 256)
    block_depth: PositiveInt = 2  # linear layers per deterministic block (the paper's MLPs: 2)
    batch_norm: bool = True  # batch-normalise the blocks' hidden layers (the paper's; bounds use running stats)
    likelihood: Literal["bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"] = "bernoulli"
    gaussian_scale: Literal["learned", "output"] = "learned"  # gaussian: a free per-dim scale, or decoded
    mixture_components: PositiveInt = 5  # logistic-mixture: components per dimension
    kl_warmup_steps: NonNegativeInt = 1000  # ramp the KL weight linearly from 0 to 1 over this many steps (0: off)
    free_bits: NonNegativeFloat = 0.0  # minimum nats of batch-averaged KL counted per latent unit (0: off)
    kl_estimator: Literal["analytic", "sample"] = "analytic"  # KL_i of the layers below the top (module docstring)
    sample_mean: bool = True  # sample() returns the decoder mean E[x|z_1] (the usual picture); False draws x~p(x|z_1)


def precision_weighted(mu_hat: Tensor, logvar_hat: Tensor, mu_p: Tensor, logvar_p: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance of N(mu_hat, e^logvar_hat) N(mu_p, e^logvar_p), normalised: the
    precision-weighted combination of eqs. 18-19, elementwise.

    sigma_q^2 = 1 / (sigma^-2 + sigma_p^-2) is computed as -logaddexp(-logvar_hat, -logvar_p), and the
    weights of the two means, sigma^-2 / (sigma^-2 + sigma_p^-2) = sigmoid(logvar_p - logvar_hat) and its
    complement, without forming precisions that overflow for small variances.
    """
    logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
    w_hat = torch.sigmoid(logvar_p - logvar_hat)  # the bottom-up term's share of the precision
    return w_hat * mu_hat + (1 - w_hat) * mu_p, logvar_q


def block(in_features: int, width: int, depth: int, batch_norm: bool) -> nn.Sequential:
    """``depth`` linear layers of ``width`` units, each followed by (batch norm and) SiLU: a
    deterministic block of the ladder, ``(B, in_features) -> (B, width)``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(in_features if i == 0 else width, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def gaussian_head(width: int, dim: int) -> nn.Module:
    """A linear map to the mean and log-variance of a ``dim``-dimensional diagonal Gaussian, ``(B, 2 dim)``."""
    return nn.Linear(width, 2 * dim)


def split_gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance from a head's output ``(B, 2 d)``, each ``(B, d)``, in float32 (the KL
    terms of many units are summed), the log-variance clamped as every family's (:func:`diagonal_gaussian`)."""
    return diagonal_gaussian(params.float())


@dataclass
class TopDown:
    """One top-down pass of the inference model, every list bottom first (index 0 is z_1), each
    tensor ``(N, d_i)`` with N = k * B rows for k samples of B examples (sample-major)."""

    z: list[Tensor]  # the sampled (or, for codes, mean) z_i
    q: list[tuple[Tensor, Tensor]]  # mean and log-variance of q(z_i | z_{i+1}, x) (top: q(z_L | x))
    p: list[tuple[Tensor, Tensor]]  # mean and log-variance of p(z_i | z_{i+1}) at the same z_{i+1} (top: 0, 0)


def repeat_rows(t: Tensor, k: int) -> Tensor:
    """``(B, ...) -> (k * B, ...)``, sample-major: row s * B + b is example b."""
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


@register
class LadderVAE(GenerativeModel):
    """Ladder VAE: L >= 2 Gaussian stochastic layers, a bottom-up deterministic pass and a top-down
    inference pass that shares the generative model's conditional priors (precision-weighted).

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> lvae = dgm.create("ladder-vae", data.spec, latent_dims=(16, 8), hidden=(128, 64))
        >>> lvae.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "ladder-vae"
    Config = LadderVAEConfig
    description = "ladder VAE: a hierarchy of Gaussian latents, top-down inference (KL warm-up, free bits; MLP)"

    def __init__(self, config: LadderVAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        dims = config.latent_dims
        if len(dims) < 2:
            raise DgmError(f"model.latent_dims needs at least 2 stochastic layers, got {dims}: give one size per "
                           f"layer, bottom first (e.g. --set model.latent_dims=64,32), or use the vae for one layer")
        if len(config.hidden) not in (1, len(dims)):
            raise DgmError(f"model.hidden gives {len(config.hidden)} widths for {len(dims)} stochastic layers: give "
                           f"one width per layer, bottom first, or one width for all")
        widths = config.hidden if len(config.hidden) == len(dims) else config.hidden * len(dims)
        depth, bn = config.block_depth, config.batch_norm
        self.likelihood = likelihood_of(config, spec)  # type: ignore[arg-type]  (the same likelihood fields)
        out_shape = self.likelihood.params_shape
        # bottom-up: d_i = block_i(d_{i-1}) (d_0 = x flattened), (mu^_i, logvar^_i) = up_heads[i](d_i)
        self.up = nn.ModuleList(block(spec.dim if i == 0 else widths[i - 1], widths[i], depth, bn)
                                for i in range(len(dims)))
        self.up_heads = nn.ModuleList(gaussian_head(widths[i], dims[i]) for i in range(len(dims)))
        # top-down: p(z_i | z_{i+1}) for i < L mirrors the bottom-up block that made d_{i+1}
        self.down = nn.ModuleList(nn.Sequential(block(dims[i + 1], widths[i + 1], depth, bn),
                                                gaussian_head(widths[i + 1], dims[i]))
                                  for i in range(len(dims) - 1))
        # p(x | z_1) mirrors the first bottom-up block
        self.decoder = nn.Sequential(block(dims[0], widths[0], depth, bn),
                                     nn.Linear(widths[0], math.prod(out_shape)), nn.Unflatten(1, out_shape))

    @classmethod
    def default_representation(cls, config: LadderVAEConfig, spec: DataSpec) -> str:
        # the VAE's rule (the representation the likelihood is made for), with this model's name in errors
        return VAE.default_representation.__func__(cls, config, spec)  # type: ignore[attr-defined]

    @property
    def likelihood_kind(self) -> str:
        return "discrete" if self.likelihood.discrete else "density"

    @property
    def num_layers(self) -> int:
        return len(self.config.latent_dims)

    @property
    def elbo_description(self) -> str:
        kl = ("KL of z_L analytic, of z_i<L analytic given z_i+1" if self.config.kl_estimator == "analytic"
              else "KL of z_L analytic, of z_i<L log q - log p at the sample")
        return f"ELBO, 1 top-down sample, {kl}"

    @property
    def kl_description(self) -> str:
        """How :meth:`kl_per_dim` estimates the KL (analytic whatever ``kl_estimator``, so every unit's
        value is >= 0), for result tables."""
        return "KL of z_L analytic, of z_i<L analytic given one top-down sample of z_i+1"

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (batch norm's running statistics) for bounds, codes and samples, whatever mode the
        model is in: a bound must not depend on the other examples of its batch or on k copies of them."""
        was_training = self.training
        self.train(False)
        try:
            yield
        finally:
            self.train(was_training)

    # --- the two passes ---------------------------------------------------------------------------
    def bottom_up(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The approximate likelihood terms (mu^_i, logvar^_i) of every layer, bottom first, each ``(B, d_i)``."""
        d = (x if x.is_floating_point() else x.float()).flatten(1)  # d_0 = x, (B, D)
        terms = []
        for up, head in zip(self.up, self.up_heads):
            d = up(d)  # d_i, (B, hidden_i)
            terms.append(split_gaussian(head(d)))
        return terms

    def prior(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the layer at 0-based index ``i`` given the one above (``z_above``,
        ``(N, d_{i+1})``): p(z_{i+1} | z_{i+2}) in the paper's 1-based numbering (eq. 2), each ``(N, d_i)``."""
        return split_gaussian(self.down[i](z_above))

    def top_down(self, x: Tensor, k: int = 1, *, generator: torch.Generator | None = None,
                 mean: bool = False) -> TopDown:
        """The inference pass of eqs. 17-19 for ``k`` samples of each example (``mean``: each z_i set to
        the mean of its q instead of drawn, for codes). Noise is drawn top layer first from ``generator``."""
        terms = [(repeat_rows(m, k), repeat_rows(v, k)) for m, v in self.bottom_up(x)] if k > 1 else self.bottom_up(x)
        L = len(terms)
        z: list[Tensor] = [torch.empty(0)] * L
        q: list[tuple[Tensor, Tensor]] = [terms[-1]] * L
        p: list[tuple[Tensor, Tensor]] = [(torch.zeros_like(terms[-1][0]), torch.zeros_like(terms[-1][1]))] * L
        for i in reversed(range(L)):
            if i < L - 1:  # combine the bottom-up term with p(z_i | z_{i+1}) at the sampled z_{i+1}
                p[i] = self.prior(i, z[i + 1])
                q[i] = precision_weighted(*terms[i], *p[i])
            mu_q, logvar_q = q[i]
            z[i] = mu_q if mean else mu_q + randn(mu_q.shape, like=mu_q, generator=generator) * (0.5 * logvar_q).exp()
        return TopDown(z, q, p)

    def decoder_params(self, z1: Tensor) -> Tensor:
        """The likelihood's parameters for z_1 ``(N, d_1)``, in at least float32 (as the VAE's)."""
        params = self.decoder(z1)
        return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params

    def layer_kl(self, td: TopDown, estimator: Literal["analytic", "sample"]) -> list[Tensor]:
        """The KL term of each layer per latent unit, bottom first, each ``(N, d_i)`` (module docstring):
        the top layer's analytic against N(0, I); the others by ``estimator``."""
        out = []
        for i, (z, (mu_q, logvar_q), (mu_p, logvar_p)) in enumerate(zip(td.z, td.q, td.p)):
            if estimator == "analytic" or i == self.num_layers - 1:
                out.append(normal_kl(mu_q, logvar_q, mu_p, logvar_p))
            else:
                out.append(normal_log_prob(z, mu_q, logvar_q) - normal_log_prob(z, mu_p, logvar_p))
        return out

    def elbo_terms(self, x: Tensor, *, generator: torch.Generator | None = None,
                   estimator: Literal["analytic", "sample"] | None = None) -> tuple[Tensor, list[Tensor]]:
        """From one top-down sample: log p(x | z_1) ``(B,)`` and each layer's KL term per unit
        (``[(B, d_1), ..., (B, d_L)]``, by ``estimator``, default the config's); their difference summed is the ELBO."""
        td = self.top_down(x, generator=generator)
        rec = self.likelihood.log_prob(self.decoder_params(td.z[0]), x)  # (B,)
        return rec, self.layer_kl(td, estimator or self.config.kl_estimator)

    # --- training ---------------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        if c.batch_norm and len(batch.x) < 2:  # a batch norm of one example divides by its zero variance
            raise DgmError(f"model {self.name!r} batch-normalises its blocks, which needs at least 2 examples per "
                           f"training batch, got {len(batch.x)}: use more data or --set model.batch_norm=false")
        rec, kls = self.elbo_terms(batch.x, generator=progress.generator)
        kl = torch.cat(kls, -1)  # (B, sum d_i)
        penalty, beta = weighted_kl(kl, beta=1.0, free_bits=c.free_bits, warmup_steps=c.kl_warmup_steps,
                                    step=progress.step)
        per_layer = {f"kl{i + 1}": t.sum(-1).mean() for i, t in enumerate(kls)}
        return Loss(-rec.mean() + penalty,
                    {"elbo": (rec - kl.sum(-1)).mean(), "reconstruction": rec.mean(), "kl": kl.sum(-1).mean(),
                     **per_layer, "beta": torch.tensor(beta)})

    # --- likelihood bounds ------------------------------------------------------------------------
    def elbo(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One-sample ELBO (the training estimator, eval mode), nats, ``(B,)``."""
        with self.evaluating():
            rec, kls = self.elbo_terms(x, generator=generator)
        return rec - torch.cat(kls, -1).sum(-1)

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log w = log p(x | z_1) + sum_i [log p(z_i | z_{i+1}) - log q(z_i | z_{i+1}, x)] at k full
        top-down samples, ``(k, B)``."""
        B = x.shape[0]
        td = self.top_down(x, k, generator=generator)
        log_px = self.likelihood.log_prob(self.decoder_params(td.z[0]), repeat_rows(x, k))  # (k B,)
        log_pz_over_qz = sum((normal_log_prob(z, *p) - normal_log_prob(z, *q)).sum(-1)
                             for z, q, p in zip(td.z, td.q, td.p))  # (k B,)
        return (log_px + log_pz_over_qz).view(k, B)

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500,
                   generator: torch.Generator | None = None) -> Tensor:
        """L_k = log 1/k sum_j w_j (Burda et al. 2016, eq. 8), nats, ``(B,)``; the k samples are drawn
        ``chunk`` at a time and combined with logsumexp (as :meth:`VAE.iwae_bound`)."""
        with self.evaluating():
            parts = [self.log_weights(x, min(chunk, k - i), generator=generator) for i in range(0, k, chunk)]
        return torch.cat(parts).logsumexp(0) - math.log(k)

    def kl_per_dim(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Each latent unit's KL term, layers concatenated bottom first, ``(B, sum d_i)`` (the order of
        :meth:`encode`): always the analytic Gaussian KL given one sample of the layers above, so every
        unit's value is >= 0 whichever ``kl_estimator`` trains (posterior-collapse diagnostics)."""
        with self.evaluating():
            return torch.cat(self.elbo_terms(x, generator=generator, estimator="analytic")[1], -1)

    @capability
    def kl_per_layer(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The KL term of each stochastic layer, ``(B, L)`` bottom first (column 0 is z_1), nats, by
        the training ELBO's estimator (:attr:`elbo_description`) from one top-down sample:
        ``elbo(x) = reconstruction - kl_per_layer(x).sum(-1)`` for the same ``generator`` state."""
        with self.evaluating():
            return torch.stack([t.sum(-1) for t in self.elbo_terms(x, generator=generator)[1]], -1)

    # --- generation and codes ---------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Every layer's q mean, concatenated bottom first, ``(B, sum d_i)``: the top-down pass with
        each z_{i+1} set to its mean (so mu_{q,i} is the mean of q(z_i | z_{i+1} = mu_{q,i+1}, x))."""
        with self.evaluating():
            return torch.cat(self.top_down(x, mean=True).z, -1)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder mean E[x | z_1] for codes ``z`` laid out as :meth:`encode` gives them ``(B, sum d_i)``
        (only the z_1 part is read: p(x | z) depends on z_1 alone)."""
        total = sum(self.config.latent_dims)
        if z.shape[-1] != total:
            raise DgmError(f"decode takes the codes of every layer, (B, {total}) as encode gives them; "
                           f"got {tuple(z.shape)}")
        with self.evaluating():
            return self.likelihood.mean(self.decoder_params(z[:, :self.config.latent_dims[0]]))

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling z_L ~ N(0, I), z_i ~ p(z_i | z_{i+1}), x from p(x | z_1) (eqs. 1-3)."""
        if condition is not None:
            raise DgmError("the ladder VAE is unconditional: drop the condition")
        like = torch.empty(0, device=self.device)
        with self.evaluating():
            z = randn((n, self.config.latent_dims[-1]), like=like, generator=generator)
            for i in reversed(range(self.num_layers - 1)):
                mu_p, logvar_p = self.prior(i, z)
                z = mu_p + randn(mu_p.shape, like=mu_p, generator=generator) * (0.5 * logvar_p).exp()
            return emit(self.likelihood, self.decoder_params(z), mean=self.config.sample_mean, generator=generator)
