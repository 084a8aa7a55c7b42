"""Networks of the adversarial family: DCGAN generator and discriminator, MLP critics, spectral
normalisation and PacGAN packing. Shapes in, shapes out, no probability.

Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks" (DCGAN), arXiv:1511.06434: strided (transposed) convolutions
instead of pooling, batch normalisation and ReLU in the generator, LeakyReLU(0.2) in the
discriminator. The discriminator here has no batch normalisation, so that the same network serves
the gradient penalty (WGAN-GP penalises per-example gradients, which batch norm couples) and
spectral normalisation (Miyato et al. 2018 use none either).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from dgm.nn.blocks import MLP, conv_downsamplings

#: the discriminators' activation (DCGAN sec. 3)
LeakyReLU = functools.partial(nn.LeakyReLU, 0.2)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias depend on the class: ``gamma_y * BN(x) + beta_y`` (de Vries
    et al. 2017; the generator of Miyato & Koyama 2018). Starts as plain batch norm (gain 1, bias 0).
    ``(B, C, H, W)`` and labels ``(B,)`` to ``(B, C, H, W)``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.gain(y)[:, :, None, None] * self.norm(x) + self.bias(y)[:, :, None, None]


class DCGANGenerator(nn.Module):
    """Vector to image: a linear layer to ``(width * 2^n, H / 2^n, W / 2^n)``, then per upsampling a
    ``ConvTranspose2d(4, stride 2)`` that halves the channels, each followed by batch norm and ReLU,
    then a 3x3 convolution to ``C`` channels (no output non-linearity: the model applies it).

    ``n`` = 2 for 28x28 and 32x32 (7 -> 14 -> 28, 8 -> 16 -> 32), 1 for 8x8. With ``num_classes``
    the batch norms are class-conditional (:class:`ConditionalBatchNorm2d`), so the class sets the
    scale of every layer's features while the noise still decides the rest (a class embedding
    concatenated to z alone lets the generator ignore z within a class).
    Input ``(B, in_features)`` (and labels ``(B,)``), output ``(B, C, H, W)``.
    """

    def __init__(self, in_features: int, out_shape: tuple[int, int, int], *, width: int = 64,
                 num_classes: int | None = None) -> None:
        super().__init__()
        c, h, w = out_shape
        n = conv_downsamplings(h, w)
        ch = width * 2 ** n

        def norm(channels: int) -> nn.Module:
            return ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)

        self.project = nn.Sequential(nn.Linear(in_features, ch * (h >> n) * (w >> n)),
                                     nn.Unflatten(1, (ch, h >> n, w >> n)))
        self.norms = nn.ModuleList([norm(ch)])
        self.upsamplings = nn.ModuleList()
        for _ in range(n):
            self.upsamplings.append(nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1))
            ch //= 2
            self.norms.append(norm(ch))
        self.out = nn.Conv2d(ch, c, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        def norm(i: int, h: Tensor) -> Tensor:
            return torch.relu(self.norms[i](h, y) if y is not None else self.norms[i](h))

        h = norm(0, self.project(z))  # (B, width * 2^n, H / 2^n, W / 2^n)
        for i, upsample in enumerate(self.upsamplings, start=1):
            h = norm(i, upsample(h))  # doubles H and W, halves the channels
        return self.out(h)  # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """Image to feature vector: per downsampling a ``Conv2d(4, stride 2)`` that doubles the
    channels (``width`` after the first) with LeakyReLU(0.2), then a flatten. A score head (or a
    projection, an auxiliary classifier, InfoGAN's Q) is put on the features by the model.

    Input ``(B, C, H, W)``, output ``(B, out_features)`` with ``out_features = width * 2^(n-1) *
    H / 2^n * W / 2^n``.
    """

    def __init__(self, in_shape: tuple[int, int, int], *, width: int = 64) -> None:
        super().__init__()
        c, h, w = in_shape
        n = conv_downsamplings(h, w)
        layers: list[nn.Module] = []
        ch_in, ch = c, width
        for _ in range(n):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), LeakyReLU()]
            ch_in, ch = ch, 2 * ch
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out_features = ch_in * (h >> n) * (w >> n)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, out_features)


class MLPFeatures(nn.Sequential):
    """Vector (or any tensor, flattened) to features: an :class:`MLP` with LeakyReLU(0.2) after
    every layer, the last included. ``(B, *shape)`` to ``(B, hidden[-1])``."""

    def __init__(self, in_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__(nn.Flatten(), MLP(in_features, hidden[:-1], hidden[-1], activation=LeakyReLU), LeakyReLU())
        self.out_features = hidden[-1]


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Put spectral normalisation (Miyato et al. 2018, arXiv:1802.05957) on every linear, conv and
    embedding layer of ``module``, in place: ``W / sigma(W)`` with ``sigma`` the top singular value,
    estimated by one power iteration per training forward pass. Returns ``module``."""
    for layer in list(module.modules()):  # the module itself included
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)) \
                and not nn.utils.parametrize.is_parametrized(layer):
            nn.utils.parametrizations.spectral_norm(layer)  # registers the parametrization in place
    return module


def pack(x: Tensor, m: int) -> Tensor:
    """PacGAN packing (Lin et al. 2018, arXiv:1712.04086): ``m`` consecutive examples become one,
    stacked along the first feature axis (channels of an image, coordinates of a vector).

    ``(B, C, ...)`` to ``(B / m, m * C, ...)``; ``B`` must be a multiple of ``m``.
    """
    if m == 1:
        return x
    if len(x) % m:
        raise ValueError(f"a batch of {len(x)} cannot be packed in groups of {m}")
    return x.reshape(len(x) // m, m * x.shape[1], *x.shape[2:])


def top_singular_value(weight: Tensor) -> float:
    """The largest singular value of a weight, as a matrix ``(out, in * kernel)`` (for tests and
    diagnostics of spectral normalisation)."""
    return float(torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2))
