"""alignDRAW: images drawn step by step on a canvas, each step attending to the words of the caption.

Mansimov, Parisotto, Ba & Salakhutdinov 2016, "Generating Images from Captions with Attention",
arXiv:1511.02793 (ICLR), over DRAW (Gregor et al. 2015, arXiv:1502.04623). The caption ``y`` (words
y_1..y_m) is read by a bidirectional LSTM, h^lang_j = [h->_j, h<-_j] (sec. 3.1). The image is the
canvas after T steps of a conditional DRAW (sec. 3.2, eq. 1-6), with z_t of ``latent_dim``::

    p(z_t | z_<t, y) = N(mu(h^gen_{t-1}), sigma(h^gen_{t-1})),
        mu = tanh(W_mu h), sigma = exp(tanh(W_sigma h))                       (eq. 1-3: a learned prior)
    s_t     = align(h^gen_{t-1}, h^lang) = sum_j alpha_tj h^lang_j
    alpha_tj ∝ exp(v^T tanh(U h^lang_j + W h^gen_{t-1} + b))                    (eq. 7-8, sec. 3.3)
    h^gen_t = LSTM^gen(h^gen_{t-1}, [z_t, s_t]),   c_t = c_{t-1} + write(h^gen_t)    (eq. 4-5)
    x ~ p(x | c_T)                                                                (eq. 6)

and inferred by (sec. 3.4, eq. 11-14; DRAW eq. 3-6)::

    x^_t = x - sigmoid(c_{t-1}),   r_t = read(x, x^_t, h^gen_{t-1})
    h^infer_t = LSTM^infer(h^infer_{t-1}, [r_t, h^gen_{t-1}]),   q(z_t | .) = N(mu(h^infer_t), sigma(h^infer_t))

The bound (eq. 9-10) is log p(x|y) >= E_q[log p(x | c_T)] - sum_t KL(q(z_t|.) || p(z_t|h^gen_{t-1})),
each KL in closed form; it is ``conditional_elbo`` (a bound on log p(x|y), as the conditional VAE's).
read and write are DRAW's Gaussian filterbanks (eq. 19-29): N x N filters centred on a grid of
stride delta around (g_X, g_Y), of variance sigma^2 and intensity gamma, each set from the LSTM state;
``read_attention=False`` reads the whole images [x, x^_t] instead (DRAW eq. 17).

Here the canvas holds the likelihood's parameters (``bernoulli``: logits, the paper's MNIST; ``logistic``:
a discretised logistic's location and log-scale per pixel, for 8-bit images), and sigmoid(c) is the
canvas's picture (the logistic's location on [0, 1] instead). q's mean and log-variance are linear in
h^infer (DRAW eq. 6); the prior's take the paper's tanh forms. There is no p(y): ``sample`` without a
caption or class draws the data's example captions (else its class captions) in turn. The paper's
LAPGAN sharpening of COCO samples is left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, to_unit
from dgm.errors import DgmError
from dgm.models.base import Loss, Progress, Sampler, capability, inference, randn, register
from dgm.models.captioned import CaptionedImageModel
from dgm.models.refusals import refuse_all_but_images
from dgm.models.vae import PADDING_REASON, emit, weighted_kl
from dgm.nn import LIKELIHOODS, DiscretizedLogistic, diagonal_gaussian, make_likelihood, normal_kl
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt


@dataclass
class AlignDRAWConfig:
    """Settings of :class:`AlignDRAW` (``--set model.KEY=VALUE``)."""

    steps: PositiveInt = 16  # T, canvas updates
    latent_dim: PositiveInt = 16  # size of each z_t
    hidden: PositiveInt = 256  # units of LSTM^infer and LSTM^gen
    embed_dim: PositiveInt = 32  # word embedding
    caption_hidden: PositiveInt = 64  # units of each direction of the caption's LSTM (h^lang has twice this)
    align_dim: PositiveInt = 64  # hidden size of the alignment MLP (U, W, v of eq. 8)
    read_attention: bool = True  # read N x N glimpses through the filterbank; False: the whole x and x^_t
    read_size: PositiveInt = 5  # N of the read filterbank
    write_size: PositiveInt = 5  # N of the write filterbank
    likelihood: Literal["bernoulli", "logistic"] = "bernoulli"  # p(x | c_T): binarized images, or 8-bit levels
    beta: NonNegativeFloat = 1.0  # weight of the KL terms in training (1: the bound)
    kl_warmup_steps: NonNegativeInt = 0  # ramp beta linearly from 0 over this many steps (0: no warm-up)
    sample_mean: bool = True  # show E[x | c_T]; False draws x ~ p(x | c_T)


@dataclass
class CaptionOption:
    """Options of drawing from captions (``dgm sample RUN --caption "a small red circle"``)."""

    caption: str | None = field(default=None, metadata={
        "help": "draw images of this caption (words of the data's vocabulary); default: the data's example "
                "or class captions in turn"})


ANCESTRAL = Sampler("ancestral", "z_t ~ p(z_t | h^gen_{t-1}) for T steps, each writing to the canvas with "
                    "attention to the caption's words; caption", CaptionOption)


# --- networks -------------------------------------------------------------------------------------
def filterbank(params: Tensor, size: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """DRAW's Gaussian filterbank (eq. 19-26) from ``params`` ``(B, 5)`` = (g~_X, g~_Y, log sigma^2,
    log delta~, log gamma): F_Y ``(B, N, H)``, F_X ``(B, N, W)``, each row normalised over pixels, and
    gamma ``(B,)``. Pixel and filter coordinates count from 1, as in the paper."""
    gx_, gy_, log_var, log_delta, log_gamma = params.float().unbind(-1)
    gx, gy = (width + 1) / 2 * (gx_ + 1), (height + 1) / 2 * (gy_ + 1)  # eq. 22-23
    delta = (max(height, width) - 1) / max(size - 1, 1) * log_delta.exp()  # eq. 24
    offsets = torch.arange(1, size + 1, device=params.device) - size / 2 - 0.5  # (N,)

    def bank(centre: Tensor, pixels: int) -> Tensor:
        mu = centre[:, None] + offsets * delta[:, None]  # (B, N) eq. 19-20
        a = torch.arange(1, pixels + 1, device=params.device)
        f = torch.exp(-(a - mu[..., None]) ** 2 / (2 * log_var.exp()[:, None, None]))  # (B, N, pixels)
        return f / f.sum(-1, keepdim=True).clamp_min(1e-8)  # eq. 25-26 (a filter off the image reads 0)

    return bank(gy, height), bank(gx, width), log_gamma.exp()


def read(images: Tensor, F_Y: Tensor, F_X: Tensor, gamma: Tensor) -> Tensor:
    """gamma F_Y x F_X^T of each channel (DRAW eq. 27): ``(B, C, H, W)`` -> ``(B, C, N, N)``."""
    return gamma[:, None, None, None] * torch.einsum("bnh,bchw,bmw->bcnm", F_Y, images, F_X)


def write(patch: Tensor, F_Y: Tensor, F_X: Tensor, gamma: Tensor) -> Tensor:
    """F_Y^T w F_X / gamma of each channel (DRAW eq. 29): ``(B, C, N, N)`` -> ``(B, C, H, W)``."""
    return torch.einsum("bnh,bcnm,bmw->bchw", F_Y, patch, F_X) / gamma[:, None, None, None]


class CaptionEncoder(nn.Module):
    """Word ids ``(B, L)`` (0: padding after the last word) -> h^lang ``(B, L, 2 hidden)`` and the mask of
    real words ``(B, L)``. The backward LSTM reads each caption's words reversed within its length, so
    no state at a word depends on the padding (as packing would, without a host read of the lengths)."""

    def __init__(self, vocabulary_size: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embed_dim)
        self.forward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)

    def forward(self, captions: Tensor) -> tuple[Tensor, Tensor]:
        mask = captions != 0
        mask[:, 0] = True  # a caption of no words reads its first (padding) position rather than nothing
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        j = torch.arange(captions.shape[1], device=captions.device)
        reverse = torch.where(j < lengths, lengths - 1 - j, j)[..., None]  # its own inverse; padding stays put
        e = self.embedding(captions)  # (B, L, E)
        forward, _ = self.forward_lstm(e)
        backward, _ = self.backward_lstm(e.gather(1, reverse.expand_as(e)))
        return torch.cat([forward, backward.gather(1, reverse.expand_as(backward))], -1), mask


class Align(nn.Module):
    """alpha_tj ∝ exp(v^T tanh(U h^lang_j + W h^gen + b)) over the real words, s_t = sum_j alpha_tj h^lang_j
    (eq. 7-8)."""

    def __init__(self, lang_dim: int, hidden: int, align_dim: int) -> None:
        super().__init__()
        self.U = nn.Linear(lang_dim, align_dim)  # with b
        self.W = nn.Linear(hidden, align_dim, bias=False)
        self.v = nn.Linear(align_dim, 1, bias=False)

    def forward(self, h_gen: Tensor, h_lang: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """s ``(B, 2 H_l)`` and alpha ``(B, L)``; ``keys`` = U h^lang + b ``(B, L, A)``, once per caption."""
        scores = self.v(torch.tanh(keys + self.W(h_gen)[:, None])).squeeze(-1)  # (B, L)
        alpha = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.einsum("bl,bld->bd", alpha, h_lang), alpha


# --- the model ------------------------------------------------------------------------------------
@register
class AlignDRAW(CaptionedImageModel):
    """DRAW conditioned on a caption through soft alignment to its words (module docstring).

    Example:
        >>> data = dgm.data.load("scenes")
        >>> model = dgm.create("aligndraw", data.spec, likelihood="logistic")
        >>> model.sample(8, caption="a large green triangle")       # (8, 3, 32, 32)
    """

    name = "aligndraw"
    Config = AlignDRAWConfig
    description = ("alignDRAW: a recurrent VAE drawing on a canvas with Gaussian attention, each step aligned "
                   "to the caption's words by a bidirectional LSTM (Mansimov et al. 2016)")
    samplers = (ANCESTRAL,)

    @classmethod
    def default_representation(cls, config: AlignDRAWConfig, spec: DataSpec) -> str:
        cls.refuse(spec)
        return LIKELIHOODS[config.likelihood].default_representation

    @classmethod
    def refuse(cls, spec: DataSpec) -> None:
        refuse_all_but_images(cls.name, spec, PADDING_REASON, "draws images on a canvas",
                              "--data scenes, or labelled images such as fashion-mnist")

    def __init__(self, config: AlignDRAWConfig, spec: DataSpec) -> None:
        self.refuse(spec)  # images first: the caption check's advice assumes them
        super().__init__(config, spec)
        c = config
        vocabulary = self.vocabulary
        self.likelihood = make_likelihood(c.likelihood, spec)
        C, H, W = spec.shape
        lang = 2 * c.caption_hidden
        self.caption_encoder = CaptionEncoder(vocabulary.size, c.embed_dim, c.caption_hidden)
        self.align = Align(lang, c.hidden, c.align_dim)
        glimpse = c.read_size ** 2 if c.read_attention else H * W
        if c.read_attention:
            self.read_window = nn.Linear(c.hidden, 5)  # (g~_X, g~_Y, log sigma^2, log delta~, log gamma), eq. 21
        self.infer_lstm = nn.LSTMCell(2 * C * glimpse + c.hidden, c.hidden)
        self.posterior = nn.Linear(c.hidden, 2 * c.latent_dim)  # q's mean and log-variance
        self.prior = nn.Linear(c.hidden, 2 * c.latent_dim)  # W_mu, W_sigma of eq. 2-3
        self.gen_lstm = nn.LSTMCell(c.latent_dim + lang, c.hidden)
        self.write_window = nn.Linear(c.hidden, 5)
        self.write_patch = nn.Linear(c.hidden, self.likelihood.params_shape[0] * c.write_size ** 2)

    # --- one run of the T steps -------------------------------------------------------------------
    def prior_params(self, h_gen: Tensor) -> tuple[Tensor, Tensor]:
        """Mean tanh(W_mu h) and log-variance 2 tanh(W_sigma h) of p(z_t | h^gen_{t-1}) (eq. 2-3)."""
        mean, scale = self.prior(h_gen).chunk(2, -1)
        return torch.tanh(mean), 2 * torch.tanh(scale)

    def picture(self, canvas: Tensor) -> Tensor:
        """sigmoid(c), the canvas as an image on [0, 1] (eq. 11): the Bernoulli's mean, or the logistic's
        location (its mean but for the end bins, without a pass over every level)."""
        if isinstance(self.likelihood, DiscretizedLogistic):
            return self.likelihood.loc_scale(canvas)[0].clamp(0, 1)
        return self.likelihood.mean(canvas)

    def glimpse(self, x: Tensor, error: Tensor, h_gen: Tensor) -> Tensor:
        """r_t = read(x, x^_t, h^gen_{t-1}), flattened ``(B, 2 C N^2)`` (or ``(B, 2 C H W)`` without attention)."""
        if not self.config.read_attention:
            return torch.cat([x.flatten(1), error.flatten(1)], 1)
        banks = filterbank(self.read_window(h_gen), self.config.read_size, *x.shape[2:])
        return torch.cat([read(x, *banks).flatten(1), read(error, *banks).flatten(1)], 1)

    def written(self, h_gen: Tensor) -> Tensor:
        """write(h^gen_t) ``(B, *params_shape)``: the patch w_t placed by the write filterbank."""
        N = self.config.write_size
        patch = self.write_patch(h_gen).view(len(h_gen), -1, N, N)
        return write(patch, *filterbank(self.write_window(h_gen), N, *self.spec.shape[1:]))

    def draw(self, captions: Tensor, x: Tensor | None = None, *,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The final canvas c_T ``(B, *params_shape)`` and the KL of each step ``(B, T)``: z_t from q(z_t | x, .)
        given images ``x``, else from the prior (``(B, 0)`` KLs)."""
        c = self.config
        h_lang, mask = self.caption_encoder(captions)
        keys = self.align.U(h_lang)
        B = len(captions)
        zeros = h_lang.new_zeros(B, c.hidden)
        gen, infer = (zeros, zeros), (zeros, zeros)  # (h, cell) of each LSTM
        canvas = h_lang.new_zeros(B, *self.likelihood.params_shape)
        x_unit = to_unit(x, self.spec) if x is not None else None
        kl = []
        for _ in range(c.steps):
            h_gen = gen[0]  # h^gen_{t-1}
            mean, log_var = prior = self.prior_params(h_gen)
            if x_unit is not None:
                r = self.glimpse(x_unit, x_unit - self.picture(canvas), h_gen)
                infer = self.infer_lstm(torch.cat([r, h_gen], 1), infer)
                mean, log_var = diagonal_gaussian(self.posterior(infer[0]))
                kl.append(normal_kl(mean, log_var, *prior).sum(-1))
            z = mean + (0.5 * log_var).exp() * randn(mean.shape, like=mean, generator=generator)
            s, _ = self.align(h_gen, h_lang, keys, mask)
            gen = self.gen_lstm(torch.cat([z, s], 1), gen)
            canvas = canvas + self.written(gen[0])
        return canvas.float(), torch.stack(kl, 1) if kl else canvas.new_zeros(B, 0)

    def terms(self, x: Tensor, captions: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """log p(x | c_T) ``(B,)`` and KL(q(z_t|.) || p(z_t|h^gen_{t-1})) ``(B, T)``, nats, one draw of z."""
        canvas, kl = self.draw(captions, x, generator=generator)
        return self.likelihood.log_prob(canvas, x), kl

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        rec, kl = self.terms(batch.x, self.batch_captions(batch), progress.generator)
        penalty, beta = weighted_kl(kl, beta=c.beta, free_bits=0.0, warmup_steps=c.kl_warmup_steps, step=progress.step)
        return Loss(-rec.mean() + penalty, {"conditional_elbo": (rec - kl.sum(1)).mean(), "reconstruction": rec.mean(),
                                            "kl": kl.sum(1).mean(), "beta": torch.tensor(beta)})

    @capability
    def conditional_elbo(self, x: Tensor, captions: Tensor) -> Tensor:
        """One-sample bound on log p(x | y) in nats, ``(B,)`` (eq. 9), for caption ids ``(B, L)`` or, on
        class-captioned data, class labels ``(B,)``."""
        if captions.dim() == 1:
            captions = self.batch_captions(Batch(x, y=captions))
        rec, kl = self.terms(x, captions)
        return rec - kl.sum(1)

    # --- generation -------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | int | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, caption: str | None = None) -> Tensor:
        """``n`` images ``(n, *spec.shape)`` of ``caption``, of the class captions of ``condition`` (one label
        or ``n``), or of the data's example (else class) captions in turn: the model has no p(y)."""
        captions = self.requested_captions(n, condition, caption, sampler)
        if captions is None:  # no p(y): the example captions in turn
            texts = self.figure_captions()
            captions = self.captions(texts)[torch.arange(n, device=self.device) % len(texts)]
        return self.sample_captioned(captions, generator=generator)

    @capability
    @inference
    def sample_captioned(self, captions: Tensor, *, generator: torch.Generator | None = None,
                         rerank: int = 1) -> Tensor:
        """Images ``(n, *spec.shape)`` of captions ``(n, L)`` (word ids), in the data's representation."""
        if rerank != 1:
            raise DgmError(f"alignDRAW has no reranker (rerank={rerank}): use rerank=1, or the dalle model")
        canvas, _ = self.draw(captions.to(self.device), generator=generator)
        return emit(self.likelihood, canvas, mean=self.config.sample_mean, generator=generator)
