"""Networks shared by the model families: shapes in, shapes out, no probability.

The convolutional networks have no batch normalisation, so that a model's likelihood of one
example never depends on the other examples in its batch.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dgm.errors import DgmError


class MLP(nn.Sequential):
    """Linear layers with an activation between them (none after the last).

    ``hidden=()`` gives a single :class:`~torch.nn.Linear` layer, i.e. an affine map (the decoder
    of a linear-Gaussian VAE, whose marginal likelihood is factor analysis in closed form).
    Input ``(B, in_features)``, output ``(B, out_features)``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 activation: type[nn.Module] = nn.SiLU) -> None:
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Pre-activation residual block, ``x + conv3x3(act(conv3x3(act(x))))`` (He et al. 2016,
    "Identity Mappings in Deep Residual Networks", arXiv:1603.05027), without batch norm.

    With ``zero_init`` the last convolution starts at zero so each block starts as the identity:
    without a normalisation layer this keeps the activations' scale fixed at initialisation however
    many blocks are stacked (as in Fixup, Zhang et al. 2019, arXiv:1901.09321). The flows' coupling
    networks use ReLU blocks with the default initialisation (RealNVP, section 4.1), their last
    layer being the one that starts at zero.
    """

    def __init__(self, channels: int, *, activation: type[nn.Module] = nn.SiLU, zero_init: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(
            activation(), nn.Conv2d(channels, channels, 3, padding=1),
            activation(), nn.Conv2d(channels, channels, 3, padding=1),
        )
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, C, H, W)


def conv_downsamplings(height: int, width: int) -> int:
    """Number of stride-2 stages of the conv networks for an image of ``height x width``.

    Two for sides divisible by 4 and at least 16 (28x28 -> 7x7, 32x32 -> 8x8), one for even sides
    from 4 to 14 (8x8 -> 4x4); any other size raises a :class:`DgmError` that says what to do.
    """
    if height % 4 == 0 and width % 4 == 0 and min(height, width) >= 16:
        return 2
    if height % 2 == 0 and width % 2 == 0 and 4 <= min(height, width) and max(height, width) < 16:
        return 1
    raise DgmError(
        f"image size {height}x{width} is not supported by the conv networks: they take even sides from 4 "
        "to 14 (e.g. 8x8, 12x12) or sides divisible by 4 from 16 (e.g. 20x20, 28x28, 32x32); resize with "
        "--set data.size=32 or use --set model.network=mlp"
    )


class ConvEncoder(nn.Module):
    """Image to vector: a stem conv, then per downsampling a stride-2 conv that doubles the
    channels followed by ``num_res_blocks`` residual blocks, then a linear layer.

    Input ``(B, C, H, W)``, output ``(B, out_features)``.
    """

    def __init__(self, in_shape: tuple[int, int, int], out_features: int, *, width: int = 32,
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        c, h, w = in_shape
        n = conv_downsamplings(h, w)
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1)]
        ch = width
        for _ in range(n):
            layers += [nn.SiLU(), nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)]
            ch *= 2
            layers += [ResidualBlock(ch) for _ in range(num_res_blocks)]
        self.conv = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.SiLU(), nn.Flatten(), nn.Linear(ch * (h >> n) * (w >> n), out_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)  # (B, width * 2^n, H / 2^n, W / 2^n)
        return self.out(h)  # (B, out_features)


class ConvDecoder(nn.Module):
    """Vector to image, the mirror of :class:`ConvEncoder`: a linear layer to
    ``(width * 2^n, H / 2^n, W / 2^n)``, then per upsampling ``num_res_blocks`` residual blocks and
    a ``ConvTranspose2d(k=4, s=2, p=1)`` that halves the channels, then a conv to ``out_shape[0]``.

    Input ``(B, in_features)``, output ``(B, *out_shape)``.
    """

    def __init__(self, in_features: int, out_shape: tuple[int, int, int], *, width: int = 32,
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        c, h, w = out_shape
        n = conv_downsamplings(h, w)
        ch = width * 2 ** n
        self.inp = nn.Sequential(nn.Linear(in_features, ch * (h >> n) * (w >> n)),
                                 nn.Unflatten(1, (ch, h >> n, w >> n)))
        layers: list[nn.Module] = []
        for _ in range(n):
            layers += [ResidualBlock(ch) for _ in range(num_res_blocks)]
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1)]
            ch //= 2
        layers += [nn.SiLU(), nn.Conv2d(ch, c, 3, padding=1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z)  # (B, width * 2^n, H / 2^n, W / 2^n)
        return self.conv(h)  # (B, C, H, W)
