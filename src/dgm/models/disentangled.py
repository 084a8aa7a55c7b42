"""VAEs for disentangled codes: the beta-TC-VAE and the identifiable double VAE (IDVAE).

(The beta-VAE of Higgins et al. 2017 is the ``vae`` family with ``model.beta``.)

**beta-TC-VAE**. Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in
Variational Autoencoders" (NeurIPS, arXiv:1802.04942). With the aggregate posterior
q(z) = 1/N sum_n q(z|n) over the N training examples n, the ELBO's KL term splits (their eq. 2)::

    E_p(n) KL(q(z|n) || p(z)) = I_q(z; n)                       index-code mutual information
                              + KL(q(z) || prod_j q(z_j))       total correlation (TC)
                              + sum_j KL(q(z_j) || p(z_j))      dimension-wise KL

and the beta-TC-VAE weighs them alpha, beta, gamma (their section 4, whose experiments
vary beta, the TC's weight, with alpha = gamma = 1). The VAE's networks, posterior, likelihood
and bounds are kept; only the training loss changes. log q(z) and log q(z_j) are estimated on the
minibatch by *minibatch-weighted sampling* (their section 4.1, appendix C.1): for z_i ~ q(z|n_i), i = 1..M,

    log q(z_i)   ~ logsumexp_k sum_j log q(z_ij | n_k) - log M
    log q(z_ij)  ~ logsumexp_k       log q(z_ij | n_k) - log M

(:func:`kl_decomposition`, a pure function of the ``(M, M, D)`` matrix log q(z_j(n_i) | n_k)).
Normalisation: the paper divides the sum by N M (``log(N M)``); here by M, the batch taken as the
whole dataset, so that when the batch *is* the dataset (each example once) the estimate is exactly
log q(z) = log 1/N sum_n q(z|n). The two differ by constants per term: the paper's MI is ours
+ log N, its TC ours + (D - 1) log N, its dimension-wise KL ours - D log N (their sum, and every
gradient, is the same); ``dataset_size=N`` gives the paper's values. Term by term, the three
per-example estimates add up to log q(z_i|n_i) - log p(z_i), the one-sample estimate of the VAE's KL,
whatever the normalisation: with alpha = beta = gamma = 1 the loss is the VAE's negative ELBO with a
Monte Carlo KL in place of the analytic one.

**IDVAE**. Mita, Filippone & Michiardi 2021, "An Identifiable Double VAE For Disentangled
Representations" (ICML, arXiv:2010.09360), building on the iVAE (Khemakhem, Kingma, Monti &
Hyvärinen 2020, arXiv:1907.04809): a factorised prior p(z|u) conditioned on an observed auxiliary
variable u makes the model identifiable. IDVAE learns that conditional prior as the encoder of a
second VAE, over u::

    prior VAE:  q_psi(z|u) = N(mu_psi(u), diag sigma_psi(u)^2),  p(u|z'),  p(z') = N(0, I)
    main VAE:   q_phi(z|x,u),  p_theta(x|z),  conditional prior p(z|u) = q_psi(z|u)

    L = E_q_phi[log p_theta(x|z)] - beta KL(q_phi(z|x,u) || q_psi(z|u))
        + E_q_psi[log p(u|z')] - gamma KL(q_psi(z|u) || N(0, I))

maximised jointly over theta, phi, psi (and the decoder of u); beta = gamma = 1 is the sum of the
two ELBOs (of log p(x|u) and of log p(u)). ``beta`` and ``gamma`` are placed as in a public
implementation (a function ``idvae_train``: ``rec + beta * kld`` and ``c_rec + gamma * c_kld``); that
implementation steps psi on the prior VAE's loss only (its optimiser's gradients are zeroed between
the two backward passes): ``detach_prior=True`` does the same. Not checked against the paper's own
equations (its text was not at hand): the joint sum above is the default.

u: the dataset's known factors (``Batch.factors``, indices scaled to [0, 1] per factor) with a
Gaussian p(u|z') of fixed standard deviation ``aux_std``, or the class label (one-hot in, a
categorical p(u|z') out), ``auxiliary="labels"``. The paper's main encoder reads x and u,
q_phi(z|x,u); the disentanglement metrics encode test images alone, so the default encoder reads
x only, q_phi(z|x) (``encoder_input="x"``, a departure from the paper); with ``encoder_input="x+u"``
(the paper's) the model has no ``encode``. The bound is on log p(x|u), not log p(x):
``conditional_elbo(x, u)``, not the protocol's ``elbo`` (as the conditional VAE).
Generation: u ~ p(u) of the prior VAE (z' ~ N(0, I), u ~ p(u|z')) or given (``condition``: factor
indices, or class labels), then z ~ q_psi(z|u), then x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, capability, randn, register
from dgm.models.conditional_vae import refuse_conv
from dgm.models.refusals import class_labels, refuse_partial_labels
from dgm.models.vae import VAE, VAEConfig, emit, mlp_activation
from dgm.nn import MLP, diagonal_gaussian, normal_kl, normal_log_prob
from dgm.nn.likelihoods import sample_categorical
from dgm.settings import NonNegativeFloat, PositiveFloat, PositiveInt


def refuse_vae_objective_options(model: str, config: VAEConfig) -> None:
    """Raise when ``config`` sets the VAE's objective options (IWAE, free bits, KL warm-up), which
    ``model``'s own weighting of its KL terms replaces."""
    if config.iwae_k != 1 or config.free_bits or config.kl_warmup_steps:
        raise DgmError(f"model {model!r} weighs its KL terms its own way and takes no iwae_k, free_bits or "
                       f"kl_warmup_steps: set model.iwae_k=1, model.free_bits=0, model.kl_warmup_steps=0")


# --- beta-TC-VAE ------------------------------------------------------------------------------------
class KLTerms(NamedTuple):
    """The three parts of the ELBO's KL (Chen et al. 2018, eq. 2), per example, each ``(B,)``, nats."""

    mutual_information: Tensor  # log q(z_i|n_i) - log q(z_i)
    total_correlation: Tensor  # log q(z_i) - sum_j log q(z_ij)
    dimension_wise_kl: Tensor  # sum_j log q(z_ij) - log p(z_ij)


def kl_decomposition(log_q_pairs: Tensor, log_prior: Tensor, *, dataset_size: int | None = None) -> KLTerms:
    """Minibatch-weighted sampling estimates of index-code MI, total correlation and dimension-wise
    KL (Chen et al. 2018, section 4.1, appendix C.1) for each of the batch's samples.

    Args:
        log_q_pairs: ``(..., M, M, D)``: ``[i, k, j] = log q(z_j(n_i) | n_k)``, the density in
            dimension j of the sample z(n_i) ~ q(z|n_i) under the posterior of example n_k (leading
            dimensions: independent batches).
        log_prior: ``(..., M, D)``: ``log p(z_j(n_i))``.
        dataset_size: ``None``: q(z) is the mixture over the batch (normalisation 1/M), exact when the
            batch is the whole dataset; ``N``: the paper's normalisation 1/(N M), whose MI, TC and
            dimension-wise KL are ours plus log N, (D - 1) log N and -D log N.

    Returns:
        :class:`KLTerms`, each ``(..., M)``; for every sample they sum to ``log q(z_i|n_i) - log p(z_i)``.
    """
    m = log_q_pairs.shape[-3]
    log_norm = math.log(m * (dataset_size or 1))
    log_q_given_own = log_q_pairs.diagonal(dim1=-3, dim2=-2).sum(-2)  # (..., D, M) -> (..., M): log q(z_i|n_i)
    log_q_z = log_q_pairs.sum(-1).logsumexp(-1) - log_norm  # (..., M): log q(z_i)
    log_q_zj = log_q_pairs.logsumexp(-2) - log_norm  # (..., M, D): log q(z_ij)
    return KLTerms(log_q_given_own - log_q_z, log_q_z - log_q_zj.sum(-1), (log_q_zj - log_prior).sum(-1))


@dataclass
class BetaTCVAEConfig(VAEConfig):
    """Settings of :class:`BetaTCVAE` (``--set model.KEY=VALUE``): the VAE's networks and likelihood,
    with the KL split into three weighted terms (one-sample objective: no iwae_k, free bits or warm-up)."""

    alpha: NonNegativeFloat = 1.0  # weight of the index-code mutual information I_q(z; n)
    beta: NonNegativeFloat = 6.0  # weight of the total correlation (> 1 penalises it; all three 1: the ELBO)
    gamma: NonNegativeFloat = 1.0  # weight of the dimension-wise KL sum_j KL(q(z_j) || p(z_j))


@register
class BetaTCVAE(VAE):
    """The beta-TC-VAE: a VAE whose KL is split into index-code MI, total correlation and
    dimension-wise KL, estimated on each minibatch, and weighted alpha, beta, gamma.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> model = dgm.create("beta-tc-vae", data.spec, latent_dim=8, beta=6.0)
        >>> model.loss(data.tensors(64), "model", Progress()).loss.backward()
    """

    name = "beta-tc-vae"
    Config = BetaTCVAEConfig
    description = "beta-TC-VAE: the VAE with its total correlation weighted (minibatch-weighted sampling)"

    def __init__(self, config: BetaTCVAEConfig, spec: DataSpec) -> None:
        refuse_vae_objective_options(self.name, config)
        super().__init__(config, spec)

    def kl_terms(self, mu: Tensor, logvar: Tensor, z: Tensor) -> KLTerms:
        """The three KL terms of the batch's samples ``z`` ``(B, D)`` of q(z|x) = N(mu, e^logvar),
        in float32 (a logsumexp over the batch in bf16 would lose the small terms)."""
        mu, logvar, z = mu.float(), logvar.float(), z.float()
        log_q_pairs = normal_log_prob(z[:, None, :], mu[None], logvar[None])  # (B, B, D): [i, k, j]
        return kl_decomposition(log_q_pairs, normal_log_prob(z))

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        mu, logvar = self.posterior(batch.x)
        z = self.reparameterize(mu, logvar, progress.generator)  # (B, D), the noise drawn as the VAE's
        rec = self.log_likelihood(batch.x, z)  # (B,)
        mi, tc, dwkl = (t.mean() for t in self.kl_terms(mu, logvar, z))
        kl = self.analytic_kl(mu, logvar).sum(-1)  # (B,), for the ELBO on the log
        return Loss(-rec.mean() + c.alpha * mi + c.beta * tc + c.gamma * dwkl,
                    {"elbo": (rec - kl).mean(), "reconstruction": rec.mean(), "kl": kl.mean(),
                     "mi": mi, "tc": tc, "dwkl": dwkl})


# --- IDVAE ------------------------------------------------------------------------------------------
@dataclass
class IDVAEConfig(VAEConfig):
    """Settings of :class:`IDVAE` (``--set model.KEY=VALUE``): the VAE's networks and likelihood for
    x (``beta`` weighs the KL to the conditional prior), and the prior VAE over u."""

    auxiliary: Literal["factors", "labels"] = "factors"  # u: the data's known factors, or the class label
    encoder_input: Literal["x", "x+u"] = "x"  # q(z|x) (codes of x alone, for metrics) or the paper's q(z|x,u) (MLP)
    prior_hidden: tuple[PositiveInt, ...] = (256, 256)  # MLP widths of q_psi(z|u); the decoder p(u|z') mirrors them
    gamma: NonNegativeFloat = 1.0  # weight of KL(q_psi(z|u) || N(0, I)) in the prior VAE's objective
    aux_std: PositiveFloat = 0.1  # factors: standard deviation of the Gaussian p(u|z') over factors scaled to [0, 1]
    detach_prior: bool = False  # True: the KL to q_psi(z|u) does not train q_psi (it learns from the prior VAE only)


@register
class IDVAE(VAE):
    """The identifiable double VAE: a VAE of x whose prior p(z|u) is the encoder q_psi(z|u) of a
    second VAE over the auxiliary variable u (known factors, or the class), trained jointly.

    Example:
        >>> data = dgm.data.load("sprites")
        >>> model = dgm.create("idvae", data.spec, latent_dim=10)
        >>> model.loss(data.tensors(64), "model", Progress()).loss.backward()
    """

    name = "idvae"
    Config = IDVAEConfig
    description = "identifiable double VAE: a conditional prior p(z|u) learned by a VAE of the known factors u"

    # the bounds are on log p(x|u) (conditional_elbo) and the KL per dimension needs u
    elbo = GenerativeModel.elbo
    iwae_bound = GenerativeModel.iwae_bound
    kl_per_dim = GenerativeModel.kl_per_dim

    def __init__(self, config: IDVAEConfig, spec: DataSpec) -> None:
        refuse_vae_objective_options(self.name, config)
        if config.auxiliary == "factors":
            sizes = spec.extras.get("factor_sizes")
            if not sizes:
                raise DgmError(f"model {self.name!r} with auxiliary=factors needs data made from known factors, and "
                               f"{spec.name!r} has none: use --data sprites, or --set model.auxiliary=labels")
            aux_dim = len(sizes)
        else:
            if not spec.num_classes:
                raise DgmError(f"model {self.name!r} with auxiliary=labels needs class labels, and {spec.name!r} "
                               f"has none: use a labelled dataset, or data with known factors (auxiliary=factors)")
            aux_dim = spec.num_classes
        if config.encoder_input == "x+u":
            refuse_conv(self.name + " with encoder_input=x+u", config.network)
        super().__init__(config, spec)  # the VAE's likelihood and networks for x
        d = config.latent_dim
        if config.encoder_input == "x+u":  # q_phi(z|x,u) on [flatten(x), u], as the CVAE's encoder
            self.encoder = MLP(spec.dim + aux_dim, config.hidden, 2 * d, activation=mlp_activation(config))
        self.prior_encoder = MLP(aux_dim, config.prior_hidden, 2 * d)  # q_psi(z|u): mean, log-variance
        self.prior_decoder = MLP(d, tuple(reversed(config.prior_hidden)), aux_dim)  # p(u|z'): mean or logits
        if config.auxiliary == "factors":  # index k of a factor of K values -> k / (K - 1) in [0, 1]
            self.register_buffer("factor_scale", 1.0 / (torch.tensor(sizes, dtype=torch.float32) - 1).clamp(min=1),
                                 persistent=False)

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.encoder_input == "x+u":
            why = "its encoder q(z|x,u) reads the auxiliary variable u beside x (encoder_input=x+u)"
            return {"encode": why, "reconstruct": why}
        return {}

    @property
    def num_classes(self) -> int | None:
        """The class is the condition of :meth:`sample` when it is the auxiliary variable."""
        return self.spec.num_classes if self.config.auxiliary == "labels" else None

    # --- the auxiliary variable u -----------------------------------------------------------------
    def auxiliary(self, batch: Batch) -> Tensor:
        """The raw u of ``batch``: factor indices ``(B, K)`` or class labels ``(B,)``."""
        if self.config.auxiliary == "labels":
            refuse_partial_labels(self.name, batch, "reads u = the class of each example, so it")
            return batch.y
        if batch.factors is None:
            raise DgmError(f"model {self.name!r} reads the known factors of each example, and this batch has none: "
                           f"use data made from known factors (sprites), or --set model.auxiliary=labels")
        return batch.factors

    def aux_features(self, u: Tensor) -> Tensor:
        """What the networks read of u: factors scaled to [0, 1] or the one-hot class, ``(B, K)``."""
        if self.config.auxiliary == "labels":
            return F.one_hot(u, self.spec.num_classes).float()
        return u.float() * self.factor_scale

    def aux_log_likelihood(self, u: Tensor, z_prior: Tensor) -> Tensor:
        """log p(u|z') in nats, ``(B,)``: Gaussian over the scaled factors, or categorical over the classes."""
        out = self.prior_decoder(z_prior).float()  # (B, K)
        if self.config.auxiliary == "labels":
            return out.log_softmax(-1).gather(1, u[:, None]).squeeze(1)
        return normal_log_prob(self.aux_features(u), out, 2 * math.log(self.config.aux_std)).sum(-1)

    # --- the two encoders -------------------------------------------------------------------------
    def conditional_prior(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q_psi(z|u), each ``(B, latent_dim)``, for u's ``features``
        (:meth:`aux_features`): the main VAE's prior p(z|u)."""
        return diagonal_gaussian(self.prior_encoder(features))

    def posterior_given(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q_phi(z|x) (``encoder_input="x"``) or q_phi(z|x,u) (``"x+u"``)."""
        if self.config.encoder_input == "x":
            return self.posterior(x)
        return self.posterior(torch.cat([x.flatten(1).float(), self.aux_features(u)], 1))

    # --- training ---------------------------------------------------------------------------------
    def terms(self, x: Tensor, u: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Each example's parts of the objective, ``(B,)`` each; noise drawn z ~ q_phi, then z' ~ q_psi."""
        mu, logvar = self.posterior_given(x, u)
        prior_mu, prior_logvar = self.conditional_prior(self.aux_features(u))
        z = self.reparameterize(mu, logvar, generator)  # (B, latent_dim)
        z_prior = self.reparameterize(prior_mu, prior_logvar, generator)  # z' ~ q_psi(z|u)
        aux_kl = self.analytic_kl(prior_mu, prior_logvar).sum(-1)  # KL(q_psi(z|u) || N(0, I))
        if self.config.detach_prior:  # the KL to the conditional prior trains phi only
            prior_mu, prior_logvar = prior_mu.detach(), prior_logvar.detach()
        return {"reconstruction": self.log_likelihood(x, z),
                "kl": normal_kl(mu, logvar, prior_mu, prior_logvar).sum(-1),  # KL(q_phi || q_psi(z|u))
                "aux_reconstruction": self.aux_log_likelihood(u, z_prior), "aux_kl": aux_kl}

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        t = {k: v.mean() for k, v in self.terms(batch.x, self.auxiliary(batch), progress.generator).items()}
        conditional_elbo = t["reconstruction"] - t["kl"]
        aux_elbo = t["aux_reconstruction"] - t["aux_kl"]
        loss = -(t["reconstruction"] - c.beta * t["kl"]) - (t["aux_reconstruction"] - c.gamma * t["aux_kl"])
        return Loss(loss, {**t, "conditional_elbo": conditional_elbo, "aux_elbo": aux_elbo})

    @capability
    def conditional_elbo(self, x: Tensor, u: Tensor) -> Tensor:
        """One-sample ELBO(x | u) <= log p(x | u) in nats, ``(B,)`` (analytic KL to q_psi(z|u));
        ``u``: factor indices ``(B, K)`` or class labels ``(B,)``, as the model's ``auxiliary``."""
        t = self.terms(x, u, None)
        return t["reconstruction"] - t["kl"]

    # --- generation -------------------------------------------------------------------------------
    def sample_auxiliary(self, n: int, generator: torch.Generator | None) -> Tensor:
        """u ~ p(u) of the prior VAE, as the networks read it ``(n, K)``: z' ~ N(0, I), u ~ p(u|z')
        (Gaussian scaled factors, or a one-hot class drawn from the categorical)."""
        like = torch.empty(0, device=self.device)
        out = self.prior_decoder(randn((n, self.config.latent_dim), like=like, generator=generator)).float()
        if self.config.auxiliary == "factors":
            return out + self.config.aux_std * randn(out.shape, like=out, generator=generator)
        return F.one_hot(sample_categorical(out, -1, generator)[:, 0], out.shape[-1]).float()

    def condition_features(self, condition: Tensor | int, n: int) -> Tensor:
        """The features ``(n, K)`` of a given u: class label(s), or factor indices ``(K,)`` / ``(n, K)``."""
        if self.config.auxiliary == "labels":
            return self.aux_features(class_labels(self.name, condition, n, self.spec.num_classes, self.device))
        sizes = self.spec.extras["factor_sizes"]
        u = torch.as_tensor(condition, device=self.device).long()
        if u.dim() <= 1 and u.numel() == len(sizes):  # one sample's factors, for all n
            u = u.reshape(1, -1).expand(n, -1)
        if u.shape != (n, len(sizes)):
            raise DgmError(f"model {self.name!r} is conditioned on the factors {self.spec.extras.get('factors')}: give "
                           f"their {len(sizes)} indices, or an ({n}, {len(sizes)}) tensor of them, not shape "
                           f"{tuple(u.shape)} (a class label is the condition of auxiliary=labels)")
        if (u < 0).any() or (u >= torch.tensor(sizes, device=u.device)).any():
            raise DgmError(f"factor indices lie in 0..size-1 for the sizes {sizes} of the factors "
                           f"{self.spec.extras.get('factors')}: give indices in range")
        return self.aux_features(u)

    def sample(self, n: int, condition: Tensor | int | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples: u from ``condition`` (class labels or factor indices) or u ~ p(u) of the prior
        VAE, then z ~ q_psi(z|u), then x from p(x|z)."""
        features = self.sample_auxiliary(n, generator) if condition is None else self.condition_features(condition, n)
        z = self.reparameterize(*self.conditional_prior(features), generator)
        return emit(self.likelihood, self.decoder_params(z), mean=self.config.sample_mean, generator=generator)
