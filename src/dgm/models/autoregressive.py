"""Autoregressive models of binarized images: NADE and MADE.

Both factorise the distribution of a binary vector x in {0, 1}^D (an image flattened in raster
order) along an ordering o of its dimensions, so log p(x) is exact and costs one network pass::

    p(x) = prod_d p(x_{o_d} | x_{o_<d}),   p(x_{o_d} = 1 | x_{o_<d}) = sigmoid(l_{o_d}(x_{o_<d}))

and training minimises the mean negative log-likelihood, -log p(x) = sum_d BCE(l_d, x_d), in nats.

NADE: Larochelle & Murray 2011, "The Neural Autoregressive Distribution Estimator", AISTATS
(PMLR 15:29-37; no arXiv version; the longer account is Uria, Côté, Gregor, Murray & Larochelle
2016, "Neural Autoregressive Distribution Estimation", arXiv:1605.02226). One hidden layer whose
weights are shared between the D conditionals (Larochelle & Murray 2011, section 3)::

    h_d = sigmoid(c + W_{:, <d} x_{<d})           (H,)   W: (H, D), c: (H,)
    l_d = b_d + V_{d, :} h_d                      ()     V: (D, H), b: (D,)

The pre-activations a_d = c + W_{:, <d} x_{<d} obey a_{d+1} = a_d + W_{:, d} x_d, so all D
conditionals cost O(HD) (a cumulative sum in training; one update per pixel when sampling).

MADE: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution
Estimation", arXiv:1502.03509. An MLP whose weight matrices are multiplied by binary masks so that
output d sees only the inputs before d in the ordering (section 4). Each unit k of hidden layer l
gets a degree m^l(k) drawn uniformly from [min_k' m^{l-1}(k'), D - 1] (the inputs' degrees are their
positions 1..D in the ordering), and (section 4.2)::

    M^{W^l}_{k', k} = 1[m^l(k') >= m^{l-1}(k)]    (hidden layers)
    M^{V}_{d, k}    = 1[d > m^L(k)]               (output layer: strictly later)

Order- and connectivity-agnostic training (section 5): with ``order_agnostic`` a fresh ordering and
fresh degrees are drawn at every step; otherwise training cycles through ``num_masks`` fixed masks.
At test time the model is the ensemble of ``num_masks`` fixed masks,
p(x) = 1/M sum_m p_m(x), i.e. log p(x) = logsumexp_m log p_m(x) - log M, sampled exactly by
drawing a mask m uniformly, then x ~ p_m ancestrally (D passes).

In this file orderings and degrees are 0-based: position p in 0..D-1, hidden degrees in
[min, D - 2], output at position p sees hidden units with m < p.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import BINARY_REPRESENTATIONS, Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, rand, randint, register
from dgm.models.refusals import refuse_variable_length
from dgm.nn.made import MaskedLinear
from dgm.settings import NonNegativeInt, PositiveInt

#: why NADE and MADE refuse token sequences and point sets
PADDING_REASON = "it models every position of a fixed-size binary vector, so it would model the padding as data"


class BinaryAutoregressive(GenerativeModel):
    """What NADE and MADE share: binarized data, the exact log-likelihood as a sum of Bernoulli
    conditionals, the mean NLL as the loss. A subclass gives :meth:`log_prob` and :meth:`sample`."""

    @classmethod
    def default_representation(cls, config: object, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        if spec.levels is None:
            raise DgmError(f"model {cls.name!r} models binarized images, but {spec.name!r} is continuous: "
                           f"use data with discrete levels (e.g. --data digits or mnist)")
        return "binary-dynamic"

    def __init__(self, config: object, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        if spec.representation not in BINARY_REPRESENTATIONS:
            raise DgmError(f"model {self.name!r} needs binarized data, got representation "
                           f"{spec.representation!r}: use --set data.representation=binary-dynamic")
        self.dim = spec.dim  # D

    @staticmethod
    def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
        """sum_d log p(x_d | x_<d) in nats for logits ``(..., D)`` and x ``(B, D)``: ``(...)``."""
        logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype).expand_as(logits),
                                                   reduction="none").sum(-1)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        nll = -self.train_log_prob(batch.x.flatten(1), progress).mean()
        return Loss(nll, {"nll": nll.detach()})

    def train_log_prob(self, x: Tensor, progress: Progress) -> Tensor:
        """log p(x) of the training objective, ``(B,)``, for x flattened ``(B, D)``."""
        return self.log_prob(x)

    @staticmethod
    def _unconditional(condition: Tensor | None) -> None:
        if condition is not None:
            raise DgmError("NADE and MADE are unconditional: drop the condition")


@dataclass
class NADEConfig:
    """Settings of :class:`NADE` (``--set model.KEY=VALUE``)."""

    hidden: PositiveInt = 500  # H, hidden units shared by all D conditionals (the paper's 500)


@register
class NADE(BinaryAutoregressive):
    """The neural autoregressive distribution estimator over binarized images, raster order
    (Larochelle & Murray 2011).

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> nade = dgm.create("nade", data.spec, hidden=64)
        >>> nade.log_prob(data.tensors(8).x)  # exact, nats, (8,)
    """

    name = "nade"
    Config = NADEConfig
    description = "NADE: autoregressive binary-image model with weights shared across conditionals (exact NLL)"

    def __init__(self, config: NADEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        D, H = self.dim, config.hidden
        self.encoder = nn.Linear(D, H)  # W (H, D), c (H,)
        self.decoder = nn.Linear(H, D)  # V (D, H), b (D,)

    def logits(self, x: Tensor) -> Tensor:
        """l_d for every d given x_<d (teacher forcing), ``(B, D)`` for x ``(B, D)``."""
        W, c = self.encoder.weight, self.encoder.bias
        terms = x.to(W.dtype).unsqueeze(-1) * W.T  # (B, D, H): x_j W_{:, j}
        a = c + terms.cumsum(1) - terms  # (B, D, H): a_d = c + sum_{j<d} x_j W_{:, j}
        h = torch.sigmoid(a)
        return (h * self.decoder.weight).sum(-1) + self.decoder.bias  # (B, D)

    def log_prob(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return self.bernoulli_log_prob(self.logits(x), x)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        self._unconditional(condition)
        W, V, b = self.encoder.weight, self.decoder.weight, self.decoder.bias
        x = torch.zeros(n, self.dim, device=self.device, dtype=W.dtype)
        a = self.encoder(x)  # (n, H): a_1 = c, nothing observed yet
        for d in range(self.dim):  # O(HD): one update of a per pixel
            p = torch.sigmoid(torch.sigmoid(a) @ V[d] + b[d])  # (n,)
            x[:, d] = (rand(p.shape, like=p, generator=generator) < p).to(x.dtype)
            a = a + x[:, d, None] * W[:, d]
        return x.view(n, *self.spec.shape)


@dataclass
class MADEConfig:
    """Settings of :class:`MADE` (``--set model.KEY=VALUE``)."""

    hidden: tuple[PositiveInt, ...] = (500,)  # widths of the masked hidden layers (the paper's 1 x 500)
    num_masks: PositiveInt = 1  # M: masks of the test-time ensemble (and cycled in training unless order_agnostic)
    order_agnostic: bool = False  # train on a fresh random ordering and connectivity every step
    mask_seed: NonNegativeInt = 0  # seed of the M fixed masks (mask 0 keeps the raster order)


@register
class MADE(BinaryAutoregressive):
    """The masked autoencoder for distribution estimation over binarized images, with order- and
    connectivity-agnostic training and a test-time ensemble of masks (Germain et al. 2015).

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> made = dgm.create("made", data.spec, hidden=(128,), num_masks=8)
        >>> made.log_prob(data.tensors(8).x)  # log of the mean probability over the 8 masks
    """

    name = "made"
    Config = MADEConfig
    description = "MADE: masked-MLP autoregressive binary-image model (order-agnostic training, mask ensembles; exact NLL)"

    def __init__(self, config: MADEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        sizes = [self.dim, *config.hidden, self.dim]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # the fixed masks, kept in the weights file so a loaded model evaluates the masks it trained on
        g = torch.Generator().manual_seed(config.mask_seed)
        drawn = [self.draw_connectivity(g, natural=(m == 0 or not config.order_agnostic))
                 for m in range(config.num_masks)]
        self.register_buffer("orders", torch.stack([order for order, _ in drawn]))  # (M, D)
        for l in range(len(config.hidden)):
            self.register_buffer(f"degrees_{l}", torch.stack([degrees[l] for _, degrees in drawn]))  # (M, H_l)

    # --- connectivity -----------------------------------------------------------------------------
    def draw_connectivity(self, generator: torch.Generator | None, *, natural: bool) -> tuple[Tensor, list[Tensor]]:
        """An ordering ``(D,)`` (raster when ``natural``) and hidden degrees ``[(H_l,)]`` (section 4.2),
        drawn from ``generator`` on its device."""
        D = self.dim
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.arange(D, device=device) if natural else torch.randperm(D, generator=generator, device=device)
        ref = order.float()  # for the helpers' device
        degrees, low = [], torch.zeros((), dtype=torch.long, device=device)
        for width in self.config.hidden:
            # m^l(k) ~ U{low, ..., D - 2}, drawn without reading low on the host (no sync per step);
            # with D = 1 every degree is 0 and no output sees a hidden unit
            u = rand((width,), like=ref, generator=generator)
            m = low + (u * (D - 1 - low)).floor().long()
            degrees.append(m)
            low = m.min()
        return order, degrees

    def order(self, m: int = 0) -> Tensor:
        """The ordering of fixed mask ``m``: ``order[p]`` is the dimension at position p, ``(D,)``."""
        return self.orders[m]

    def fixed_connectivity(self, m: int) -> tuple[Tensor, list[Tensor]]:
        return self.orders[m], [getattr(self, f"degrees_{l}")[m] for l in range(len(self.config.hidden))]

    def masks(self, order: Tensor, degrees: list[Tensor]) -> list[Tensor]:
        """The mask of every layer, ``(out, in)`` each, for an ordering and hidden degrees."""
        position = torch.argsort(order.to(self.device))  # (D,): position[d] = where d comes in the order
        masks, previous = [], position
        for m in degrees:
            m = m.to(self.device)
            masks.append(m[:, None] >= previous[None, :])  # hidden unit k' sees units of degree <= m(k')
            previous = m
        masks.append(position[:, None] > previous[None, :])  # output d sees only degrees before it
        return masks

    def logits(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        """l_d for every d, ``(B, D)``, for x ``(B, D)`` and one mask per layer."""
        h = x.to(self.layers[0].weight.dtype)
        for i, (layer, mask) in enumerate(zip(self.layers, masks)):
            h = layer(h, mask)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h

    # --- likelihood and training ------------------------------------------------------------------
    def log_prob_mask(self, x: Tensor, m: int) -> Tensor:
        """log p_m(x) under fixed mask ``m`` alone, nats, ``(B,)``."""
        x = x.flatten(1)
        return self.bernoulli_log_prob(self.logits(x, self.masks(*self.fixed_connectivity(m))), x)

    def log_prob(self, x: Tensor) -> Tensor:
        """log (1/M sum_m p_m(x)), the ensemble over the M fixed masks, nats, ``(B,)``."""
        M = self.config.num_masks
        per_mask = torch.stack([self.log_prob_mask(x, m) for m in range(M)])  # (M, B)
        return per_mask.logsumexp(0) - math.log(M)

    def train_log_prob(self, x: Tensor, progress: Progress) -> Tensor:
        if self.config.order_agnostic:  # a new ordering and connectivity every step (section 5)
            connectivity = self.draw_connectivity(progress.generator, natural=False)
        else:  # connectivity-agnostic over the fixed masks, one per step in turn
            connectivity = self.fixed_connectivity(progress.step % self.config.num_masks)
        return self.bernoulli_log_prob(self.logits(x, self.masks(*connectivity)), x)

    # --- generation -------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of the ensemble: a mask m ~ U{1..M} per sample, then x ~ p_m pixel by pixel
        in m's order (D network passes per mask used)."""
        self._unconditional(condition)
        M, D = self.config.num_masks, self.dim
        x = torch.zeros(n, D, device=self.device, dtype=self.layers[0].weight.dtype)
        which = randint(M, (n,), like=x, generator=generator) if M > 1 else torch.zeros(n, dtype=torch.long,
                                                                                         device=self.device)
        for m in range(M):
            rows = (which == m).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            order, degrees = self.fixed_connectivity(m)
            masks = self.masks(order, degrees)
            xm = x[rows]
            for d in order.tolist():
                p = torch.sigmoid(self.logits(xm, masks)[:, d])
                xm[:, d] = (rand(p.shape, like=p, generator=generator) < p).to(xm.dtype)
            x[rows] = xm
        return x.view(n, *self.spec.shape)
