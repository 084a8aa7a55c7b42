"""The VAE with an autoregressive decoder: a small gated PixelCNN conditioned on z (PixelVAE).

Gulrajani, Kumar, Ahmed, Taiga, Visin, Vazquez & Courville 2017, "PixelVAE: A Latent Variable Model
for Natural Images", arXiv:1611.05013; the conditioning of van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328, eq. 4.

The VAE's factorised p(x|z) = prod_i p(x_i | z) is replaced by an autoregressive one,

    p(x | z) = prod_i p(x_i | x_<i, z)            (raster order, subpixel by subpixel)

computed in one masked pass by a gated PixelCNN whose every layer adds a projection of z to its
gates (``tanh(W_f * x + V_f z) * sigmoid(W_g * x + V_g z)``). The ELBO, the IWAE bound, the encoder,
the KL options (beta, warm-up, free bits) and the likelihoods are the VAE's: only log p(x|z) and the
draws change. The decoder sees the pixels, so it can model local detail the factorised decoder
blurs; a few layers keep its receptive field local and leave the global structure to z (the
PixelVAE's point: a weak decoder that still uses the latent). Samples are drawn pixel by pixel
(H x W x C network passes), so there is no closed-form mean E[x|z] to show.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.data.core import DataSpec, to_unit
from dgm.errors import DgmError
from dgm.models.base import register
from dgm.models.vae import VAE, VAEConfig
from dgm.nn.pixelcnn import GatedPixelCNNNetwork
from dgm.settings import PositiveInt


@dataclass
class PixelVAEConfig(VAEConfig):
    """Settings of :class:`PixelVAE`: the VAE's (its encoder, latent, likelihood and KL options), and
    the PixelCNN decoder's."""

    pixel_width: PositiveInt = 32  # features of the decoder's vertical and horizontal stacks
    pixel_layers: PositiveInt = 4  # gated layers: few, so the decoder stays local and z carries the rest
    kernel_size: PositiveInt = 5  # odd: the stacks' live windows
    sample_mean: bool = False  # an autoregressive decoder has no closed-form mean: samples are draws


@register
class PixelVAE(VAE):
    """A VAE whose decoder is a gated PixelCNN conditioned on z.

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic")
        >>> vae = dgm.create("pixel-vae", data.spec, latent_dim=8, pixel_layers=3)
        >>> vae.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "pixel-vae"
    Config = PixelVAEConfig
    description = "VAE with an autoregressive decoder, a gated PixelCNN conditioned on z (PixelVAE)"

    def __init__(self, config: PixelVAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if not spec.is_image:
            raise DgmError(f"pixel-vae decodes images pixel by pixel, and {spec.name!r} has shape {spec.shape}: "
                           f"use vae for other data")
        if config.sample_mean:
            raise DgmError("an autoregressive decoder has no closed-form mean E[x|z]: samples are drawn pixel by "
                           "pixel (set model.sample_mean=false)")
        if config.kernel_size % 2 == 0:
            raise DgmError(f"model.kernel_size must be odd (the stacks' windows are centred), got {config.kernel_size}")
        channels = spec.shape[0]
        width = -(-config.pixel_width // channels) * channels  # one block of features per colour
        self.decoder = GatedPixelCNNNetwork(channels, self.likelihood.params_shape[0], width=width,
                                            layers=config.pixel_layers, kernel_size=config.kernel_size,
                                            condition_dim=config.latent_dim)

    def memory_format(self) -> torch.memory_format:
        return torch.contiguous_format  # masked convolutions: not measured in channels_last

    def pixel_params(self, x: Tensor, z: Tensor) -> Tensor:
        """The likelihood's parameters of every subpixel given the subpixels before it and z,
        ``(B, *params_shape)``, in at least float32 (the log-likelihood sums H x W terms)."""
        signed = 2 * to_unit(x, self.spec).to(next(self.decoder.parameters()).dtype) - 1  # [-1, 1], as PixelCNNs see it
        params = self.decoder(signed, z)
        return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) = sum_i log p(x_i | x_<i, z) in nats, ``(B,)``: one masked pass."""
        return self.likelihood.log_prob(self.pixel_params(x, z), x)

    def draw(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z) in raster order, subpixel by subpixel, ``(B, C, H, W)`` in the data representation."""
        C, H, W = self.spec.shape
        x = torch.zeros(len(z), C, H, W, device=z.device, dtype=z.dtype)
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    params = self.pixel_params(x, z)[:, :, i:i + 1, j:j + 1]  # (B, C * P, 1, 1)
                    x[:, c, i, j] = self.likelihood.sample(params, generator=generator)[:, c, 0, 0].float()
        return x.long() if self.spec.representation == "levels" else x

    def decode(self, z: Tensor) -> Tensor:
        return self.draw(z)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        if condition is not None:
            raise DgmError("the PixelVAE is unconditional: drop the condition")
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.draw(z, generator)
