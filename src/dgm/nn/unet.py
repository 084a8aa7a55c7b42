"""Denoising networks of the diffusion family: ``(x_t, t, class) -> output`` of the shape the process
asks for. Networks only: no noise schedule, no probability (that is :mod:`dgm.models.diffusion`).

* :class:`UNet` for images: the DDPM U-Net (Ho et al. 2020, arXiv:2006.11239, app. B), itself the
  PixelCNN++ U-Net with a sinusoidal time embedding added in every residual block, group norm, and
  self-attention at the low resolutions. The same layout as diffusers' ``UNet2DModel`` with
  ``block_out_channels=(w, 2w, 2w)`` and one residual block per level, so the two can be timed
  side by side at the same size.
* :class:`DenoisingMLP` for vectors (2-D toys, float arrays).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.errors import DgmError
from dgm.nn.blocks import MLP

MAX_PERIOD = 10000.0  # the longest wavelength of the sinusoidal embedding (Vaswani et al. 2017)
EMBEDDING_MULT = 4  # the U-Net's conditioning vector has 4 x width features (Ho et al.'s code)
MLP_EMBEDDING_DIM = 64  # features of the time (and class) embedding of the vector denoiser
NORM_GROUPS = 32  # group norm groups (Wu & He 2018; Ho et al.), fewer in narrow layers
MIN_GROUP_CHANNELS = 4  # ... so that every group keeps at least this many channels


def timestep_embedding(t: Tensor, dim: int, max_period: float = MAX_PERIOD) -> Tensor:
    """Transformer sinusoidal position embedding of the (integer or real) timesteps ``t`` ``(B,)``:
    ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period^(-i / (dim/2))`` (Vaswani et al. 2017,
    sec. 3.5; DDPM app. B). Returns ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ConditionEmbedding(nn.Module):
    """The vector every block is conditioned on: an MLP of the time embedding, plus a learned class
    embedding when ``num_classes`` is set. The class index ``num_classes`` is the *null* class of
    classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): the unconditional model."""

    def __init__(self, base: int, dim: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.base = base
        self.time = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.base))  # (B, dim)
        if self.label is not None:
            if y is None:
                raise DgmError("this denoiser is class-conditional: pass class labels (the null class "
                               f"{self.label.num_embeddings - 1} for the unconditional model)")
            emb = emb + self.label(y)
        return emb


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with ``NORM_GROUPS`` groups, or fewer (halving) for narrow layers, each group keeping at
    least ``MIN_GROUP_CHANNELS`` channels."""
    candidates = [NORM_GROUPS >> i for i in range(NORM_GROUPS.bit_length())]  # 32, 16, ..., 1
    groups = next(g for g in candidates if channels % g == 0 and channels // g >= min(MIN_GROUP_CHANNELS, channels))
    return nn.GroupNorm(groups, channels)


class TimeResBlock(nn.Module):
    """``x + conv(dropout(act(norm(conv(act(norm(x))) + proj(emb)))))``: the DDPM residual block,
    with the conditioning vector added between the two convolutions. The last convolution starts at
    zero, so every block starts as (a 1x1 projection of) the identity."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.inp(x) + self.emb(emb)[:, :, None, None]  # (B, C_out, H, W)
        return self.skip(x) + self.out(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H x W`` positions, residual, output projection at zero."""

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def max_levels(height: int, width: int) -> int:
    """The most levels a :class:`UNet` can have on ``height x width`` images: each level but the last
    halves the image exactly, so ``L`` levels need sides that are multiples of ``2^(L-1)``."""
    levels = 1
    while height % 2 ** levels == 0 and width % 2 ** levels == 0:
        levels += 1
    return levels


class UNet(nn.Module):
    """The DDPM U-Net for ``(C, H, W)`` images.

    Levels of ``width * channel_mults[i]`` channels; at each level ``num_res_blocks`` residual
    blocks (with self-attention after each when the level's side is at most ``attention_below``),
    then a stride-2 convolution, except at the last level. A middle of residual / attention /
    residual, then the mirror image with skip connections from every block of the way down, and
    nearest-neighbour upsampling followed by a convolution. 28x28 runs at 28, 14, 7.

    Input ``x (B, C, H, W)``, timesteps ``t (B,)``, labels ``y (B,)`` or ``None``; output
    ``(B, out_channels, H, W)``. The output layer starts at zero (the denoiser's first guess is 0).
    """

    def __init__(self, in_shape: Sequence[int], out_channels: int, *, width: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, attention_below: int = 8,
                 heads: int = 1, dropout: float = 0.0, num_classes: int | None = None) -> None:
        super().__init__()
        c, h, w = in_shape
        if len(channel_mults) > max_levels(h, w):
            raise DgmError(f"a U-Net with {len(channel_mults)} levels halves the image {len(channel_mults) - 1} "
                           f"times, which {h}x{w} does not allow: it takes at most {max_levels(h, w)} channel_mults")
        emb_dim = EMBEDDING_MULT * width
        self.embed = ConditionEmbedding(width, emb_dim, num_classes)
        self.stem = nn.Conv2d(c, width, 3, padding=1)

        def level(ch_in: int, ch_out: int, side: int) -> nn.ModuleList:
            attend = side <= attention_below
            return nn.ModuleList([TimeResBlock(ch_in, ch_out, emb_dim, dropout),
                                  SelfAttention(ch_out, heads) if attend else nn.Identity()])

        self.down, skips, ch, side = nn.ModuleList(), [width], width, min(h, w)
        for i, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(level(ch, width * mult, side))
                ch = width * mult
                skips.append(ch)
            if i < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                side //= 2
        self.middle = nn.ModuleList([TimeResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch, heads),
                                     TimeResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(level(ch + skips.pop(), width * mult, side))
                ch = width * mult
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
                side *= 2
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, (TimeResBlock, SelfAttention)) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.embed(t, y)  # (B, 4 width)
        h = self.stem(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for layers in self.up:
            if isinstance(layers[0], TimeResBlock):  # a block of the way up takes its skip connection
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, emb)
        return self.out(h)  # (B, out_channels, H, W)


class DenoisingMLP(nn.Module):
    """Denoiser for vectors: an MLP of ``[x, emb(t, y)]``. Input ``(B, D)``, output ``(B, out_features)``."""

    def __init__(self, in_features: int, out_features: int, *, hidden: Sequence[int] = (256, 256, 256),
                 num_classes: int | None = None) -> None:
        super().__init__()
        emb_dim = MLP_EMBEDDING_DIM
        self.embed = ConditionEmbedding(emb_dim, emb_dim, num_classes)
        self.net = MLP(in_features + emb_dim, tuple(hidden), out_features)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([x, self.embed(t, y)], dim=-1))
