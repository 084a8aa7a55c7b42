"""Text-to-image in the manner of DALL-E: a transformer over caption tokens followed by image tokens.

Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", arXiv:2102.12092. An image ``x`` is first
compressed to a grid of ``N = h * w`` discrete tokens ``z`` by a discrete autoencoder; a transformer
then models the caption ``y`` (``T`` word tokens, padded) and the image tokens as one sequence::

    p(y, z) = prod_t p(y_t | y_<t) * prod_k p(z_k | y, z_<k)                         (sec. 2, eq. 1)

trained by maximum likelihood, with the caption's and the image's cross-entropies each averaged over
their tokens and weighted 1/8 and 7/8 (sec. 2.2: the image is what we want to model well). The
attention masks follow sec. 2.2 and fig. 11 (:func:`dgm.nn.transformer.text_image_masks`): the caption
is causal and never sees the image; image tokens see the whole caption and earlier image tokens through
row, column and (in the last block) convolutional patterns. Each padding position of the caption has a
token of its own (sec. 2.2: "a special padding token for each of the 256 text positions").

The image tokenizer here is dgm's VQ-VAE (:class:`dgm.models.vqvae.VQVAE` without its own prior: the
transformer is the prior), where the paper trains a discrete VAE with the Gumbel-softmax relaxation;
both give a grid of code indices. Training has two stages: ``"tokenizer"`` (the VQ-VAE, and beside it
the contrastive reranker, phase ``"reranker"``) and ``"transformer"`` over the frozen tokenizer's codes.

Generation (``dgm sample RUN --caption "a small red circle" -n 16``) draws ``z ~ p(z | y)`` token by token
with the key-value cache and decodes it; without a caption, the caption is drawn too (the joint model).
Reranking (sec. 2.5): draw ``R`` candidates per caption and keep the one a contrastive text-image model
(Radford et al. 2021, CLIP; here a small one, :class:`dgm.nn.contrastive.ContrastiveModel`, trained on the
same pairs) scores highest. Captions are word tokens of :mod:`dgm.data.captions`: the data's own
captions (``scenes``), or the class names of labelled data (``fashion-mnist``: "ankle boot").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dgm.data.core import Batch, DataSpec, to_unit
from dgm.errors import DgmError
from dgm.models.base import Loss, Phase, Progress, Sampler, Stage, capability, inference, register
from dgm.models.captioned import CaptionedImageModel
from dgm.models.language import autoregress, picker
from dgm.models.vae import emit
from dgm.models.vqvae import VQVAE, VQVAEConfig
from dgm.nn.contrastive import ContrastiveModel, ImageEncoder, TextEncoder
from dgm.nn.transformer import INIT_STD, CausalTransformer, init_weights, text_image_masks
from dgm.settings import (Decay, Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range,
                          coerce, type_hints)


@dataclass
class TextToImageConfig:
    """Settings of :class:`TextToImage` (``--set model.KEY=VALUE``)."""

    # the image tokenizer: a VQ-VAE (stage "tokenizer"); see VQVAEConfig
    num_codes: Annotated[int, Range(2)] = 64  # image-token vocabulary
    code_dim: PositiveInt = 32  # size of each code vector
    downsampling: PositiveInt = 4  # image side over grid side (a power of 2): 32x32 -> 8x8 = 64 image tokens
    tokenizer_width: PositiveInt = 64  # conv channels of the VQ-VAE's encoder and decoder
    num_res_blocks: NonNegativeInt = 1  # residual blocks on the grid
    likelihood: Literal["bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"] = "logistic"
    beta: NonNegativeFloat = 0.25  # commitment weight
    ema: bool = True  # codebook by moving averages
    decay: Decay = 0.99  # of the codebook's moving averages
    restart_threshold: NonNegativeFloat = 0.5  # restart codes used less than this per batch (EMA count)
    tokenizer_epochs: PositiveInt = 4  # epochs of stage "tokenizer"; stage "transformer" gets the rest
    # the transformer over [caption tokens, image tokens] (stage "transformer")
    width: PositiveInt = 128  # a multiple of heads
    depth: PositiveInt = 4  # blocks: row, row, column, ..., convolutional last (sparse attention)
    heads: PositiveInt = 4
    dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    attention: Literal["sparse", "dense"] = "sparse"  # sparse: the paper's masks; dense: full causal attention
    conv_kernel: PositiveInt = 5  # odd side of the last block's convolutional attention (11 on the paper's 32x32)
    text_weight: Fraction = 0.125  # weight of the caption's loss; the image's is 1 - this (paper: 1/8, 7/8)
    transformer_lr: PositiveFloat | None = None  # learning rate of stage "transformer"; None: train.lr
    # the contrastive reranker (trained in stage "tokenizer", beside the VQ-VAE)
    reranker_width: PositiveInt = 32  # its text encoder's width and its image encoder's channels
    reranker_dim: PositiveInt = 64  # the shared embedding size
    sample_mean: bool = True  # show the decoder mean E[x|z]; False draws x ~ p(x|z)


@dataclass
class CaptionOptions:
    """Options of sampling from captions (``dgm sample RUN --caption "a small red circle" --rerank 8``)."""

    caption: str | None = field(default=None, metadata={
        "help": "draw images of this caption (words of the data's vocabulary); default: draw captions too"})
    rerank: PositiveInt | None = field(default=None, metadata={
        "help": "draw this many candidates per image and keep the one the contrastive model scores "
                "highest; default 1"})
    temperature: PositiveFloat | None = field(default=None, metadata={
        "help": "divide the image tokens' logits by this (< 1 sharper); default 1"})
    top_k: PositiveInt | None = field(default=None, metadata={
        "help": "keep only the k most probable image tokens at each step; default all"})


ANCESTRAL = Sampler("ancestral", "image tokens one at a time given the caption (key-value cache), decoded by "
                    "the tokenizer; caption, rerank by the contrastive model, temperature, top-k", CaptionOptions)
#: the VQ-VAE settings this model passes through under the same names
_TOKENIZER_FIELDS = ("num_codes", "code_dim", "downsampling", "num_res_blocks", "likelihood", "beta", "ema",
                     "decay", "restart_threshold")


@register
class TextToImage(CaptionedImageModel):
    """A transformer over caption and image tokens with a VQ-VAE tokenizer and a contrastive reranker
    (module docstring).

    Example:
        >>> data = dgm.data.load("scenes")
        >>> model = dgm.create("dalle", data.spec, depth=2, tokenizer_epochs=2)
        >>> ids = model.vocabulary.encode(["a small red circle"])
        >>> model.sample_captioned(ids.repeat(8, 1), rerank=4)      # (8, 3, 32, 32)
    """

    name = "dalle"
    Config = TextToImageConfig
    description = ("DALL-E-style text-to-image: VQ-VAE image tokens, a transformer over [caption, image "
                   "tokens] with row/column/conv attention masks, contrastive reranking (Ramesh et al. 2021)")
    samplers = (ANCESTRAL,)

    @classmethod
    def default_representation(cls, config: TextToImageConfig, spec: DataSpec) -> str:
        return VQVAE.default_representation(cls.tokenizer_config(config), spec)

    @staticmethod
    def tokenizer_config(config: TextToImageConfig) -> VQVAEConfig:
        return VQVAEConfig(width=config.tokenizer_width, vqvae_epochs=config.tokenizer_epochs,
                           **{name: getattr(config, name) for name in _TOKENIZER_FIELDS})

    def __init__(self, config: TextToImageConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        c = config
        if c.width % c.heads:
            raise DgmError(f"model.width ({c.width}) must be a multiple of model.heads ({c.heads})")
        if c.conv_kernel % 2 == 0:
            raise DgmError(f"model.conv_kernel must be odd (a neighbourhood centred on the token), got {c.conv_kernel}")
        self.tokenizer = VQVAE(self.tokenizer_config(c), spec, prior=False)  # refuses data that is not images
        self.grid = self.tokenizer.grid
        vocabulary = self.vocabulary
        T, N = vocabulary.length, self.grid[0] * self.grid[1]
        # the transformer's inputs: [start, y_0 .. y_{T-1}, z_0 .. z_{N-2}]; output t predicts token t
        self.start = nn.Parameter(torch.zeros(c.width))
        self.text_embedding = nn.Embedding(vocabulary.size, c.width)
        self.pad_embedding = nn.Parameter(torch.zeros(T, c.width))  # one padding token per caption position
        self.image_embedding = nn.Embedding(c.num_codes, c.width)
        masks = text_image_masks(T, self.grid, c.depth, kernel=c.conv_kernel) if c.attention == "sparse" else None
        self.transformer = CausalTransformer(c.width, c.depth, c.heads, max_length=T + N, dropout=c.dropout,
                                             masks=masks)
        self.text_head = nn.Linear(c.width, vocabulary.size)
        self.image_head = nn.Linear(c.width, c.num_codes)
        for module in (self.text_embedding, self.image_embedding, self.text_head, self.image_head):
            init_weights(module)
        for p in (self.start, self.pad_embedding):
            nn.init.normal_(p, std=INIT_STD)
        C, H, _ = spec.shape
        self.reranker = ContrastiveModel(
            TextEncoder(vocabulary.size, T, c.reranker_width, 1, 4 if c.reranker_width % 4 == 0 else 1,
                        c.reranker_dim),
            ImageEncoder(C, H, c.reranker_width, c.reranker_dim))

    # --- the sequence ------------------------------------------------------------------------------
    def embed_caption(self, captions: Tensor) -> Tensor:
        """Word ids ``(B, T)`` (0: padding) to inputs ``(B, T, width)``, each padding position with its own token."""
        T = captions.shape[1]
        pad = (captions == 0)[..., None]
        return torch.where(pad, self.pad_embedding[:T], self.text_embedding(captions))

    def logits(self, captions: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: the logits of every caption token ``(B, T, V)`` and image token ``(B, N, K)``
        of captions ``(B, T)`` and code grids ``(B, h, w)``, each from the tokens before it (eq. 1)."""
        B, T = captions.shape
        z = codes.flatten(1)  # (B, N) raster order
        inputs = torch.cat([self.start.expand(B, 1, -1), self.embed_caption(captions),
                            self.image_embedding(z[:, :-1])], dim=1)  # (B, T + N, width)
        out = self.transformer(inputs)
        return self.text_head(out[:, :T]).float(), self.image_head(out[:, T:]).float()

    # --- training: the tokenizer and the reranker, then the transformer -----------------------------
    def phases(self) -> list[Phase]:
        own = [self.start, self.pad_embedding, *self.text_embedding.parameters(), *self.image_embedding.parameters(),
               *self.transformer.parameters(), *self.text_head.parameters(), *self.image_head.parameters()]
        return [Phase("tokenizer", list(self.tokenizer.parameters())),
                Phase("reranker", list(self.reranker.parameters())),
                Phase("transformer", own)]

    def stages(self) -> list[Stage]:
        tokenizer, reranker, transformer = self.phases()
        return [Stage("tokenizer", [tokenizer, reranker], epochs=self.config.tokenizer_epochs),
                Stage("transformer", [transformer], lr=self.config.transformer_lr)]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        if phase == "tokenizer":
            return self.tokenizer.loss(batch, "vqvae", progress)
        captions = self.batch_captions(batch)
        if phase == "reranker":
            loss = self.reranker.loss(captions, to_unit(batch.x, self.spec))
            return Loss(loss, {"contrastive": loss.detach(), "scale": self.reranker.log_scale.detach().exp()})
        with torch.no_grad():  # the tokenizer is frozen in this stage
            codes = self.tokenizer.codes(batch.x)
        text_logits, image_logits = self.logits(captions, codes)
        # each cross-entropy averaged over its own tokens, as the paper normalises them (sec. 2.2), nats
        text = F.cross_entropy(text_logits.transpose(1, 2), captions)
        image = F.cross_entropy(image_logits.transpose(1, 2), codes.flatten(1))
        w = self.config.text_weight
        return Loss(w * text + (1 - w) * image, {"text_bits_per_token": text.detach() / math.log(2),
                                                 "image_bits_per_token": image.detach() / math.log(2)})

    # --- generation --------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, caption: str | None = None, rerank: int | None = None,
               temperature: float | None = None, top_k: int | None = None) -> Tensor:
        """``n`` images ``(n, *spec.shape)``: of ``caption``, of the class captions of ``condition``
        (labels), or of captions drawn from the model; ``rerank`` candidates each (module docstring)."""
        hints = type_hints(CaptionOptions)
        options = {k: coerce(v, hints[k], "--" + k.replace("_", "-"))
                   for k, v in {"rerank": rerank, "temperature": temperature, "top_k": top_k}.items()}
        captions = self.requested_captions(n, condition, caption, sampler)
        if captions is None:
            captions = self.draw_captions(n, generator=generator)
        return self.sample_captioned(captions, generator=generator, rerank=options["rerank"] or 1,
                                     temperature=options["temperature"] or 1.0, top_k=options["top_k"])

    @capability
    def sample_captioned(self, captions: Tensor, *, generator: torch.Generator | None = None, rerank: int = 1,
                         temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """Images ``(n, *spec.shape)`` of captions ``(n, T)`` (word ids), in the data's representation; with
        ``rerank = R``, the best of ``R`` candidates each by the contrastive model's similarity (sec. 2.5)."""
        n = len(captions)
        candidates = captions.repeat(rerank, 1)  # (R n, T): candidate r of caption i at r n + i
        codes = self.draw_codes(candidates, generator=generator, temperature=temperature, top_k=top_k)
        z_q = self.tokenizer.quantizer.lookup(codes)
        images = emit(self.tokenizer.likelihood, self.tokenizer.decoder_params(z_q), mean=self.config.sample_mean,
                      generator=generator)
        if rerank == 1:
            return images
        scores = self.reranker.similarity(candidates, to_unit(images, self.spec)).view(rerank, n)
        best = scores.argmax(0)  # (n,)
        return images.view(rerank, n, *images.shape[1:])[best, torch.arange(n, device=images.device)]

    @inference  # the cache is written in place: made and used inside inference mode
    def draw_codes(self, captions: Tensor, *, generator: torch.Generator | None = None, temperature: float = 1.0,
                   top_k: int | None = None) -> Tensor:
        """Code grids ``(n, h, w)`` drawn from p(z | y) one token at a time with the key-value cache."""
        n, N = len(captions), self.grid[0] * self.grid[1]
        cache = self.transformer.new_cache(n)
        prefix = torch.cat([self.start.expand(n, 1, -1), self.embed_caption(captions)], dim=1)  # (n, 1 + T, width)
        logits = self.image_head(self.transformer(prefix, cache=cache)[:, -1]).float()  # (n, K): z_0
        pick = picker(generator, temperature=temperature, top_k=top_k)
        codes = torch.zeros(n, N, dtype=torch.long, device=self.device)
        for k in range(N):
            codes[:, k] = pick(logits)
            if k + 1 < N:
                logits = self.image_head(self.transformer(self.image_embedding(codes[:, k:k + 1]), cache=cache)[:, 0])
                logits = logits.float()
        return codes.view(n, *self.grid)

    @inference
    def draw_captions(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Captions ``(n, T)`` drawn from p(y) with the key-value cache; padding, the end token of the
        language models (id 0), is drawn once and fills every later position."""
        captions = torch.zeros(n, self.vocabulary.length, dtype=torch.long, device=self.device)
        cache = self.transformer.new_cache(n)
        logits = self.text_head(self.transformer(self.start.expand(n, 1, -1), cache=cache)[:, 0]).float()

        def advance(t: int) -> Tensor:  # the logits of caption position t + 1, after feeding position t
            inputs = self.embed_caption(captions[:, :t + 1])[:, t:t + 1]
            return self.text_head(self.transformer(inputs, cache=cache)[:, 0]).float()

        return autoregress(captions, 0, logits, advance, picker(generator))

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        return [self.caption_figure(generator=generator), self.caption_figure(generator=generator, rerank=8)]
