"""Denoising diffusion probabilistic models: the Gaussian diffusion process and its exact bound.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239.
Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", arXiv:2102.09672.
Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502 (the samplers,
:mod:`dgm.models.samplers`).

The forward process adds Gaussian noise in ``T`` steps with variances ``beta_1 .. beta_T``::

    q(x_t | x_{t-1})    = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)                       (Ho eq. 2)
    q(x_t | x_0)        = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_s (1 - beta_s)   (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                                       (eq. 6, 7)
        mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t

The learned reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)) is trained
with the variational bound (eq. 5)::

    -log p(x_0) <= L_T + sum_{t > 1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                     (no parameters; ~0 for the usual schedules)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   (KLs between Gaussians)
    L_0     = -log p(x_0 | x_1)                               (the discretized Gaussian decoder, eq. 13)

or with its reweighting ``L_simple = E ||eps - eps_theta(x_t, t)||^2`` (eq. 14); with learned
variances, ``L_hybrid = L_simple + lambda L_vlb`` (Nichol & Dhariwal eq. 16). The code counts time
from 0: index ``t`` in ``0 .. T-1`` is the paper's ``t + 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, capability, rand, randint, randn, register
from dgm.models.refusals import refuse_partial_labels, refuse_variable_length
from dgm.models import samplers
from dgm.nn.distributions import normal_kl, normal_log_prob
from dgm.nn.unet import DenoisingMLP, UNet, max_levels
from dgm.settings import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Range


# --- noise schedules ------------------------------------------------------------------------------
LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02  # Ho et al.'s linear schedule for T = 1000 (sec. 4)
REFERENCE_TIMESTEPS = 1000  # the T those endpoints are for; other T rescale them by 1000/T (Nichol & Dhariwal)
MAX_BETA = 0.999  # betas are clipped here: a beta of 1 would erase x_{t-1} entirely (Nichol & Dhariwal sec. 3.2)
COSINE_OFFSET = 0.008  # s of the cosine schedule: beta_1 is not vanishingly small (Nichol & Dhariwal eq. 17)


def linear_betas(T: int, max_beta: float = MAX_BETA) -> Tensor:
    """Ho et al.'s linear schedule from 1e-4 to 0.02 for T = 1000, rescaled by 1000/T for other T as
    in Nichol & Dhariwal (so that abar_T stays ~4e-5), clipped at 0.999 for very short chains."""
    scale = REFERENCE_TIMESTEPS / T
    return torch.linspace(LINEAR_BETA_START * scale, LINEAR_BETA_END * scale, T, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(T: int, s: float = COSINE_OFFSET, max_beta: float = MAX_BETA) -> Tensor:
    """Nichol & Dhariwal eq. 17: abar_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2),
    beta_t = 1 - abar_t / abar_{t-1}, clipped at 0.999 to avoid the singularity at t = T."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


# --- the discretized decoder (per element; callers sum over dimensions) ----------------------------
BIN_RATIO_MARGIN = 1e-12  # Phi(a) / Phi(b) is clamped to 1 - this: a bin narrower than float precision stays finite
def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor, levels: int) -> Tensor:
    """log P(x) for x on the grid ``{-1, -1 + 2/(levels-1), ..., 1}`` of a Gaussian over the bins of
    half-width ``1/(levels-1)`` around each value, the outer bins extended to ±infinity (Ho eq. 13).

    Elementwise, nats. The probability of a bin is computed on the side of the mean where it is not
    a difference of two numbers near 1 (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``), so it stays
    accurate for bins far in a tail.
    """
    half = 1.0 / (levels - 1)
    inv_std = (-0.5 * logvar).exp()
    upper = torch.where(x >= 1 - half, torch.full_like(x, math.inf), (x + half - mean) * inv_std)
    lower = torch.where(x <= -1 + half, torch.full_like(x, -math.inf), (x - half - mean) * inv_std)
    flip = lower > 0  # the whole bin above the mean: use the upper tail
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)  # P = Phi(b) - Phi(a)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-(log_a - log_b).exp().clamp(max=1 - BIN_RATIO_MARGIN))


# --- the process ----------------------------------------------------------------------------------
def gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped to broadcast against ``like`` ``(B, ...)``, in ``like``'s dtype."""
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion(nn.Module):
    """The forward process of a beta schedule and the Gaussian algebra around it.

    Knows nothing of networks: methods take the network's raw ``output`` and say how to read it
    (``prediction``: what the mean head predicts, ``variance``: fixed or learned). Buffers are kept in
    float64 and cast at use; they are not saved in checkpoints (the config rebuilds them).

    Args:
        betas: ``(T,)`` noise variances.
        prediction: the mean head predicts the noise ``epsilon`` (Ho), the clean ``x0``, or
            ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022, arXiv:2202.00512).
        variance: ``fixed-small`` (beta~_t, the true posterior's variance for a point mass x_0),
            ``fixed-large`` (beta_t; Ho et al. found both work), or ``learned``: the network's second
            half of channels ``v`` interpolates the log-variance between the two (Nichol eq. 15).
        clip: clip the predicted ``x0`` to [-1, 1] by default (data in the signed representation), as
            the reference samplers and evaluators do (``clip_denoised=True``); the methods that
            read ``x0`` take ``clip=`` to say otherwise (the training loss's L_vlb does not clip).
    """

    def __init__(self, betas: Tensor, *, prediction: Literal["epsilon", "x0", "v"] = "epsilon",
                 variance: Literal["fixed-small", "fixed-large", "learned"] = "fixed-small",
                 clip: bool = False) -> None:
        super().__init__()
        self.prediction, self.variance, self.clip = prediction, variance, clip
        betas = betas.double()
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "log_betas": betas.log(),
            "alphas_cumprod": alphas_cumprod,
            "posterior_variance": posterior_variance,
            # beta~_1 = 0: the log is clipped to beta~_2 as in Ho et al.'s code (only t = 1 uses it)
            "posterior_log_variance": torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
            # fixed-large: beta_t, with beta_1 replaced by beta~_2 as in Ho's code (L_0 needs a small variance)
            "large_log_variance": torch.cat([posterior_variance[1:2], betas[1:]]).log(),
            "posterior_mean_coef_x0": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef_xt": (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    # -- forward process ---------------------------------------------------------------------------
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_t | x_0) (eq. 4)."""
        abar = gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0, (1 - abar).expand_as(x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw of q(x_t | x_0)."""
        abar = gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = gather(self.posterior_mean_coef_x0, t, xt) * x0 + gather(self.posterior_mean_coef_xt, t, xt) * xt
        return mean, gather(self.posterior_log_variance, t, xt).expand_as(xt)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)), nats, ``(B,)``."""
        t = torch.full((len(x0),), self.num_timesteps - 1, device=x0.device)
        mean, var = self.q_mean_variance(x0, t)
        return normal_kl(mean, var.log(), torch.zeros_like(mean), torch.zeros_like(mean)).flatten(1).sum(1)

    # -- reading the network -----------------------------------------------------------------------
    def output_channels(self, channels: int) -> int:
        """Channels (or features) of the network's output for data with ``channels``."""
        return 2 * channels if self.variance == "learned" else channels

    def split_output(self, output: Tensor) -> tuple[Tensor, Tensor | None]:
        """The mean head and (learned variances) the variance head of a network output."""
        return output.chunk(2, dim=1) if self.variance == "learned" else (output, None)

    def predict_x0_eps(self, mean_head: Tensor, xt: Tensor, t: Tensor, *,
                       clip: bool | None = None) -> tuple[Tensor, Tensor]:
        """(x0, eps) implied by the mean head, with x0 clipped to [-1, 1] when ``clip`` (``None``: the
        process's default); eps is then recomputed from the clipped x0 so that the two stay consistent."""
        abar = gather(self.alphas_cumprod, t, xt)
        if self.prediction == "epsilon":
            x0 = (xt - (1 - abar).sqrt() * mean_head) / abar.sqrt()
        elif self.prediction == "x0":
            x0 = mean_head
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1 - abar) v
            x0 = abar.sqrt() * xt - (1 - abar).sqrt() * mean_head
        if self.clip if clip is None else clip:
            x0 = x0.clamp(-1, 1)
        elif self.prediction == "epsilon":
            return x0, mean_head
        return x0, (xt - abar.sqrt() * x0) / (1 - abar).sqrt()

    def model_log_variance(self, variance_head: Tensor | None, xt: Tensor, t: Tensor) -> Tensor:
        """log Sigma_theta(x_t, t): fixed, or learned as ``frac log beta_t + (1 - frac) log beta~_t``
        with ``frac = (v + 1) / 2`` (Nichol eq. 15)."""
        small = gather(self.posterior_log_variance, t, xt)
        if self.variance == "fixed-small":
            return small.expand_as(xt)
        if self.variance == "fixed-large":
            return gather(self.large_log_variance, t, xt).expand_as(xt)
        large = gather(self.log_betas, t, xt)  # the learned interpolation reaches beta_1 itself (Nichol's code)
        frac = (variance_head + 1) / 2
        return frac * large + (1 - frac) * small

    def p_mean_variance(self, output: Tensor, xt: Tensor, t: Tensor, *,
                        clip: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t), and the predicted x0 (clipped when ``clip``;
        ``None``: the process's default): the mean is the posterior mean mu~(x0_hat, x_t) (eq. 11 for
        epsilon prediction without clipping)."""
        mean_head, variance_head = self.split_output(output)
        x0, _ = self.predict_x0_eps(mean_head, xt, t, clip=clip)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, self.model_log_variance(variance_head, xt, t), x0

    # -- the bound ---------------------------------------------------------------------------------
    def vlb_term(self, output: Tensor, x0: Tensor, xt: Tensor, t: Tensor, levels: int | None, *,
                 clip: bool | None = None) -> Tensor:
        """L_{t-1} for every example, nats ``(B,)``: the KL of eq. 5 where ``t > 0``, the decoder's
        -log p(x_0 | x_1) where ``t = 0`` (discretized over ``levels``; a density when ``None``).
        ``clip``: whether p(x_{t-1} | x_t) is built from the clipped x0 (``None``: the process's default)."""
        mean, logvar, _ = self.p_mean_variance(output, xt, t, clip=clip)
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        kl = normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).sum(1)
        log_p = (discretized_gaussian_log_prob(x0, mean, logvar, levels) if levels
                 else normal_log_prob(x0, mean, logvar)).flatten(1).sum(1)
        return torch.where(t == 0, -log_p, kl)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the mean head regresses onto in L_simple."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        abar = gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0


# --- the model ------------------------------------------------------------------------------------
SMALL_IMAGE_SIDE = 16  # images with a side below this get the shallower default U-Net
DEFAULT_CHANNEL_MULTS = (1, 2, 2)  # Ho et al.'s CIFAR-10 layout without its 4th level: 28x28 runs at 28, 14, 7
SMALL_IMAGE_CHANNEL_MULTS = (1, 2)  # 8x8 digits: 8, 4 (a third level would leave 2x2)


def default_channel_mults(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The U-Net levels used when ``model.channel_mults`` is not set, by the image size ``(C, H, W)``."""
    return DEFAULT_CHANNEL_MULTS if min(shape[1:]) >= SMALL_IMAGE_SIDE else SMALL_IMAGE_CHANNEL_MULTS


@dataclass
class AncestralOptions:
    """Options of the ancestral sampler (``dgm sample RUN --sampler ddpm``)."""

    guidance: NonNegativeFloat | None = field(default=None, metadata={
        "help": "classifier-free guidance scale s (with --class): eps_u + s (eps_c - eps_u); default model.guidance"})
    resample: PositiveInt | None = field(default=None, metadata={
        "help": "restoration: RePaint's repetitions of each step (default 5)"})


@dataclass
class DDIMOptions(AncestralOptions):
    """Options of DDIM (``dgm sample RUN --sampler ddim``)."""

    steps: PositiveInt | None = field(default=None, metadata={
        "help": "denoising steps, evenly spaced (at most T); default model.sample_steps"})
    eta: NonNegativeFloat | None = field(default=None, metadata={
        "help": "noise of each step: 0 deterministic, 1 the DDPM posterior variance; default model.eta"})


#: why a DDPM refuses token sequences and point sets
PADDING_REASON = ("it noises and denoises every position of a fixed-size example, so it would model the "
                  "padding as data (and tokens are not continuous)")


@dataclass
class DDPMConfig:
    """Settings of :class:`DDPM` (``--set model.KEY=VALUE``)."""

    timesteps: Annotated[int, Range(2)] = 1000  # T, steps of the forward process
    schedule: Literal["linear", "cosine"] = "linear"  # beta schedule (Ho et al.; Nichol & Dhariwal eq. 17)
    prediction: Literal["epsilon", "x0", "v"] = "epsilon"  # what the network predicts
    variance: Literal["fixed-small", "fixed-large", "learned"] = "fixed-small"  # Sigma_theta of p(x_{t-1}|x_t)
    loss: Literal["simple", "vlb", "hybrid"] = "simple"  # L_simple (eq. 14), the bound (eq. 5), or L_simple + lambda L_vlb
    hybrid_weight: NonNegativeFloat = 0.001  # lambda of the hybrid loss (Nichol & Dhariwal sec. 3.1)
    network: Literal["auto", "unet", "mlp"] = "auto"  # auto: a U-Net for images, an MLP for vectors
    width: PositiveInt = 32  # U-Net channels at full resolution
    channel_mults: tuple[PositiveInt, ...] | None = None  # U-Net channels per level, in units of width; None: by image size (default_channel_mults)
    num_res_blocks: PositiveInt = 1  # U-Net residual blocks per level
    attention_below: NonNegativeInt = 8  # U-Net self-attention at levels whose side is at most this
    dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0  # U-Net dropout in the residual blocks (Ho et al.: 0.1 on CIFAR-10)
    hidden: tuple[PositiveInt, ...] = (256, 256, 256)  # MLP hidden widths (vectors)
    conditional: bool = False  # class-conditional (labels of the data), trained for classifier-free guidance
    class_dropout: Fraction = 0.1  # share of labels replaced by the null class in training (Ho & Salimans 2022)
    guidance: NonNegativeFloat = 1.0  # guidance scale s: eps_u + s (eps_c - eps_u); 1 is the conditional model, 0 unconditional
    sampler: Literal["ddpm", "ddim"] = "ddpm"  # ancestral sampling over all T steps, or DDIM
    sample_steps: PositiveInt = 50  # DDIM: number of denoising steps (evenly spaced)
    preview_steps: PositiveInt = 50  # DDIM steps of the pictures drawn during training and in the report
    eta: NonNegativeFloat = 0.0  # DDIM: 0 deterministic, 1 the DDPM posterior variance
    bound_timesteps: NonNegativeInt = 0  # terms of the bound evaluated per example: 0 all T (exact sum), k: an unbiased k-term estimate
    bound_clip: bool = True  # the evaluated bound clips the predicted x0 to [-1, 1] as the reference evaluators do (clip_denoised=True); false: unclipped


@register
class DDPM(GenerativeModel):
    """Denoising diffusion probabilistic model: a network wrapped by :class:`GaussianDiffusion`.

    ``elbo(x)`` is the variational bound in nats, so ``dgm eval`` reports a test NLL bound in
    bits/dim for image data (the discretized decoder makes it a bound on the 8-bit pmf).

    Example:
        >>> data = dgm.data.load("digits", representation="signed")
        >>> ddpm = dgm.create("ddpm", data.spec, timesteps=100, channel_mults=(1, 2))
        >>> ddpm.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "ddpm"
    Config = DDPMConfig
    default_ema = 0.999  # samples from EMA weights unless train.ema says otherwise (Ho et al.: 0.9999 over 800k steps)
    description = "denoising diffusion (DDPM/DDIM samplers, exact VLB in bits/dim, classifier-free guidance)"
    samplers = (Sampler("ddpm", "ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2)", AncestralOptions),
                Sampler("ddim", "DDIM over evenly spaced steps (Song et al. 2021, eq. 12)", DDIMOptions))

    def __init__(self, config: DDPMConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_variable_length(self.name, spec, PADDING_REASON)
        c = config
        expected = self.default_representation(config, spec)
        if spec.representation != expected:
            raise DgmError(f"the diffusion model works on {expected!r} data (images in [-1, 1]), got "
                           f"{spec.representation!r}: drop --set data.representation")
        if c.variance == "learned" and c.loss == "simple":
            raise DgmError("learned variances are trained by the bound: use --set model.loss=hybrid (or vlb)")
        if c.conditional and not spec.num_classes:
            raise DgmError(f"model.conditional needs labelled data, and {spec.name!r} has no labels")
        self.process = GaussianDiffusion(SCHEDULES[c.schedule](c.timesteps), prediction=c.prediction,
                                         variance=c.variance, clip=spec.levels is not None)
        classes = spec.num_classes if c.conditional else None
        network = c.network if c.network != "auto" else ("unet" if spec.is_image else "mlp")
        if network == "unet":
            if not spec.is_image:
                raise DgmError(f"network=unet needs image data, but {spec.name!r} has shape {spec.shape}: "
                               f"use --set model.network=mlp")
            mults = c.channel_mults or default_channel_mults(spec.shape)
            levels = max_levels(*spec.shape[1:])
            if len(mults) > levels:
                side = "x".join(map(str, spec.shape[1:]))
                raise DgmError(f"a U-Net with {len(mults)} levels halves the image {len(mults) - 1} times, which {side} "
                               f"does not allow (its sides would have to be multiples of {2 ** (len(mults) - 1)}): "
                               f"{side} takes at most {levels} level{'s' * (levels > 1)}, e.g. "
                               f"--set model.channel_mults={','.join(map(str, mults[:levels]))}")
            self.network = UNet(spec.shape, self.process.output_channels(spec.shape[0]), width=c.width,
                                channel_mults=mults, num_res_blocks=c.num_res_blocks,
                                attention_below=c.attention_below, dropout=c.dropout, num_classes=classes)
        else:
            out_features = self.process.output_channels(spec.shape[0]) * math.prod(spec.shape[1:])
            self.network = FlatDenoiser(spec.shape, out_features, c.hidden, classes)

    @classmethod
    def migrate_config(cls, values: dict[str, Any], spec: DataSpec, version: str) -> dict[str, Any]:
        """dgm 0.1 stored channel_mults (1, 2, 2) for every image size and used only the first two
        levels on sides below 16; 0.2 honours or refuses the levels it is given. An 8x8 run of 0.1
        keeps the two levels its weights have."""
        mults = values.get("channel_mults")
        if version.startswith("0.1.") and mults and min(spec.shape[1:]) < 16 and len(mults) > 2:
            return {**values, "channel_mults": list(mults[:2])}
        return values

    @classmethod
    def default_representation(cls, config: DDPMConfig, spec: DataSpec) -> str:
        refuse_variable_length(cls.name, spec, PADDING_REASON)
        return "continuous" if spec.levels is None else "signed"

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    @property
    def default_sampler(self) -> str:
        return self.config.sampler

    @property
    def null_class(self) -> int:
        return self.spec.num_classes

    # -- training ----------------------------------------------------------------------------------
    def denoise(self, xt: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's raw output at (x_t, t, class), in float32 (bf16 autocast runs the network)."""
        out = self.network(xt, t, y)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c, x0, g = self.config, batch.x, progress.generator
        y = None
        if c.conditional:  # drop labels to the null class so one network is both models (CFG)
            refuse_partial_labels(self.name, batch, "with conditional=true")
            drop = rand((len(x0),), like=x0, generator=g) < c.class_dropout
            y = torch.where(drop, torch.full_like(batch.y, self.null_class), batch.y)
        t = randint(self.process.num_timesteps, (len(x0),), like=x0, generator=g)
        noise = randn(x0.shape, like=x0, generator=g)
        xt = self.process.q_sample(x0, t, noise)
        output = self.denoise(xt, t, y)
        mean_head, variance_head = self.process.split_output(output)
        mse = (mean_head - self.process.training_target(x0, noise, t)).pow(2).flatten(1).mean(1)  # (B,)
        metrics = {"mse": mse.mean()}
        if c.loss == "simple":
            return Loss(mse.mean(), metrics)
        # the bound's terms, an unbiased estimate of sum_t L_t / D: T times the term at a uniform t.
        # Hybrid: the bound trains only the variances (stop-gradient on the mean, Nichol sec. 3.1)
        if c.loss == "hybrid":
            output = torch.cat([mean_head.detach(), variance_head], 1) if variance_head is not None else output.detach()
        # unclipped, as in improved-diffusion's training loss (clip_denoised=False): a clamp has no
        # gradient outside [-1, 1], so a clipped L_vlb (loss=vlb) would not train the mean there
        vlb = (self.process.vlb_term(output, x0, xt, t, self.spec.levels, clip=False)
               * self.process.num_timesteps / self.spec.dim)
        metrics["vlb_per_dim"] = vlb.mean()
        if c.loss == "vlb":
            return Loss(vlb.mean(), metrics)
        return Loss(mse.mean() + c.hybrid_weight * vlb.mean(), metrics)

    # -- the bound ---------------------------------------------------------------------------------
    def elbo(self, x: Tensor) -> Tensor:
        """The variational bound L_T + sum_t L_{t-1} + L_0 on log p(x), nats ``(B,)``: the exact sum over
        all T terms (one draw of x_t per term, as in Ho et al.), or, with ``bound_timesteps = k``,
        T/k times the sum over k stratified uniform timesteps, an unbiased estimate of it. A
        class-conditional model is scored as its unconditional (null-class) self, a bound on p(x).
        On images, p(x_{t-1} | x_t) is built from the predicted x0 clipped to [-1, 1] unless
        ``bound_clip`` is false (:attr:`bound_clipped`)."""
        y = torch.full((len(x),), self.null_class, device=x.device) if self.config.conditional else None
        return self.variational_bound(x, y)

    @capability
    def conditional_elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """The bound of :meth:`elbo` on log p(x | y), nats ``(B,)``, of a class-conditional model (its
        network told the class ``y`` instead of the null class); ``dgm classify`` compares the classes
        under one draw of timesteps and noise."""
        return self.variational_bound(x, y)

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.conditional:
            return {}
        return {"conditional_elbo": "the model is unconditional (train with --set model.conditional=true)"}

    def variational_bound(self, x: Tensor, y: Tensor | None) -> Tensor:
        """The bound of :meth:`elbo` with the network told the classes ``y`` (``None``: unconditional)."""
        T, k = self.process.num_timesteps, self.config.bound_timesteps
        if k and k < T:  # one uniform draw inside each of k equal strata of {0 .. T-1}
            edges = torch.linspace(0, T, k + 1, device=x.device)
            steps = [(edges[i] + torch.rand(len(x), device=x.device) * (edges[i + 1] - edges[i])).long().clamp(max=T - 1)
                     for i in range(k)]
            weight = T / k
        else:
            steps = [torch.full((len(x),), t, device=x.device) for t in range(T)]
            weight = 1.0
        total = self.process.prior_kl(x)
        for t in steps:
            xt = self.process.q_sample(x, t, torch.randn_like(x))
            total = total + weight * self.process.vlb_term(self.denoise(xt, t, y), x, xt, t, self.spec.levels,
                                                           clip=self.bound_clipped)
        return -total

    @property
    def bound_clipped(self) -> bool:
        """Whether the evaluated bound clips the predicted x0: images (bounded data) unless ``bound_clip`` is false."""
        return self.process.clip and self.config.bound_clip

    @property
    def elbo_description(self) -> str:
        T, k = self.process.num_timesteps, self.config.bound_timesteps
        terms = f"all {T} terms" if not k or k >= T else f"unbiased {k}-of-{T}-term estimate"
        if self.process.clip:  # only bounded data has a range to clip to
            terms += ", clipped x0" if self.bound_clipped else ", unclipped"
        return f"diffusion VLB, {terms}"

    # -- sampling ----------------------------------------------------------------------------------
    def guided(self, condition: Tensor | None, guidance: float):
        """The denoiser the samplers call, ``(x_t, t) -> output``, with classifier-free guidance:
        ``eps_u + s (eps_c - eps_u)`` on the mean head (Ho & Salimans 2022, eq. 6 with w = s - 1)."""
        if condition is None:
            y = torch.full((1,), self.null_class, device=self.device) if self.config.conditional else None
            return lambda xt, t: self.denoise(xt, t, None if y is None else y.expand(len(xt)))
        if guidance == 1.0:
            return lambda xt, t: self.denoise(xt, t, condition)

        def denoise(xt: Tensor, t: Tensor) -> Tensor:
            null = torch.full_like(condition, self.null_class)
            out = self.denoise(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([condition, null]))
            (cond_mean, cond_var), (uncond_mean, _) = [self.process.split_output(o) for o in out.chunk(2)]
            mean = uncond_mean + guidance * (cond_mean - uncond_mean)
            return mean if cond_var is None else torch.cat([mean, cond_var], 1)

        return denoise

    def check_condition(self, condition: Tensor | None, n: int, guidance: float) -> Tensor | None:
        if condition is None:
            if guidance != 1.0 and not self.config.conditional:
                raise DgmError("guidance needs a class-conditional model: train with --set model.conditional=true")
            return None
        if not self.config.conditional:
            raise DgmError("this diffusion model is unconditional: train with --set model.conditional=true "
                           "to sample classes")
        condition = torch.as_tensor(condition, device=self.device).long().reshape(-1).expand(n)
        if condition.min() < 0 or condition.max() >= self.null_class:
            raise DgmError(f"class labels must be in 0..{self.null_class - 1}, got {condition.unique().tolist()}")
        return condition

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               guidance: float | None = None, progress: bool = False) -> Tensor:
        """``n`` samples; ``sampler``, ``steps``, ``eta`` and ``guidance`` default to the config's."""
        c = self.config
        sampler = sampler or c.sampler
        if sampler == "ddpm" and steps not in (None, self.process.num_timesteps):
            raise DgmError(f"the DDPM sampler runs all {self.process.num_timesteps} steps: for {steps} steps use "
                           "--sampler ddim (--eta 1 is the respaced ancestral sampler)")
        guidance = c.guidance if guidance is None else guidance
        denoise = self.guided(self.check_condition(condition, n, guidance), guidance)
        x = torch.randn((n, *self.spec.shape), generator=generator, device=self.device)
        steps = steps or min(c.sample_steps, self.process.num_timesteps)  # a default never exceeds T
        return samplers.run(self.process, denoise, x, sampler, steps=steps,
                            eta=c.eta if eta is None else eta, generator=generator, progress=progress)

    def preview_sample(self, n: int, *, generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """DDIM with ``preview_steps`` steps: epoch-end grids and the report cost tens of network
        calls per image, not all T (a 1000-step chain of 64 images is minutes on a CPU)."""
        return self.sample(n, generator=generator, sampler="ddim", progress=progress,
                           steps=min(self.config.preview_steps, self.process.num_timesteps))

    def restore(self, known: samplers.KnownView, *, generator: torch.Generator | None = None,
                sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                resample: int | None = None, progress: bool = False) -> Tensor:
        """Restoration by the unconditional model: the reverse chain with the known view imposed after
        every step and RePaint's ``resample`` repetitions (:func:`dgm.models.samplers.run`). By
        default DDIM with ``sample_steps`` steps and eta = 1 (a respaced ancestral chain: RePaint
        repeats every step, so all T steps would cost ``resample`` x T network calls)."""
        c = self.config
        x = torch.randn((len(known.y), *self.spec.shape), generator=generator, device=self.device)
        return samplers.run(self.process, self.guided(None, 1.0), x, sampler or "ddim",
                            steps=steps or min(c.sample_steps, self.process.num_timesteps),
                            eta=1.0 if eta is None else eta,
                            generator=generator, progress=progress, known=known, resample=resample or 5)


class FlatDenoiser(nn.Module):
    """:class:`DenoisingMLP` on flattened examples of any shape."""

    def __init__(self, shape: tuple[int, ...], out_features: int, hidden: tuple[int, ...], num_classes: int | None):
        super().__init__()
        self.shape = shape
        self.mlp = DenoisingMLP(math.prod(shape), out_features, hidden=hidden, num_classes=num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mlp(x.flatten(1), t, y).reshape(len(x), -1, *self.shape[1:])
