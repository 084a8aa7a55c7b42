"""The VQ-VAE: a discrete grid of codes, then a learned autoregressive prior over it.

van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning",
arXiv:1711.00937; the prior over the code grid as in Razavi, van den Oord & Vinyals 2019,
"Generating Diverse High-Fidelity Images with VQ-VAE-2", arXiv:1906.00446 (one level here).

Stage ``"vqvae"`` trains the encoder z_e(x) (B, D, h, w), the codebook e_1 .. e_K and the decoder
p(x | z_q) (a shared likelihood, :func:`dgm.models.vae.likelihood_of`) on eq. 3 of the paper::

    k(x) = argmin_j ||z_e(x) - e_j||^2,   z_q(x) = e_k(x)                                  (eqs. 1, 2)
    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2              (eq. 3)

summed over the positions of the grid and averaged over the batch; with ``ema`` the codebook term is
replaced by the moving averages of appendix A.1 (:class:`dgm.nn.quantize.VectorQuantizer`, with
Laplace smoothing and restarts of dead codes). Stage ``"prior"`` then fits a causal transformer
p(k) = prod_t p(k_t | k_<t) over the codes of the frozen encoder, in raster order, by maximum
likelihood. Samples draw k ~ p(k) one code at a time with the key-value cache and decode e_k.

A bound (sec. 4.1 of the paper): q(z|x) is one-hot on k(x), so KL(q || p) = -log p(k(x)) and::

    log p(x) >= log p(x | z_q(x)) + log p(k(x))

With a discrete likelihood (logistic, categorical, Bernoulli on 8-bit or binary data) this is a
bound on the probability of the data, the "rate + distortion" of the code in nats: :meth:`VQVAE.elbo`.
:meth:`VQVAE.code_bits` is the rate alone, -log2 p(k(x)) in bits per image.

``encode`` gives the continuous z_q(x) (B, D, h, w) (so probes and decoders read vectors); the
index grid k(x) (B, h, w) is :meth:`VQVAE.codes`, and ``decode`` takes either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, Stage, capability, inference, register
from dgm.models.refusals import refuse_variable_length
from dgm.models.vae import VAE, emit, likelihood_of
from dgm.nn.likelihoods import sample_categorical
from dgm.nn.quantize import CodePriorNetwork, GridDecoder, GridEncoder, VectorQuantizer
from dgm.settings import Decay, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range

#: why the VQ-VAE refuses token sequences and point sets
PADDING_REASON = "it quantizes a convolutional grid of image features"


@dataclass
class VQVAEConfig:
    """Settings of :class:`VQVAE` (``--set model.KEY=VALUE``)."""

    num_codes: Annotated[int, Range(2)] = 128  # K, the codebook size (the prior's vocabulary)
    code_dim: PositiveInt = 32  # D, the size of each code vector
    downsampling: PositiveInt = 4  # the grid is the image's sides over this (a power of 2): 28x28 -> 7x7 at 4
    width: PositiveInt = 64  # conv channels of the encoder and decoder
    num_res_blocks: NonNegativeInt = 2  # residual blocks on the grid, in the encoder and in the decoder
    likelihood: Literal["bernoulli", "gaussian", "logistic", "logistic-mixture", "categorical"] = "logistic"
    gaussian_scale: Literal["learned", "output"] = "learned"  # gaussian: a free per-dim scale, or decoded
    mixture_components: PositiveInt = 5  # logistic-mixture: components per dimension
    beta: NonNegativeFloat = 0.25  # weight of the commitment loss (eq. 3)
    ema: bool = True  # codebook by moving averages (appendix A.1); false: by the codebook loss of eq. 3
    decay: Decay = 0.99  # gamma of the moving averages of the cluster sizes and sums
    epsilon: PositiveFloat = 1e-5  # Laplace smoothing of the cluster sizes
    restart_threshold: NonNegativeFloat = 0.5  # restart a code assigned fewer times per batch (EMA count); 0: never
    prior_width: PositiveInt = 128  # the prior transformer's width, a multiple of prior_heads
    prior_depth: PositiveInt = 4  # its blocks
    prior_heads: PositiveInt = 4  # its attention heads per block
    prior_dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0  # its dropout (training only)
    prior_max_length: PositiveInt = 256  # the most code positions (h * w) the prior takes; longer grids are refused
    prior_lr: PositiveFloat | None = None  # learning rate of stage "prior"; None: train.lr
    vqvae_epochs: PositiveInt = 5  # epochs of stage "vqvae"; stage "prior" trains for the rest of train.epochs
    sample_mean: bool = True  # samples show the decoder mean E[x|z_q]; False draws x ~ p(x|z_q)


def refuse_non_images(model: str, spec: DataSpec) -> None:
    """Raise unless ``spec`` holds images (a fixed grid of pixels)."""
    refuse_variable_length(model, spec, PADDING_REASON)
    if not spec.is_image:
        raise DgmError(f"model {model!r} quantizes a convolutional grid of image features, but {spec.name!r} "
                       f"holds {spec.kind}s of shape {spec.shape}: use image data such as --data digits or "
                       f"fashion-mnist")


@register
class VQVAE(GenerativeModel):
    """VQ-VAE with an EMA (or gradient) codebook and a causal-transformer prior over its code grid,
    trained in two stages (module docstring).

    Example:
        >>> data = dgm.data.load("digits")
        >>> model = dgm.create("vqvae", data.spec, num_codes=32, downsampling=2, vqvae_epochs=3)
        >>> model.codes(data.tensors(8).x).shape          # (8, 4, 4) code indices
        >>> model.code_bits(data.tensors(8).x)            # -log2 p(codes), (8,)
    """

    name = "vqvae"
    Config = VQVAEConfig
    description = ("VQ-VAE: nearest-code bottleneck (EMA codebook, dead-code restarts), then a causal "
                   "transformer prior over the code grid (van den Oord et al. 2017)")

    @classmethod
    def default_representation(cls, config: VQVAEConfig, spec: DataSpec) -> str:
        refuse_non_images(cls.name, spec)
        return VAE.default_representation.__func__(cls, config, spec)  # the VAE's rule: the likelihood's

    def __init__(self, config: VQVAEConfig, spec: DataSpec, *, prior: bool = True) -> None:
        """``prior=False`` builds the tokenizer alone (encoder, codebook, decoder), for a model whose
        own network is the prior over the codes (the text-to-image transformer)."""
        super().__init__(config, spec)
        c = config
        refuse_non_images(self.name, spec)
        C, H, W = spec.shape
        f = c.downsampling
        if f & (f - 1):
            raise DgmError(f"model.downsampling must be a power of 2 (one stride-2 conv each), got {f}: "
                           f"use 1, 2, 4 or 8")
        if H % f or W % f:
            raise DgmError(f"a {H}x{W} image does not make a whole code grid at model.downsampling={f}: choose "
                           f"a downsampling that divides both sides (e.g. 4 for 28x28, 2 or 4 for 8x8), or "
                           f"resize with --set data.size=N")
        self.grid = (H // f, W // f)  # (h, w)
        L = self.grid[0] * self.grid[1]
        if L > c.prior_max_length:
            raise DgmError(f"the {self.grid[0]}x{self.grid[1]} code grid has {L} positions, more than the prior "
                           f"takes (model.prior_max_length={c.prior_max_length}): raise model.downsampling or "
                           f"model.prior_max_length")
        if c.prior_width % c.prior_heads:
            raise DgmError(f"model.prior_width ({c.prior_width}) must be a multiple of model.prior_heads "
                           f"({c.prior_heads})")
        self.likelihood = likelihood_of(c, spec)
        n = f.bit_length() - 1  # stride-2 stages
        self.encoder = GridEncoder(C, c.code_dim, width=c.width, downsamplings=n, num_res_blocks=c.num_res_blocks)
        self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, ema=c.ema, decay=c.decay, epsilon=c.epsilon,
                                         restart_threshold=c.restart_threshold)
        self.decoder = GridDecoder(c.code_dim, self.likelihood.params_shape[0], width=c.width, upsamplings=n,
                                   num_res_blocks=c.num_res_blocks)
        self.prior = CodePriorNetwork(c.num_codes, L, width=c.prior_width, depth=c.prior_depth,
                                      heads=c.prior_heads, dropout=c.prior_dropout) if prior else None

    @property
    def likelihood_kind(self) -> str:
        return "discrete" if self.likelihood.discrete else "density"

    @property
    def elbo_description(self) -> str:
        return "log p(x|z_q(x)) + log p(code of x), the VQ-VAE bound (one-hot q)"

    # --- the two halves ---------------------------------------------------------------------------
    def codes(self, x: Tensor) -> Tensor:
        """k(x), the nearest code of each grid position (eq. 1), ``(B, h, w)`` int64; no codebook update."""
        return self.quantizer.nearest(self.encoder(x if x.is_floating_point() else x.float()))

    def decoder_params(self, z_q: Tensor) -> Tensor:
        """The likelihood's parameters for codes ``z_q (B, D, h, w)``, in at least float32 (under bf16
        autocast the networks run in bf16; log-likelihoods summed over pixels need fp32)."""
        params = self.decoder(z_q)
        return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params

    def code_log_prob(self, codes: Tensor) -> Tensor:
        """log p(k) = sum_t log p(k_t | k_<t) under the prior, nats, ``(B,)``, for index grids ``(B, h, w)``."""
        logits = self.prior(codes.flatten(1)).float()  # (B, L, K)
        return logits.log_softmax(-1).gather(-1, codes.flatten(1)[..., None])[..., 0].sum(1)

    # --- training: two stages -------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        prior = {id(p) for p in self.prior.parameters()}
        return [Phase("vqvae", [p for p in self.parameters() if id(p) not in prior]),
                Phase("prior", list(self.prior.parameters()))]

    def stages(self) -> list[Stage]:
        vqvae, prior = self.phases()
        return [Stage("vqvae", [vqvae], epochs=self.config.vqvae_epochs),
                Stage("prior", [prior], lr=self.config.prior_lr)]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x = batch.x
        if phase == "vqvae":
            q = self.quantizer(self.encoder(x if x.is_floating_point() else x.float()), generator=progress.generator)
            rec = self.likelihood.log_prob(self.decoder_params(q.z_q), x)  # (B,) log p(x | z_q)
            loss = -rec.mean() + q.codebook.mean() + self.config.beta * q.commitment.mean()  # eq. 3
            metrics = {"reconstruction": rec.mean(), "commitment": q.commitment.mean(),
                       "perplexity": q.perplexity, "used_codes": q.used}
            if not self.config.ema:
                metrics["codebook"] = q.codebook.mean()
            return Loss(loss, metrics)
        with torch.no_grad():  # the encoder is frozen in this stage (the trainer freezes it too)
            codes = self.codes(x)  # nearest codes only: the codebook's moving averages stay as stage 1 left them
        nll = -self.code_log_prob(codes).mean()
        return Loss(nll, {"prior_bits": nll.detach() / math.log(2)})

    # --- the bound and the rate -----------------------------------------------------------------
    def elbo(self, x: Tensor) -> Tensor:
        """log p(x|z_q(x)) + log p(k(x)) <= log p(x) for a discrete likelihood (module docstring), nats, ``(B,)``."""
        codes = self.codes(x)
        return self.likelihood.log_prob(self.decoder_params(self.quantizer.lookup(codes)), x) + \
            self.code_log_prob(codes)

    @capability
    def code_bits(self, x: Tensor) -> Tensor:
        """The rate: -log2 p(k(x)), the bits of each example's code under the prior, ``(B,)``."""
        return -self.code_log_prob(self.codes(x)) / math.log(2)

    @capability
    def code_usage(self, x: Tensor) -> Tensor:
        """How often each of the K codes is the nearest at a grid position of ``x``: counts ``(K,)``."""
        return torch.bincount(self.codes(x).flatten(), minlength=self.config.num_codes)

    # --- codes and generation -------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """z_q(x) = e_k(x), the quantized grid, ``(B, D, h, w)`` (the indices: :meth:`codes`)."""
        return self.quantizer.lookup(self.codes(x))

    def decode(self, z: Tensor) -> Tensor:
        """The decoder mean E[x|z_q] ``(B, *spec.shape)`` of code vectors ``(B, D, h, w)`` or of an
        index grid ``(B, h, w)`` (integers)."""
        z_q = z if z.is_floating_point() else self.quantizer.lookup(z)
        return self.likelihood.mean(self.decoder_params(z_q))

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        if condition is not None:
            raise DgmError("the VQ-VAE is unconditional: drop the condition (--class)")
        z_q = self.quantizer.lookup(self.sample_codes(n, generator=generator))
        return emit(self.likelihood, self.decoder_params(z_q), mean=self.config.sample_mean, generator=generator)

    @inference  # tensors out of inference mode, so a caller may score them
    def sample_codes(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` index grids ``(n, h, w)`` drawn from the prior in raster order, one position per step
        with the key-value cache (ancestral sampling: exact)."""
        L = self.grid[0] * self.grid[1]
        codes = torch.zeros(n, L, dtype=torch.long, device=self.device)
        logits, cache = self.prior.begin(n)  # (n, K): position 0
        for t in range(L):
            codes[:, t] = sample_categorical(logits.float(), -1, generator)[:, 0]
            if t + 1 < L:
                logits = self.prior.extend(codes[:, t], cache)
        return codes.view(n, *self.grid)
