"""Samplers of the Gaussian diffusion process: stateless loops over a denoiser ``(x_t, t) -> output``.

* ancestral DDPM (Ho et al. 2020, Algorithm 2): x_{t-1} = mu_theta(x_t, t) + sigma_t z over all T steps;
* DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12) on any increasing subsequence of steps::

      x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
      sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)             (eq. 16)

  eta = 0 is deterministic; eta = 1 on every step is the DDPM update with variance beta~_t;
* restoration from an unconditional model (:class:`KnownView`): after every step the part of x_s
  that a known linear view ``y = A x_0`` fixes is replaced by a draw of q(x_s | x_0) consistent with
  y, with RePaint's resampling (Lugmayr et al. 2022, arXiv:2201.09865, jump length 1): each step is
  redone ``resample`` times, going back by the forward process in between, so the generated part has
  time to agree with the known part. Inpainting (a mask), super-resolution (average pooling) and
  colorization (the channel mean) are the same loop with a different view.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.errors import DgmError

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t, t (B,)) -> the network's raw output


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``x``'s shape drawn on the generator's device (a seeded CPU
    generator gives the same samples on a CPU and on a GPU)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down to 0, evenly spaced (DDIM's "uniform" subsequence)."""
    if not 1 <= steps <= T:
        raise DgmError(f"the number of sampling steps must be in 1..{T}, got {steps}")
    return torch.linspace(T - 1, 0, steps).round().long().unique_consecutive().tolist()


def ddpm_step(process, output: Tensor, xt: Tensor, t: int, noise: Tensor) -> Tensor:  # noqa: ANN001
    """One ancestral step x_t -> x_{t-1} with the model's variance; no noise is added at t = 0."""
    tt = torch.full((len(xt),), t, device=xt.device)
    mean, logvar, _ = process.p_mean_variance(output, xt, tt)
    return mean + (0.5 * logvar).exp() * noise if t > 0 else mean


def ddim_step(process, output: Tensor, xt: Tensor, t: int, s: int, eta: float, noise: Tensor) -> Tensor:  # noqa: ANN001
    """One DDIM step x_t -> x_s (s < t; s = -1 is the clean image, abar = 1)."""
    tt = torch.full((len(xt),), t, device=xt.device)
    x0, eps = process.predict_x0_eps(process.split_output(output)[0], xt, tt)
    abar_t = process.alphas_cumprod[t].item()
    abar_s = process.alphas_cumprod[s].item() if s >= 0 else 1.0
    sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)) ** 0.5
    return abar_s ** 0.5 * x0 + max(1 - abar_s - sigma ** 2, 0.0) ** 0.5 * eps + sigma * noise


class KnownView:
    """A linear view ``y = A x_0`` of the image that is known; subclasses define ``A`` (:meth:`project`)
    and a right inverse ``A+`` with ``A A+ = I`` (:meth:`lift`)."""

    def __init__(self, y: Tensor) -> None:
        self.y = y

    def to(self, device: torch.device | str) -> KnownView:
        """Move every tensor of the view (the known values, a mask) to ``device``; returns ``self``."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(device))
        return self

    def project(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def lift(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def replace(self, x: Tensor, y: Tensor) -> Tensor:
        """The image closest to ``x`` whose view is ``y``: ``x + A+ (y - A x)``."""
        return x + self.lift(y - self.project(x))

    def impose(self, x: Tensor, abar: float, generator: torch.Generator | None) -> Tensor:
        """Replace the known part of x_t by that of a draw of q(x_t | x_0), ``A x_t = sqrt(abar) y +
        sqrt(1 - abar) A eps``; with ``abar = 1`` the known part becomes ``y`` itself."""
        if abar >= 1.0:
            return self.replace(x, self.y)
        return self.replace(x, abar ** 0.5 * self.y + (1 - abar) ** 0.5 * self.project(randn_like(x, generator)))


class Inpaint(KnownView):
    """The pixels where ``mask`` is true are known (``y`` is the image; the rest of it is ignored)."""

    def __init__(self, image: Tensor, mask: Tensor) -> None:
        super().__init__(image)
        self.mask = mask.bool()

    def project(self, x: Tensor) -> Tensor:
        return torch.where(self.mask, x, torch.zeros_like(x))

    def lift(self, y: Tensor) -> Tensor:
        return y

    def replace(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.where(self.mask, y, x)  # exact: the known pixels are copied, not recomputed


class SuperResolution(KnownView):
    """The ``factor x factor`` block means are known: ``A`` is average pooling, ``A+`` nearest upsampling."""

    def __init__(self, low_resolution: Tensor, factor: int) -> None:
        super().__init__(low_resolution)
        self.factor = factor

    def project(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def lift(self, y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")


class Colorization(KnownView):
    """The mean over colour channels (a grey image) is known; ``A+`` copies it to every channel."""

    def __init__(self, grey: Tensor, channels: int) -> None:
        super().__init__(grey)
        self.channels = channels

    def project(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True)

    def lift(self, y: Tensor) -> Tensor:
        return y.expand(-1, self.channels, *y.shape[2:])


def run(process, denoise: Denoiser, x: Tensor, sampler: Literal["ddpm", "ddim"], *, steps: int = 50,  # noqa: ANN001
        eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = False,
        known: KnownView | None = None, resample: int = 1) -> Tensor:
    """Run the reverse chain from ``x`` = x_T ~ N(0, I) to x_0.

    Args:
        process: the :class:`~dgm.models.diffusion.GaussianDiffusion`.
        denoise: ``(x_t, t) -> output``, the (guided) network.
        sampler: ``ddpm`` (all T steps, the model's variance) or ``ddim`` (``steps`` steps, ``eta``).
        generator: the source of every noise draw, for reproducible samples.
        known: a known view of the image to restore; ``resample``: RePaint's repetitions per step.
    """
    T = process.num_timesteps
    if sampler == "ddpm":
        schedule = list(range(T - 1, -1, -1))
    elif sampler == "ddim":
        schedule = timesteps(T, steps)
    else:
        raise DgmError(f"unknown sampler {sampler!r}: use ddpm or ddim")
    abar = process.alphas_cumprod.tolist() + [1.0]  # abar[-1] = 1: the clean image
    if known is not None:
        x = known.impose(x, abar[T - 1], generator)
    pairs = list(zip(schedule, schedule[1:] + [-1]))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"{sampler} sampling", unit="step", leave=False)
    for t, s in pairs:
        for r in range(resample if known is not None and s >= 0 else 1):
            if r:  # back from s to t by the forward process: q(x_t | x_s) = N(sqrt(abar_t/abar_s) x_s, 1 - abar_t/abar_s)
                ratio = abar[t] / abar[s]
                x = ratio ** 0.5 * x + (1 - ratio) ** 0.5 * randn_like(x, generator)
            output = denoise(x, torch.full((len(x),), t, device=x.device))
            noise = randn_like(x, generator)
            x = ddpm_step(process, output, x, t, noise) if sampler == "ddpm" else \
                ddim_step(process, output, x, t, s, eta, noise)
            if known is not None:
                x = known.impose(x, abar[s], generator)
    return x
