"""Convolutional DRAW: a recurrent VAE on feature maps, and conceptual compression with it.

Gregor, Besse, Rezende, Danihelka & Wierstra 2016, "Towards Conceptual Compression", NeurIPS,
arXiv:1604.08772 (sec. 2). DRAW (Gregor et al. 2015, arXiv:1502.04623) with convolutional LSTMs for
its encoder and decoder and no attention: each of T steps has a latent z_t of shape (C_z, h, w), a
grid at the encoder's resolution. With r the canvas (the likelihood's parameters) and h^e, h^d the
encoder's and decoder's states::

    eps_t   = x - mu(r_{t-1})                                   the error of the canvas's picture
    h^e_t   = ConvLSTM^e([D(x, eps_t), h^d_{t-1}], h^e_{t-1})   D: strided convolutions to (h, w)
    q(z_t | .) = N(mu^q(h^e_t), sigma^q(h^e_t))                  z_t ~ q during training
    p(z_t | h^d_{t-1}) = N(mu^p(h^d_{t-1}), sigma^p(h^d_{t-1}))  the learned prior of each step
    h^d_t   = ConvLSTM^d(z_t, h^d_{t-1})
    r_t     = r_{t-1} + U(h^d_t)                                 U: transposed convolutions to (H, W)
    x ~ p(x | r_T)

and the bound (the paper's loss, the ELBO)::

    log p(x) >= E_q[log p(x | r_T)] - sum_t KL(q(z_t | .) || p(z_t | h^d_{t-1}))

each KL in closed form (``normal_kl``). **Conceptual compression** (sec. 4): the first steps carry the
global content of an image and later ones its details, so an image is stored by the latents of its
first k steps only, at the rate sum_{t<=k} KL_t (bits-back coding of z_t under the learned prior), and
decoded with the prior's mean for the steps t > k. :meth:`ConvDRAW.conceptual_reconstructions` gives
those pictures, :meth:`ConvDRAW.compression_rates` the rate of each k; both follow one deterministic
pass in which the stored latents are the posterior means (so keeping all T steps is
:meth:`ConvDRAW.reconstruct`).

Left out: the paper's multi-layer (stacked) convolutional LSTMs and its decoder input of the canvas;
the likelihoods are the repository's shared ones (Bernoulli, discretised logistic, Gaussian).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, to_unit
from dgm.errors import DgmError
from dgm.models.align_draw import AlignDRAW
from dgm.models.base import GenerativeModel, Loss, Progress, capability, randn, register
from dgm.models.refusals import refuse_all_but_images
from dgm.models.vae import PADDING_REASON, VAE, emit, weighted_kl
from dgm.nn import LIKELIHOODS, conv_downsamplings, diagonal_gaussian, make_likelihood, normal_kl
from dgm.nn.conv_lstm import ConvLSTMCell
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt


@dataclass
class ConvDRAWConfig:
    """Settings of :class:`ConvDRAW` (``--set model.KEY=VALUE``)."""

    steps: PositiveInt = 8  # T, canvas updates (and latents z_1..z_T)
    latent_channels: PositiveInt = 4  # C_z, channels of each z_t on the latent grid
    hidden: PositiveInt = 32  # channels of each convolutional LSTM's state
    width: PositiveInt = 32  # channels of the strided convolutions D (read) and U (write)
    likelihood: Literal["bernoulli", "logistic", "gaussian"] = "bernoulli"  # p(x | r_T)
    beta: NonNegativeFloat = 1.0  # weight of the KL terms in training (1: the bound)
    kl_warmup_steps: NonNegativeInt = 0  # ramp beta linearly from 0 over this many steps (0: no warm-up)
    sample_mean: bool = True  # show E[x | r_T]; False draws x ~ p(x | r_T)


class Read(nn.Module):
    """D(x, eps): ``(B, 2 C, H, W)`` -> ``(B, width, H / 2^n, W / 2^n)``, n strided convolutions (the
    first straight from the pixels: no convolution runs at full resolution)."""

    def __init__(self, in_channels: int, width: int, n: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1)]
        for _ in range(n - 1):
            layers += [nn.SiLU(), nn.Conv2d(width, width, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Write(nn.Module):
    """U(h^d): ``(B, hidden, h, w)`` -> the canvas increment ``(B, P, H, W)``, n transposed convolutions
    (the last straight to the likelihood's parameters)."""

    def __init__(self, hidden: int, width: int, out_channels: int, n: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(hidden, width, 3, padding=1)]
        for i in range(n):
            layers += [nn.SiLU(), nn.ConvTranspose2d(width, out_channels if i == n - 1 else width, 4, stride=2,
                                                     padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


@dataclass
class Pass:
    """One run of the T steps: the final canvas r_T ``(B, *params_shape)``, the KL of each step
    ``(B, T)`` in nats (``(B, 0)`` without images), and the latents used ``(B, T, C_z, h, w)``; with
    ``keep_params`` also the (mean, log-variance) of q and of p at each step."""

    canvas: Tensor
    kl: Tensor
    z: Tensor
    posteriors: list[tuple[Tensor, Tensor]]
    priors: list[tuple[Tensor, Tensor]]


@register
class ConvDRAW(GenerativeModel):
    """Convolutional DRAW: T steps of convolutional LSTMs writing to a canvas (module docstring).

    Example:
        >>> data = dgm.data.load("fashion-mnist", representation="binary-dynamic")
        >>> model = dgm.create("conv-draw", data.spec, steps=8)
        >>> model.conceptual_reconstructions(data.tensors(4).x, keep=2)   # (4, 1, 28, 28)
    """

    name = "conv-draw"
    Config = ConvDRAWConfig
    description = ("convolutional DRAW: a recurrent VAE of convolutional LSTMs with a learned prior per step; "
                   "conceptual compression by keeping the first k steps' latents (Gregor et al. 2016)")

    # the canvas's picture on [0, 1]: the same reading of a canvas of likelihood parameters as alignDRAW's
    picture = AlignDRAW.picture
    likelihood_kind = VAE.likelihood_kind  # discrete or density, as the likelihood says

    @classmethod
    def refuse(cls, spec: DataSpec) -> None:
        refuse_all_but_images(cls.name, spec, PADDING_REASON, "draws images on a convolutional canvas")

    @classmethod
    def default_representation(cls, config: ConvDRAWConfig, spec: DataSpec) -> str:
        cls.refuse(spec)
        return LIKELIHOODS[config.likelihood].default_representation

    def __init__(self, config: ConvDRAWConfig, spec: DataSpec) -> None:
        self.refuse(spec)
        super().__init__(config, spec)
        c = config
        C, H, W = spec.shape
        n = conv_downsamplings(H, W)
        self.grid = (c.latent_channels, H >> n, W >> n)  # (C_z, h, w) of each z_t
        self.likelihood = make_likelihood(c.likelihood, spec)
        self.read = Read(2 * C, c.width, n)
        self.encoder = ConvLSTMCell(c.width + c.hidden, c.hidden)
        self.decoder = ConvLSTMCell(c.latent_channels, c.hidden)
        self.posterior = nn.Conv2d(c.hidden, 2 * c.latent_channels, 3, padding=1)  # mu^q, log sigma^q^2
        self.prior = nn.Conv2d(c.hidden, 2 * c.latent_channels, 3, padding=1)  # mu^p, log sigma^p^2
        self.write = Write(c.hidden, c.width, self.likelihood.params_shape[0], n)

    @staticmethod
    def gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(B, C_z, h, w)`` each from a conv's ``(B, 2 C_z, h, w)``."""
        mean, log_var = diagonal_gaussian(params.movedim(1, -1))  # channels last for the split
        return mean.movedim(-1, 1), log_var.movedim(-1, 1)

    # --- one run of the T steps -------------------------------------------------------------------
    def run(self, x: Tensor | None, *, keep: int | None = None, z: Tensor | None = None, n: int | None = None,
            stochastic: bool = True, generator: torch.Generator | None = None, keep_params: bool = False) -> Pass:
        """The T steps. With images ``x``, z_t comes from q for the first ``keep`` steps (all: ``None``)
        and from the prior after them; given latents ``z`` ``(B, T, C_z, h, w)``, z_t = z[:, t]; else
        (``n`` examples) from the prior. ``stochastic`` draws z_t; otherwise it takes the distribution's mean."""
        c = self.config
        T = c.steps
        keep = T if keep is None else keep
        B = len(x) if x is not None else len(z) if z is not None else n
        ref = next(self.parameters())
        h_dec = ref.new_zeros(B, c.hidden, *self.grid[1:])
        dec_state = enc_state = None
        canvas = ref.new_zeros(B, *self.likelihood.params_shape)
        x_unit = to_unit(x, self.spec).to(ref.dtype) if x is not None else None
        kls, zs, posteriors, priors = [], [], [], []
        for t in range(T):
            prior = self.gaussian(self.prior(h_dec))  # p(z_t | h^d_{t-1})
            mean, log_var = prior
            if x_unit is not None and t < keep:
                error = x_unit - self.picture(canvas)  # eps_t
                enc_state = self.encoder(torch.cat([self.read(torch.cat([x_unit, error], 1)), h_dec], 1), enc_state)
                mean, log_var = posterior = self.gaussian(self.posterior(enc_state[0]))
                kls.append(normal_kl(*posterior, *prior).flatten(1).sum(1))
                if keep_params:
                    posteriors.append(posterior)
                    priors.append(prior)
            if z is not None:
                z_t = z[:, t]
            elif stochastic:
                z_t = mean + (0.5 * log_var).exp() * randn(mean.shape, like=mean, generator=generator)
            else:
                z_t = mean
            zs.append(z_t)
            dec_state = self.decoder(z_t, dec_state)
            h_dec = dec_state[0]
            canvas = canvas + self.write(h_dec)  # r_t = r_{t-1} + U(h^d_t)
        kl = torch.stack(kls, 1) if kls else canvas.new_zeros(B, 0)
        return Pass(canvas.float(), kl, torch.stack(zs, 1), posteriors, priors)

    # --- training and bounds ----------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c = self.config
        out = self.run(batch.x, generator=progress.generator)
        rec = self.likelihood.log_prob(out.canvas, batch.x)  # (B,)
        penalty, beta = weighted_kl(out.kl, beta=c.beta, free_bits=0.0, warmup_steps=c.kl_warmup_steps,
                                    step=progress.step)
        kl = out.kl.sum(1)
        return Loss(-rec.mean() + penalty, {"elbo": (rec - kl).mean(), "reconstruction": rec.mean(),
                                            "kl": kl.mean(), "beta": torch.tensor(beta)})

    def elbo(self, x: Tensor) -> Tensor:
        """One-sample bound on log p(x) in nats, ``(B,)``: log p(x | r_T) - sum_t KL_t."""
        out = self.run(x)
        return self.likelihood.log_prob(out.canvas, x) - out.kl.sum(1)

    # --- codes and conceptual compression ---------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """The posterior means of z_1..z_T along the deterministic pass, flattened ``(B, T C_z h w)``."""
        return self.run(x, stochastic=False).z.flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """E[x | r_T] ``(B, *spec.shape)`` for latents ``z`` ``(B, T C_z h w)`` (as :meth:`encode` gives)."""
        out = self.run(None, z=z.view(len(z), self.config.steps, *self.grid))
        return self.likelihood.mean(out.canvas)

    def step_kl(self, x: Tensor) -> Tensor:
        """KL(q(z_t | .) || p(z_t | h^d_{t-1})) of each step along the deterministic pass, nats, ``(B, T)``."""
        return self.run(x, stochastic=False).kl

    @capability
    def conceptual_reconstructions(self, x: Tensor, keep: int) -> Tensor:
        """E[x | r_T] ``(B, *spec.shape)`` from the posterior means of the first ``keep`` steps and the
        prior's means after them (sec. 4); ``keep = steps`` is :meth:`reconstruct`."""
        if not 0 <= keep <= self.config.steps:
            raise DgmError(f"keep must be in 0..{self.config.steps} (the model's steps), got {keep}")
        return self.likelihood.mean(self.run(x, keep=keep, stochastic=False).canvas)

    @capability
    def compression_rates(self, x: Tensor) -> Tensor:
        """The rate of keeping the first k steps, k = 1..T: sum_{t<=k} KL_t / ln 2, bits, ``(B, T)``."""
        return self.step_kl(x).cumsum(1) / math.log(2)

    @capability
    def code_bits(self, x: Tensor) -> Tensor:
        """The rate of all T steps' latents (bits-back coding under the learned priors), bits, ``(B,)``."""
        return self.compression_rates(x)[:, -1]

    # --- generation -------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        if condition is not None:
            raise DgmError("convolutional DRAW is unconditional: drop the condition")
        out = self.run(None, n=n, generator=generator)  # z_t ~ p(z_t | h^d_{t-1}), ancestral
        return emit(self.likelihood, out.canvas, mean=self.config.sample_mean, generator=generator)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        """Conceptual compression of the model's own samples (the report has no data): row k keeps the
        first k steps' latents and takes the prior's means after them."""
        n, T = 8, self.config.steps
        x = self.sample(n, generator=generator)
        rows = [self.conceptual_reconstructions(x, k) for k in range(1, T + 1)]
        rates = self.compression_rates(x).mean(0)
        caption = (f"Conceptual compression of {n} of the model's own samples: row k (1..{T}) keeps the posterior "
                   f"means of the first k steps and decodes the rest from the prior's means; mean rates in bits: "
                   + ", ".join(f"{r:.1f}" for r in rates.tolist()))
        return [("conceptual compression", torch.cat(rows), n, caption)]
