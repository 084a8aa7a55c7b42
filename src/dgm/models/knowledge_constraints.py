"""Deep generative models with learnable knowledge constraints: posterior regularisation as RL.

Hu, Yang, Salakhutdinov, Qin, Liang, Dong & Xing 2018, "Deep Generative Models with Learnable
Knowledge Constraints", NeurIPS, arXiv:1806.09764.

A generator ``q_theta(x)`` (the paper's p_theta) is pulled towards the knowledge a constraint
``f_phi(x)`` (higher: more acceptable) expresses. Posterior regularisation (section 3.1) adds to the
generator's own loss the objective ``KL(p || q_theta) - alpha E_p[f_phi]``, whose minimiser over p is
the *target* (paper eq. 4)::

    p(x) = q_theta(x) exp(alpha f_phi(x)) / Z,     Z = E_{q_theta}[exp(alpha f_phi(x))]          (1)

Read as entropy-regularised RL, f_phi is the reward and p the optimal policy; with f_phi learnable,
learning it from data is maximum-entropy inverse RL (section 3.2): the constraint is fitted by maximum
likelihood of p on examples x ~ d that satisfy the knowledge (paper eq. 9)::

    phi:   max  E_d[log p(x)] = alpha E_d[f_phi(x)] - log E_{q_theta}[exp(alpha f_phi(x))] + const   (2)
           grad = alpha (E_d[grad f_phi] - E_p[grad f_phi])

and the generator moves towards p with p held fixed (the M-step; paper eq. 10, explicit models)::

    theta: min  lambda KL(p || q_theta) = -lambda E_p[log q_theta(x)] + const                     (3)

Both expectations under p are estimated by self-normalised importance sampling with q_theta itself as
the proposal: for x_1..x_n ~ q_theta the density ratio p/q is proportional to exp(alpha f), so::

    w_i = exp(alpha f_phi(x_i)) / sum_j exp(alpha f_phi(x_j)),   E_p[g] ~ sum_i w_i g(x_i)        (4)

needing no density of q_theta at all; (2) becomes ``alpha mean_d f - logsumexp_i(alpha f(x_i)) + log n``
(its gradient is exactly (2) with E_p replaced by (4)), and (3) ``-sum_i w_i log q_theta(x_i)``, the
weights held constant. Algorithm 1 alternates the two: one ``constraint`` phase, one ``generator``
phase whose loss is the base model's own loss on data plus lambda times (3).

The paper's other case, implicit generators (GANs) that have no ``log q_theta``, minimises the reverse
KL ``KL(q_theta || p) = -alpha E_{q_theta}[f_phi] + KL(q_theta || q_theta') + const`` (q_theta' the
current generator, whose KL term has zero gradient there) by the pathwise gradient of f_phi through
the samples; the families here are explicit, so (3) is the update used, with ``log q_theta`` the
model's exact log-likelihood (a language model) or its ELBO (a VAE: maximising the p-weighted ELBO
is fitting the VAE to a p-weighted sample, as its usual loss fits it to the data).

Constraints (``model.constraint``): ``learned`` (a small network f_phi = tanh(g_phi(x)), bounded so
that (2), a Donsker-Varadhan bound, cannot diverge on a handful of examples; fitted by (2) on
``model.examples`` training examples that satisfy the rule; (2) is unchanged by f -> f + const, so
a small penalty pins the constant), ``fixed`` (the hand-written rule, f = +1
where it holds and -1 where not: the same code path with no constraint parameters) and ``none`` (the
base model). The rule of each family also picks the examples and scores samples in the benchmark.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, Dataset
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, register
from dgm.models.language import LSTMLanguageConfig, LSTMLanguageModel, real_tokens
from dgm.models.vae import VAE, VAEConfig
from dgm.nn import MLP
from dgm.settings import NonNegativeFloat, PositiveFloat, PositiveInt

CONSTRAINT, GENERATOR = "constraint", "generator"


# --- the estimators (1)-(4), on any samples --------------------------------------------------------------
def importance_weights(alpha_f: Tensor, log_base: Tensor | None = None) -> Tensor:
    """Self-normalised weights (4) of the target p over samples ``(n,)`` with ``alpha_f = alpha f(x_i)``:
    softmax over the samples. ``log_base``: the log of each sample's own proposal mass where the
    samples are not draws from q_theta (an enumeration of every outcome: ``log q_theta(x_i)``), making
    the weights the exact p(x_i) of (1)."""
    return torch.softmax(alpha_f if log_base is None else alpha_f + log_base, 0)


def target_log_probs(log_q: Tensor, f: Tensor, alpha: float) -> Tensor:
    """``log p(x)`` of (1) over all outcomes of a discrete q_theta enumerated in ``log_q (K,)``, ``f (K,)``."""
    return torch.log_softmax(log_q + alpha * f, 0)


def constraint_objective(f_data: Tensor, f_samples: Tensor, alpha: float, log_base: Tensor | None = None) -> Tensor:
    """(2): ``alpha mean f(examples) - log Z^``, with ``Z^`` the importance estimate of Z over the
    samples ``f_samples (n,)`` (the mean of exp(alpha f) over draws of q_theta; with ``log_base``, the
    sum of q_theta(x_i) exp(alpha f_i) over an enumeration). Its gradient in phi is
    ``alpha (mean grad f(examples) - sum_i w_i grad f(x_i))`` with the weights (4)."""
    log_terms = alpha * f_samples + (log_base if log_base is not None else -math.log(len(f_samples)))
    return alpha * f_data.mean() - torch.logsumexp(log_terms, 0)


def generator_objective(log_q: Tensor, weights: Tensor) -> Tensor:
    """(3) up to its constant: ``E_p[log q_theta(x)] ~ sum_i w_i log q_theta(x_i)`` with the weights
    held constant (p is fixed while theta moves: the M-step)."""
    return (weights.detach() * log_q).sum()


# --- the shared process: a mixin in front of an explicit base model -------------------------------------
@dataclass
class ConstraintConfig:
    """Settings of the knowledge constraint, shared by every constrained family."""

    constraint: Literal["none", "fixed", "learned"] = "learned"  # f_phi learned from examples, the hand rule, or off
    alpha: PositiveFloat = 2.0  # alpha of (1): how strongly the target p tilts q_theta towards high f
    pr_weight: NonNegativeFloat = 1.0  # lambda of (3): weight of KL(p || q_theta) beside the base loss
    proposals: PositiveInt = 64  # samples x ~ q_theta per step for the importance weights (4)
    examples: PositiveInt = 64  # training examples satisfying the rule that the learned f_phi sees
    constraint_hidden: PositiveInt = 64  # width of the learned constraint network
    constraint_lr: PositiveFloat | None = 3e-3  # learning rate of phi (a small network, few examples); None: the trainer's


class KnowledgeConstrained(GenerativeModel):
    """Algorithm 1 of Hu et al. 2018 over an explicit base model, as a mixin: ``class M(KnowledgeConstrained,
    Base)``. The delta names the rule (:meth:`rule`), builds the constraint network
    (:meth:`constraint_network`), draws proposals (:meth:`proposals`) and scores them
    (:meth:`proposal_log_q`); everything else is here."""

    def __init__(self, config: ConstraintConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        c = self.config
        self.constraint = self.constraint_network() if c.constraint == "learned" else None
        # the examples the learned constraint is fitted to (prepare picks them), saved with the weights
        dtype = torch.long if spec.kind == "tokens" else torch.float32
        self.register_buffer("constraint_examples", torch.zeros(c.examples if self.constraint else 0, *spec.shape,
                                                                dtype=dtype))

    # -- what a delta provides ------------------------------------------------------------------------
    def rule(self, x: Tensor) -> Tensor:
        """The knowledge as a hand-written rule: ``(B,)`` bool, true where ``x`` satisfies it."""
        raise NotImplementedError

    def constraint_network(self) -> nn.Module:
        """g_phi: data ``(B, *shape)`` to ``(B,)``; the learned constraint is tanh(g_phi)."""
        raise NotImplementedError

    def proposals(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``n`` draws x ~ q_theta in the data representation, without a graph, and what the constraint
        and the rule read of each (``x`` itself, or a view of it such as a VAE's decoder mean)."""
        raise NotImplementedError

    def example_data(self, data: Dataset) -> Dataset:
        """The training split as the constraint reads it (the examples are picked from it)."""
        return data

    def proposal_log_q(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """``log q_theta(x)`` (or a bound on it) of proposals ``(n,)``, in the units of the base loss."""
        raise NotImplementedError

    # -- the constraint f --------------------------------------------------------------------------------
    def constraint_value(self, x: Tensor) -> Tensor:
        """f(x) ``(B,)`` in [-1, 1]: tanh(g_phi(x)) (learned) or +1 / -1 by the rule (fixed)."""
        if self.constraint is not None:
            return torch.tanh(self.constraint(x))
        return self.rule(x).float() * 2 - 1

    def prepare(self, data: Dataset) -> None:
        """Besides the base model's own preparation, pick the first ``model.examples`` training
        examples that satisfy the rule: the only knowledge the learned constraint gets."""
        super().prepare(data)
        if self.constraint is None:
            return
        chosen, need = [], self.config.examples
        for batch in self.example_data(data).batches(512, generator=torch.Generator(device="cpu").manual_seed(0)):
            chosen.append(batch.x[self.rule(batch.x)])
            need -= len(chosen[-1])
            if need <= 0:
                break
        if need > 0:
            raise DgmError(f"only {self.config.examples - need} training examples satisfy the constraint's rule: "
                           f"lower model.examples or choose another rule")
        self.constraint_examples.copy_(torch.cat(chosen)[:self.config.examples])

    # -- training: the phases of Algorithm 1 --------------------------------------------------------------
    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("constraint.")]

    def phases(self) -> list[Phase]:
        generator = Phase(GENERATOR, self.generator_parameters())
        if self.constraint is None:
            return [generator]
        return [Phase(CONSTRAINT, list(self.constraint.parameters()), lr=self.config.constraint_lr), generator]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        if phase == CONSTRAINT:  # (2): the learned f_phi, by maximum likelihood of p on the examples
            _, view = self.proposals(c.proposals, progress.generator)
            g_data, g_samples = self.constraint(self.constraint_examples), self.constraint(view)  # (m,), (n,)
            f_data, f_samples = torch.tanh(g_data), torch.tanh(g_samples)
            objective = constraint_objective(f_data, f_samples, c.alpha)
            weights = importance_weights(c.alpha * f_samples.detach())
            # (2) is unchanged by f -> f + const (Z absorbs it), so f_phi drifts along that direction
            # until tanh saturates and learning stops; pinning the midpoint of g between the examples
            # and the proposals at 0 fixes the constant (f > 0: like the examples, f < 0: like q_theta)
            gauge = (g_data.mean() + g_samples.mean()).pow(2) / 4
            return Loss(-objective + gauge, {"f_examples": f_data.mean().detach(), "f_target": (weights * f_samples).sum().detach(),
                                     "f_model": f_samples.mean().detach()})
        base = super().loss(batch, "model", progress)  # the base model's own loss on the data
        if c.constraint == "none" or c.pr_weight == 0:
            return base
        x, view = self.proposals(c.proposals, progress.generator)  # (n, *shape) ~ q_theta
        with torch.no_grad():
            f = self.constraint_value(view)  # (n,)
        weights = importance_weights(c.alpha * f)  # (4)
        kl = -generator_objective(self.proposal_log_q(x, progress.generator), weights)  # (3) + const
        metrics = {**base.metrics, "pr": kl.detach(), "satisfied": self.rule(view).float().mean(),
                   "ess": 1 / weights.pow(2).sum()}  # effective sample size of the weights, 1..n
        return Loss(base.loss + c.pr_weight * kl, metrics)


# --- images: a VAE with a constraint on where the shape lies ----------------------------------------------
def centroid(x: Tensor) -> Tensor:
    """The intensity-weighted centre ``(B, 2)`` (column, row) of images ``(B, C, H, W)``, in [0, 1]
    of the side (0.5 where an image is blank)."""
    mass = x.float().clamp_min(0).sum(1)  # (B, H, W)
    H, W = mass.shape[-2:]
    cols = (torch.arange(W, device=x.device) + 0.5) / W
    rows = (torch.arange(H, device=x.device) + 0.5) / H
    total = mass.sum((1, 2))
    cx = (mass.sum(1) * cols).sum(1) / total.clamp_min(1e-8)
    cy = (mass.sum(2) * rows).sum(1) / total.clamp_min(1e-8)
    return torch.where(total[:, None] > 0, torch.stack([cx, cy], 1), 0.5)


class Centre(nn.Module):
    """The fixed part of the learned image constraint: images ``(B, C, H, W)`` to their centroid
    ``(B, 2)`` (:func:`centroid`), shifted to be centred on 0."""

    def forward(self, x: Tensor) -> Tensor:
        return centroid(x) - 0.5


@dataclass
class ConstrainedVAEConfig(ConstraintConfig, VAEConfig):
    """Settings of :class:`ConstrainedVAE` (``--set model.KEY=VALUE``)."""

    rule: Literal["left", "top"] = "left"  # the knowledge: the shape's centre in the left / top half


@register
class ConstrainedVAE(KnowledgeConstrained, VAE):
    """A VAE pulled towards images whose shape lies in one half (sprites' x or y factor), by a
    constraint learned from a few examples or written by hand (Hu et al. 2018).

    Example:
        >>> data = dgm.data.load("sprites")
        >>> model = dgm.create("constrained-vae", data.spec, rule="left", constraint="learned", examples=64)
    """

    name = "constrained-vae"
    Config = ConstrainedVAEConfig
    description = "VAE with a learnable knowledge constraint (posterior regularisation; Hu et al. 2018): shape position"

    def rule(self, x: Tensor) -> Tensor:
        return centroid(x)[:, 0 if self.config.rule == "left" else 1] < 0.5

    def constraint_network(self) -> nn.Module:
        # as the paper's learned constraints sit on a fixed structure (a human parser, section 5.1),
        # f_phi is a learned function of where the shape lies: which region, learned from the examples.
        # A network on the pixels, fitted by (2) against a blurry young VAE, learns "sharp vs blurry"
        # (the data's other difference from q_theta) long before the knowledge
        return nn.Sequential(Centre(), MLP(2, (self.config.constraint_hidden,), 1), nn.Flatten(0))

    def proposals(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        # x ~ p(x|z), z ~ N(0, I): a draw, so the ELBO below is of data; the constraint reads the
        # decoder mean E[x|z] instead, against clean examples: read on draws and binarized examples, a
        # learned f_phi tells the draws' pixel noise from the data long before it learns the knowledge
        with torch.no_grad():
            z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
            params = self.decoder_params(z)
            return self.likelihood.sample(params, generator=generator), self.likelihood.mean(params)

    def example_data(self, data: Dataset) -> Dataset:
        # the clean images in [0, 1], the space of the decoder means, where the data has levels
        return data.with_representation("unit") if data.spec.levels is not None else data

    def proposal_log_q(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.log_weights(x, 1, generator=generator)[0]  # a one-sample ELBO of each proposal, (n,)


# --- text: a language model constrained to a template --------------------------------------------------
class SequenceScore(nn.Module):
    """g_phi of a byte sequence: embedding -> LSTM -> linear on the state after its last real byte
    among the first ``window`` (``None``: all); ``x (B, L)`` int64, 0 after the end, to ``(B,)``."""

    def __init__(self, vocab: int, hidden: int, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.embedding = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :self.window]  # (B, window)
        out, _ = self.lstm(self.embedding(x.long()))  # (B, L, hidden)
        last = real_tokens(x, None).sum(1).clamp(1, x.shape[1]) - 1  # (B,) position of the last real byte
        return self.head(out[torch.arange(len(x), device=x.device), last])[:, 0]


@dataclass
class ConstrainedLanguageConfig(ConstraintConfig, LSTMLanguageConfig):
    """Settings of :class:`ConstrainedLanguageModel` (``--set model.KEY=VALUE``)."""

    template: str = "^The "  # the knowledge: a regular expression a sentence should match (re.search)
    constraint_window: PositiveInt | None = 8  # bytes from the start the learned constraint reads (None: all)


@register
class ConstrainedLanguageModel(KnowledgeConstrained, LSTMLanguageModel):
    """An LSTM language model pulled towards sentences that match a template, by a constraint learned
    from a few matching sentences or the template itself (Hu et al. 2018, section 5.2's templated text).

    Example:
        >>> data = dgm.data.load("fortunes", size=64)
        >>> model = dgm.create("constrained-lm", data.spec, template="^The ", constraint="learned")
    """

    name = "constrained-lm"
    Config = ConstrainedLanguageConfig
    description = "LSTM language model with a learnable knowledge constraint (Hu et al. 2018): a text template"

    def __init__(self, config: ConstrainedLanguageConfig, spec: DataSpec) -> None:
        try:
            self.template = re.compile(config.template.encode("utf-8"))
        except re.error as e:
            raise DgmError(f"model.template {config.template!r} is not a regular expression ({e}): fix it") from None
        super().__init__(config, spec)

    def rule(self, x: Tensor) -> Tensor:
        n = real_tokens(x, None).sum(1).tolist()
        rows = x.cpu().tolist()
        return torch.tensor([self.template.search(bytes(r[:k])) is not None for r, k in zip(rows, n)],
                            device=x.device)

    def constraint_network(self) -> nn.Module:
        # as the image constraint reads where the shape lies, this one reads how a sentence begins (the
        # template's slot): on whole sentences, fitted by (2) against a young language model, it learns
        # "fluent vs not" (the data's other difference from q_theta) long before the template
        return SequenceScore(self.spec.vocab_size, self.config.constraint_hidden, self.config.constraint_window)

    def proposals(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        x = self.sample(n, generator=generator)  # ancestral, at temperature 1: q_theta itself
        return x, x

    def proposal_log_q(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        # log q_theta(x) per sequence over the mean scored tokens, so (3) has the units of the base
        # loss (nats per token); a constant factor per step, the direction of the gradient unchanged
        log_q = self.log_prob(x)  # (n,)
        units = self.scored_units(real_tokens(x, None).sum(1)).float().mean()
        return log_q / units
