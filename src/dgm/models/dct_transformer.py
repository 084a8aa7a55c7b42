"""A transformer over sparse DCT sequences: images generated as their JPEG coefficients.

Nash, Menick, Dieleman & Battaglia 2021, "Generating Images with Sparse Representations",
arXiv:2103.03841. An image x is coded as the sequence ``s(x) = ((c_1, p_1, v_1), ..., (c_n, p_n, v_n))``
of its nonzero quantised DCT coefficients (channel = colour and zigzag frequency, position = 8x8
block, value), sorted by channel then position (section 2; :mod:`dgm.data.dct`). The model is
autoregressive over triples, and within a triple over its three parts, as the paper's decoders
predict channel, then position, then value (section 3)::

    p(s) = prod_{t=1}^{n} p(c_t | s_<t) p(p_t | c_t, s_<t) p(v_t | c_t, p_t, s_<t) * p(EOS | s_<=n)

One causal transformer reads ``[start (+ class), e(s_1), ..., e(s_{n-1})]`` with
``e(c, p, v) = E_c[c] + E_p[p] + E_v[v]``; from its state h_t three heads give the logits of
``c_t`` (plus an end-of-sequence class), of ``p_t`` from ``h_t + E_c[c_t]``, and of ``v_t`` from
``h_t + E_c[c_t] + E_p[p_t]``. (The paper's DCTransformer is an encoder over chunks of the sequence
with three decoders; here one decoder-only stack, as a compact member of the family.)

Impossible continuations are masked, so every sequence of positive probability is the canonical
code of some coefficient array: channels never decrease, positions increase within a channel, and no
value is 0. A sequence of ``max_length`` triples ends there (EOS is certain, no term), so the
probabilities of all sequences sum to 1 (checked by enumeration in ``tests/test_dct.py``).

Likelihoods. At the lossless setting (``quality=0``: steps 1/16, colour 1/32) the code loses nothing,
but several coefficient arrays decode to one image, so ``log p(s(x)) <= log p(x) = log sum_{s ->
x} p(s)``: :meth:`DCTTransformer.elbo` returns it as a lower bound. At a JPEG quality the model is a
distribution over quantised images, not over the 8-bit data, and gives no likelihood of x;
:meth:`DCTTransformer.sequence_nll` is the NLL of the code at any quality.

The lossless bound can be loose: about 16^64 lattice points of lossless coefficients decode to one
8-bit block (the pixels' rounding cell has volume 1, a lattice cell (1/16)^64, and the transform is
orthogonal), so a model that has not learnt the encoder's own choice among them loses up to
log2 16 = 4 bits/dim, more on data rescaled from fewer levels (17-level digits: spacing 16, up to 8
bits/dim). A small model trained briefly on the digits gave 12.3 bits/dim, worse than uniform (4.1).
The value vocabulary is large there too (32769 for grey): the value head dominates the cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.data.dct import DCTCode, Quality
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, capability, inference, rand, randint, register
from dgm.models.refusals import class_labels, refuse_all_but_discrete_images, refuse_partial_labels
from dgm.nn.transformer import CausalTransformer, init_weights
from dgm.settings import NonNegativeInt, PositiveInt, Range

#: why the DCT transformer refuses token sequences and point sets
PADDING_REASON = "it codes images as 8x8-block DCT coefficients"


@dataclass
class DCTTransformerConfig:
    """Settings of :class:`DCTTransformer` (``--set model.KEY=VALUE``)."""

    quality: Annotated[int, Range(0, 100)] = 75  # JPEG quality 1..100 of the code; 0: lossless (steps 1/16, colour 1/32), the only setting with a likelihood of x
    value_range: NonNegativeInt = 0  # values clamped to +-value_range; 0: the largest the quality allows (never clamps; 16384 grey lossless, 205 at 75)
    max_length: PositiveInt = 1024  # most triples per image (longer codes are refused in training); samples end here. 28x28 lossless needs 1024
    width: PositiveInt = 128  # transformer width (embedding size), a multiple of heads
    depth: PositiveInt = 4  # transformer blocks
    heads: PositiveInt = 4  # attention heads per block
    dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0  # transformer dropout (training only)
    conditional: bool = False  # class-conditional: a class embedding added to the start token


def full(logits: Tensor) -> Tensor:
    """Logits in float32 when the network ran in half precision (bf16 autocast); as they are otherwise."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def head(width: int, out: int) -> nn.Sequential:
    """A small MLP head: the chained heads add embeddings to the state, and a nonlinearity lets
    p(position | channel) depend on the channel beyond an additive shift of the logits."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


@register
class DCTTransformer(GenerativeModel):
    """An autoregressive transformer over the sparse DCT code of images (Nash et al. 2021).

    Example:
        >>> data = dgm.data.load("digits", representation="levels")
        >>> model = dgm.create("dct-transformer", data.spec, quality=0, width=64, depth=2, max_length=64)
        >>> model.elbo(data.tensors(8).x)          # log p(s(x)) <= log p(x), nats, (8,)
        >>> model.sample(4, generator=torch.Generator().manual_seed(0)).shape  # (4, 1, 8, 8) levels
    """

    name = "dct-transformer"
    Config = DCTTransformerConfig
    description = ("DCTransformer: autoregressive transformer over sparse JPEG-DCT triples (channel, position, "
                   "value); lossless setting gives a likelihood bound")

    @classmethod
    def default_representation(cls, config: DCTTransformerConfig, spec: DataSpec) -> str:
        refuse_all_but_discrete_images(cls.name, spec, "codes images of discrete levels (the JPEG DCT of 8-bit pixels)",
                                       PADDING_REASON)
        return "levels"

    def __init__(self, config: DCTTransformerConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        c = config
        self.default_representation(c, spec)
        if spec.representation != "levels":
            raise DgmError(f"model {self.name!r} reads integer levels, got representation "
                           f"{spec.representation!r}: use --set data.representation=levels (or drop it)")
        if c.conditional and not spec.num_classes:
            raise DgmError(f"model.conditional needs labelled data, and {spec.name!r} has no labels")
        if c.width % c.heads:
            raise DgmError(f"model.width ({c.width}) must be a multiple of model.heads ({c.heads})")
        self.code = DCTCode(spec.shape, quality=self.quality, value_range=c.value_range or None,
                            levels=spec.levels)
        K, P, V = self.code.num_channels, self.code.num_positions, self.code.num_values
        self.channel_embedding = nn.Embedding(K, c.width)  # E_c
        self.position_embedding = nn.Embedding(P, c.width)  # E_p
        self.value_embedding = nn.Embedding(V, c.width)  # E_v, value v at index v + max_abs_value
        self.start = nn.Parameter(torch.zeros(c.width))
        self.class_embedding = nn.Embedding(spec.num_classes, c.width) if c.conditional else None
        self.transformer = CausalTransformer(c.width, c.depth, c.heads, c.max_length, dropout=c.dropout)
        self.channel_head = head(c.width, K + 1)  # the last class is EOS
        self.position_head = head(c.width, P)
        self.value_head = head(c.width, V)
        for module in (self.channel_embedding, self.position_embedding, self.value_embedding, self.class_embedding,
                       self.channel_head, self.position_head, self.value_head):
            if module is not None:
                module.apply(init_weights)

    @property
    def quality(self) -> Quality:
        return "lossless" if self.config.quality == 0 else self.config.quality

    @property
    def eos(self) -> int:
        return self.code.num_channels

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    # --- the network's pieces ---------------------------------------------------------------------
    def embed(self, triples: Tensor) -> Tensor:
        """e(c, p, v) = E_c[c] + E_p[p] + E_v[v] for triples ``(B, L, 3)``: ``(B, L, width)``."""
        c, p, v = triples.unbind(-1)
        return (self.channel_embedding(c) + self.position_embedding(p)
                + self.value_embedding(v + self.code.max_abs_value))

    def start_token(self, y: Tensor | None, batch: int) -> Tensor:
        """The first input, ``(B, 1, width)``: the start vector, plus the class embedding."""
        start = self.start.expand(batch, 1, -1)
        return start if self.class_embedding is None else start + self.class_embedding(y)[:, None]

    # Each head masks the continuations no canonical code has: channels never decrease, positions
    # increase within a channel, no value is 0. ``first`` (B, L): the first step (nothing before it);
    # ``free`` (B, L): steps whose position and value are not scored (EOS, padding), left unmasked so
    # that no row is all -inf.
    def channel_logits(self, state: Tensor, previous: Tensor, first: Tensor) -> Tensor:
        """Logits of c_t and EOS, ``(B, L, K + 1)``, from states ``(B, L, width)`` and the triples
        before each step ``(B, L, 3)``."""
        K, P = self.code.num_channels, self.code.num_positions
        c_prev, p_prev = previous[..., 0, None], previous[..., 1, None]  # (B, L, 1)
        channels = torch.arange(K, device=state.device)
        # the same channel again needs a later position to be left
        allowed = first[..., None] | (channels > c_prev) | ((channels == c_prev) & (p_prev < P - 1))
        allowed = F.pad(allowed, (0, 1), value=True)  # EOS is always possible
        return full(self.channel_head(state)).masked_fill(~allowed, float("-inf"))

    def position_logits(self, state: Tensor, channel: Tensor, previous: Tensor, first: Tensor,
                        free: Tensor) -> Tensor:
        """Logits of p_t given c_t ``(B, L)`` (EOS allowed, where ``free``), ``(B, L, P)``."""
        channel = channel.clamp(max=self.eos - 1)
        positions = torch.arange(self.code.num_positions, device=state.device)
        later = (channel[..., None] != previous[..., 0, None]) | (positions > previous[..., 1, None])
        allowed = (first | free)[..., None] | later
        # no position left: c_t itself was impossible (probability 0 already); no all -inf row (nan)
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        logits = full(self.position_head(state + self.channel_embedding(channel)))
        return logits.masked_fill(~allowed, float("-inf"))

    def value_logits(self, state: Tensor, channel: Tensor, position: Tensor, free: Tensor) -> Tensor:
        """Logits of v_t given c_t and p_t ``(B, L)``, ``(B, L, V)``: value v at index v + max_abs_value."""
        h = state + self.channel_embedding(channel.clamp(max=self.eos - 1)) + self.position_embedding(position)
        logits = full(self.value_head(h))
        zero = self.code.max_abs_value  # a zero coefficient is never coded
        logits[..., zero] = torch.where(free, logits[..., zero], float("-inf"))
        return logits

    # --- the likelihood of a code -----------------------------------------------------------------
    def step_log_probs(self, triples: Tensor, mask: Tensor, y: Tensor | None = None) -> Tensor:
        """The log-probability of each step, ``(B, T)`` with ``T = min(L + 1, max_length)``: of triple
        t (channel, position and value) for t < n, of EOS at t = n, 0 after; for padded triple
        sequences ``(B, L, 3)`` with mask ``(B, L)`` (real triples first), ``L <= max_length``, and
        ``y (B,)`` the classes of a conditional model."""
        B, L, _ = triples.shape
        T = min(L + 1, self.config.max_length)  # steps scored: every triple, and EOS unless at max_length
        n = mask.sum(1, keepdim=True)  # (B, 1)
        target = F.pad(triples, (0, 0, 0, T - L)) if T > L else triples[:, :T]  # (B, T, 3)
        inputs = torch.cat([self.start_token(y, B), self.embed(target[:, :T - 1])], dim=1)  # (B, T, width)
        state = self.transformer(inputs)  # (B, T, width): step t has seen triples < t only
        t = torch.arange(T, device=triples.device)[None]  # (1, T)
        real = t < n  # (B, T): a triple is scored here; t == n: EOS
        target = torch.where(real[..., None], target, torch.zeros_like(target))
        channel = torch.where(real, target[..., 0], self.eos)  # (B, T)
        previous = F.pad(target, (0, 0, 1, 0))[:, :T]  # (B, T, 3): the triple before each step
        first, free = (t == 0).expand(B, T), ~real
        logits = (self.channel_logits(state, previous, first),
                  self.position_logits(state, target[..., 0], previous, first, free),
                  self.value_logits(state, target[..., 0], target[..., 1], free))
        lp_c, lp_p, lp_v = (F.log_softmax(l, -1).gather(-1, i[..., None])[..., 0] for l, i in
                            zip(logits, (channel, target[..., 1], target[..., 2] + self.code.max_abs_value)))
        lp = lp_c + torch.where(real, lp_p + lp_v, 0.0)  # where, not *: masked -inf times 0 is nan
        return torch.where(t <= n, lp, 0.0)

    def sequence_log_prob(self, triples: Tensor, mask: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(s) in nats, ``(B,)``: the sum of :meth:`step_log_probs`."""
        return self.step_log_probs(triples, mask, y).sum(1)

    def code_log_prob(self, x: Tensor) -> Tensor:
        """log p(s(x)), ``(B,)``; for a class-conditional model the marginal over a uniform class prior,
        logsumexp_y log p(s(x) | y) - log K (one pass per class); -inf for codes longer than
        max_length (the model gives them no mass)."""
        triples, mask = self.code.encode(x)
        M = self.config.max_length
        too_long = mask.sum(1) > M
        triples, mask = triples[:, :M], mask[:, :M]
        if self.config.conditional:
            K = self.spec.num_classes
            classes = torch.arange(K, device=x.device)[:, None].expand(K, len(x))  # (K, B)
            per_class = torch.stack([self.sequence_log_prob(triples, mask, y) for y in classes])  # (K, B)
            lp = per_class.logsumexp(0) - math.log(K)
        else:
            lp = self.sequence_log_prob(triples, mask)
        return lp.masked_fill(too_long, float("-inf"))

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """Mean NLL of the images' codes in nats per image, logged as ``nll`` with ``triples`` (the mean
        code length). The images are coded on the fly on their device (a batched DCT: cheap next to
        the transformer; one host sync per step to size the padded batch)."""
        y = None
        if self.config.conditional:
            refuse_partial_labels(self.name, batch, "with conditional=true")
            y = batch.y
        triples, mask = self.code.encode(batch.x)
        if triples.shape[1] > self.config.max_length:
            raise DgmError(f"an image of this batch has {triples.shape[1]} DCT triples at quality {self.quality}, "
                           f"more than model.max_length={self.config.max_length}: use --set model.max_length="
                           f"{triples.shape[1]} (or more), or a coarser code (a lower --set model.quality, 1..100)")
        nll = -self.sequence_log_prob(triples, mask, y).mean()
        return Loss(nll, {"nll": nll.detach(), "triples": mask.sum(1).float().mean()})

    @property
    def elbo_description(self) -> str:
        return "log-probability of the image's own DCT sequence (a lower bound on log p(x))"

    def withheld_capabilities(self) -> dict[str, str]:
        if self.code.lossless:
            return {}
        return {"elbo": "the DCT code is lossy at this quality: the model gives no likelihood of the data "
                        "(train with --set model.quality=0 for one)"}

    def elbo(self, x: Tensor) -> Tensor:
        """log p(s(x)) <= log p(x) in nats, ``(B,)``, at the lossless setting only (module docstring)."""
        if not self.code.lossless:
            lever = ("a value_range below the largest lossless value clamps coefficients"
                     if self.quality == "lossless" else f"at quality {self.quality} the DCT code is lossy")
            raise DgmError(f"{lever}, so the model is a distribution over quantised images and gives no likelihood "
                           f"of the data: train with --set model.quality=0 (lossless) and model.value_range=0 "
                           f"for a likelihood, or use sequence_nll for the code's own NLL")
        return self.code_log_prob(x)

    @capability
    def sequence_nll(self, x: Tensor) -> Tensor:
        """-log p(s(x)) in nats, ``(B,)``: the NLL of the images' DCT code at any quality (at a lossy one,
        of the quantised image's code; not a likelihood of x)."""
        return -self.code_log_prob(x)

    # --- generation -------------------------------------------------------------------------------
    def labels(self, condition: Tensor | int | None, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The class of each of n samples, ``(n,)``: the given ones (checked against the classes the
        model was trained with), or uniform ones for a conditional model given none."""
        y = class_labels(self.name, condition, n, self.num_classes, self.device)
        if y is None and self.config.conditional:
            y = randint(self.spec.num_classes, (n,), like=self.start, generator=generator)
        return y

    @staticmethod
    def draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """One index per row of ``logits (n, K)`` (Gumbel-max: argmax of logits + Gumbel noise)."""
        u = rand(logits.shape, like=logits, generator=generator).clamp(1e-20, 1 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(-1)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``(n, *spec.shape)`` in levels, decoded from :meth:`sample_triples`."""
        y = self.labels(condition, n, generator)
        return self.code.decode(*self.sample_triples(n, y, generator=generator))

    @inference  # tensors out of inference mode, so a caller may score them
    def sample_triples(self, n: int, y: Tensor | None = None, *,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` codes, padded triples ``(n, max_length, 3)`` and mask ``(n, max_length)``: triples drawn
        one at a time, channel, then position, then value, with the KV cache (one position per
        step), until every row has ended (EOS or max_length); ``y (n,)`` checked classes or None."""
        M, dtype = self.config.max_length, self.start.dtype
        cache = self.transformer.new_cache(n, device=self.device, dtype=dtype)
        triples = torch.zeros(n, M, 3, dtype=torch.long, device=self.device)
        length = torch.zeros(n, dtype=torch.long, device=self.device)
        done = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        h, previous = self.start_token(y, n), torch.zeros_like(triples[:, :1])  # (n, 1, width), (n, 1, 3)
        for t in range(M):
            state = self.transformer(h, cache=cache)  # (n, 1, width)
            first = torch.full_like(done, t == 0)
            c = self.draw(self.channel_logits(state, previous, first), generator)  # (n, 1)
            done = done | (c == self.eos)
            c = c.clamp(max=self.eos - 1)  # an ended row's triple is never read
            p = self.draw(self.position_logits(state, c, previous, first, done), generator)
            v = self.draw(self.value_logits(state, c, p, done), generator) - self.code.max_abs_value
            step = torch.stack([c, p, v], dim=-1)  # (n, 1, 3)
            triples[:, t] = step[:, 0]
            length += ~done[:, 0]
            if bool(done.all()):
                break
            h, previous = self.embed(step), step
        mask = torch.arange(M, device=self.device) < length[:, None]
        return triples, mask
