"""A causal transformer with a key-value cache, and the image transformer network built on it.

Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2: pre-LayerNorm
blocks, a final LayerNorm, learned positional embeddings).
Parmar et al. 2018, "Image Transformer", arXiv:1802.05751, and Chen et al. 2020, "Generative
Pretraining from Pixels" (ImageGPT): an image as a sequence of subpixels.

The transformer maps embeddings ``h_0 .. h_{L-1}`` to outputs ``y_0 .. y_{L-1}`` where ``y_t``
depends on ``h_0 .. h_t`` only. Each block is::

    h = h + Attention(LayerNorm(h))     (causal multi-head self-attention)
    h = h + MLP(LayerNorm(h))           (width -> mlp_ratio * width -> width, GELU)

    Attention(q, k, v) = softmax(q k^T / sqrt(head_dim) + mask) v    (Vaswani eq. 1)

with ``mask`` -inf where a key comes after its query. Generation needs ``y_t`` for one new position
at a time: the keys and values of the earlier positions do not change when a position is appended,
so :class:`KVCache` keeps them and a step costs one position's work instead of the whole prefix.

:class:`ImageTransformerNetwork` orders a ``(C, H, W)`` image as ``D = C * H * W`` subpixels in
raster order with the channel innermost (pixel (0, 0) R, G, B, then (0, 1) R, G, B, ...), and
predicts the parameters of subpixel ``s`` from the subpixels ``< s``: the transformer reads the
sequence shifted by one, ``[start, x_0, .., x_{D-2}]``, so output ``s`` sees ``x_0 .. x_{s-1}``.
The attention is full causal attention over all ``D`` positions, not the Image Transformer's local
blocks. It is a network (shapes in, shapes out); the likelihood that reads its parameters lives in
:mod:`dgm.nn.likelihoods` and the factorisation in :mod:`dgm.models`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_STD = 0.02  # GPT-2's initialisation of every linear and embedding weight
# sin / cos of 2^k pi v for k = 0 .. 7: the highest has period 1/64, about two steps (2/255) of 8-bit
# values in [-1, 1], so neighbouring levels land half a period apart and embed far apart
FOURIER_FREQUENCIES = 8


# --- the cache -------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """The keys and values of the positions a :class:`CausalTransformer` has seen so far.

    One ``(B, heads, max_length, head_dim)`` tensor per layer for the keys and one for the values,
    allocated once at full length so that appending positions writes in place and never
    reallocates; positions ``[0, length)`` are filled. Build it with
    :meth:`CausalTransformer.new_cache`. It is for generation: use it under
    ``torch.inference_mode()`` (or ``no_grad``), and create it inside the same mode, since the
    in-place writes cannot be differentiated and inference tensors cannot be written outside it.
    """

    keys: list[Tensor]  # per layer, (B, heads, max_length, head_dim)
    values: list[Tensor]  # per layer, (B, heads, max_length, head_dim)
    length: int = 0  # positions filled

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]


# --- the transformer -------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and the positions before it."""

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads}): set width = heads * head_dim")
        self.c_attn = nn.Linear(width, 3 * width)  # queries, keys and values of all heads in one matmul
        self.c_proj = nn.Linear(width, width)
        self.resid_dropout = nn.Dropout(dropout)
        self.heads, self.width, self.dropout = heads, width, dropout

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, start: int = 0,
                allowed: Tensor | None = None) -> Tensor:
        """``x (B, L, width)`` at positions ``[start, start + L)``; ``kv`` this layer's cache buffers,
        where the new keys and values are written and the earlier ones ``[0, start)`` are read.
        ``allowed`` ``(max_length, max_length)`` bool, True where query ``i`` may see key ``j``: a
        sparser causal pattern than the full triangle (:func:`text_image_masks`)."""
        B, L, _ = x.shape
        q, k, v = self.c_attn(x).split(self.width, dim=2)
        q = q.view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        k = k.view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        v = v.view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        dropout_p = self.dropout if self.training else 0.0
        if allowed is not None:
            if kv is not None:
                keys, values = kv
                keys[:, :, start:start + L] = k
                values[:, :, start:start + L] = v
                k, v = keys[:, :, :start + L], values[:, :, :start + L]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[start:start + L, :start + L],
                                               dropout_p=dropout_p)
        elif kv is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            keys, values = kv
            keys[:, :, start:start + L] = k
            values[:, :, start:start + L] = v
            k, v = keys[:, :, :start + L], values[:, :, :start + L]  # (B, nh, start + L, hd)
            # query i sits at position start + i and sees keys 0 .. start + i. is_causal would align
            # the triangle to the top-left corner (query i sees keys 0 .. i), wrong once start > 0;
            # a single new position sees every key, so it needs no mask at all.
            mask = None if L == 1 else torch.ones(L, start + L, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, L, self.width)  # (B, L, width): the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward layer: width -> mlp_ratio * width -> width."""

    def __init__(self, width: int, *, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_ratio * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(mlp_ratio * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, L, width)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: the residual stream is only ever added to."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout=dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, start: int = 0,
                allowed: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv, start, allowed)
        return x + self.mlp(self.ln_2(x))  # (B, L, width)


class CausalTransformer(nn.Module):
    """GPT-2's decoder stack on given embeddings: positions in, the same positions out, each output
    seeing only its own and earlier inputs.

    Args:
        width: the embedding size (a multiple of ``heads``).
        depth: the number of blocks.
        heads: attention heads per block.
        max_length: the positions with a learned positional embedding; no sequence may be longer.
        dropout: on the attention weights, after each residual branch, and on the input embeddings,
            in training mode only.
        mlp_ratio: the feed-forward layer's hidden size over ``width``.
        masks: ``(depth, max_length, max_length)`` bool, one attention pattern per block (True where a
            query may see a key), each inside the causal triangle with the diagonal kept; ``None``:
            every block sees all earlier positions.

    Example::

        net = CausalTransformer(64, 2, 4, max_length=16)
        y = net(torch.randn(8, 16, 64))                      # (8, 16, 64), one parallel pass
        with torch.inference_mode():
            cache = net.new_cache(8)
            y0 = net(torch.randn(8, 1, 64), cache=cache)     # position 0; cache.length == 1
            y1 = net(torch.randn(8, 3, 64), cache=cache)     # positions 1 .. 3; cache.length == 4
    """

    def __init__(self, width: int, depth: int, heads: int, max_length: int, *,
                 dropout: float = 0.0, mlp_ratio: int = 4, masks: Tensor | None = None) -> None:
        super().__init__()
        self.width, self.depth, self.heads, self.max_length = width, depth, heads, max_length
        if masks is not None:
            causal = torch.ones(max_length, max_length, dtype=torch.bool).tril()
            if masks.shape != (depth, max_length, max_length):
                raise ValueError(f"masks of shape {tuple(masks.shape)}: expected one ({max_length}, {max_length}) "
                                 f"pattern per block, ({depth}, {max_length}, {max_length})")
            if (masks & ~causal).any() or not masks.diagonal(dim1=1, dim2=2).all():
                raise ValueError("every attention pattern must lie inside the causal triangle and keep its diagonal "
                                 "(a position sees itself, never a later one)")
        # derived from the settings, so not saved with the weights
        self.register_buffer("masks", masks, persistent=False)
        self.wpe = nn.Embedding(max_length, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.apply(init_weights)
        for block in self.blocks:
            # each block adds two branches to the residual stream: scaling their output layers by
            # 1/sqrt(2 depth) keeps the stream's variance independent of depth (GPT-2, sec. 2.3)
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=INIT_STD / math.sqrt(2 * depth))

    def new_cache(self, batch: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch`` sequences, on the parameters' device and dtype by default."""
        shape = (batch, self.heads, self.max_length, self.width // self.heads)
        device, dtype = device or self.wpe.weight.device, dtype or self.wpe.weight.dtype
        return KVCache([torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks])

    def forward(self, h: Tensor, *, cache: KVCache | None = None) -> Tensor:
        """``h (B, L, width)``, the embeddings of positions ``[start, start + L)`` with ``start`` =
        ``cache.length`` (0 without a cache), to outputs ``(B, L, width)``. With a cache, the new
        positions attend to the cached ones as well, their keys and values are written into it and
        ``cache.length`` grows by ``L``."""
        B, L, _ = h.shape
        start = 0 if cache is None else cache.length
        if start + L > self.max_length:
            raise ValueError(f"positions {start} .. {start + L - 1} do not fit in max_length={self.max_length}: "
                             f"build the transformer with max_length >= {start + L}")
        if cache is not None and cache.batch != B:
            raise ValueError(f"the cache holds {cache.batch} sequences but the input has {B}: "
                             f"make the cache with new_cache({B})")
        positions = torch.arange(start, start + L, device=h.device)
        x = self.drop(h + self.wpe(positions))  # (B, L, width)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.keys[layer], cache.values[layer]), start,
                      None if self.masks is None else self.masks[layer])
        if cache is not None:
            cache.length += L
        return self.ln_f(x)  # (B, L, width)


def text_image_masks(text_length: int, grid: tuple[int, int], depth: int, *, kernel: int = 5) -> Tensor:
    """The attention patterns of DALL-E's transformer (Ramesh et al. 2021, sec. 2.2 and fig. 11), one per
    block, over the input sequence ``[start, t_0 .. t_{T-1}, i_0 .. i_{N-2}]`` of ``T = text_length``
    caption tokens and ``N = h * w`` image tokens in raster order: ``(depth, 1 + T + N - 1, same)`` bool.

    - a caption query (the start and ``t_*``) sees the earlier caption positions: the standard causal
      mask, so the caption never sees the image;
    - an image query ``i_k`` sees every caption position, and of the image tokens ``i_j``, ``j <= k``:
      *row* attention, the last ``w + 1`` (``k - j <= w``); *column* attention, those of its column
      (``(k - j) mod w == 0``); *convolutional* attention, the causal part of the ``kernel x kernel``
      neighbourhood. Block ``l`` uses column attention when ``(l - 2) mod 4 == 0``, the last block the
      convolutional mask, the others row attention (the paper's 64-layer pattern); two blocks, a row
      and a column one, already reach every earlier image token, as in the Sparse Transformer's
      strided factorisation (Child et al. 2019).
    """
    h, w = grid
    N, T = h * w, text_length
    L = 1 + T + N - 1
    j = torch.arange(N - 1)  # image token of each image input position
    k, jj = j[:, None], j[None, :]  # query's token, key's token
    same_side = (k // w - jj // w).abs() <= kernel // 2, (k % w - jj % w).abs() <= kernel // 2
    causal = jj <= k
    pattern = {"row": causal & (k - jj <= w), "column": causal & ((k - jj) % w == 0),
               "conv": causal & same_side[0] & same_side[1]}
    masks = torch.zeros(depth, L, L, dtype=torch.bool)
    masks[:, :1 + T, :1 + T] = torch.ones(1 + T, 1 + T, dtype=torch.bool).tril()  # caption: causal
    masks[:, 1 + T:, :1 + T] = True  # every image query sees the whole caption
    for layer in range(depth):
        kind = "conv" if layer == depth - 1 else "column" if (layer - 2) % 4 == 0 else "row"
        masks[layer, 1 + T:, 1 + T:] = pattern[kind]
    return masks


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases (LayerNorms keep (1, 0))."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --- the image transformer -------------------------------------------------------------------------
def fourier_features(v: Tensor, frequencies: int = FOURIER_FREQUENCIES) -> Tensor:
    """``v (...)`` to ``(..., 2 * frequencies + 1)``: ``v``, ``sin(2^k pi v)`` and ``cos(2^k pi v)``
    for ``k = 0 .. frequencies - 1``. Smooth in ``v`` (a sampler differentiates through it) yet
    able to tell nearby levels apart, which ``v`` alone, through one linear layer, cannot."""
    angles = v[..., None] * (math.pi * 2.0 ** torch.arange(frequencies, dtype=v.dtype, device=v.device))
    return torch.cat([v[..., None], angles.sin(), angles.cos()], dim=-1)


class ImageTransformerNetwork(nn.Module):
    """An autoregressive network over the subpixels of a ``(C, H, W)`` image: the parameters of each
    subpixel from the values of the subpixels before it (raster order, channel innermost).

    A subpixel's value ``v`` (the image scaled to [-1, 1]; noisy images may fall outside) enters as
    a linear map of :func:`fourier_features` plus a learned embedding of its channel; the
    transformer reads ``[start, x_0, .., x_{D-2}]``, where ``start`` is a learned vector plus, with
    ``condition_dim > 0``, a linear map of the conditioning vector ``h`` (the class token); a linear
    head maps output ``s`` to the ``params_per_dim`` parameters of subpixel ``s``.

    Args:
        shape: the image shape ``(C, H, W)``.
        params_per_dim: parameters per subpixel (``P``), e.g. 256 logits or a mixture's parameters.
        width, depth, heads, dropout: those of the :class:`CausalTransformer`.
        condition_dim: the size of the conditioning vector ``h`` (0: unconditional).

    Example::

        net = ImageTransformerNetwork((3, 8, 8), 256)
        params = net(x)                                      # x (B, 3, 8, 8) -> (B, 3 * 256, 8, 8)
        with torch.inference_mode():                         # generation, one subpixel at a time
            p, cache = net.begin(None, batch=16)             # (16, 256): subpixel 0
            for s in range(net.sequence_length):
                v = sample(p)                                # (16,), the value of subpixel s
                if s + 1 < net.sequence_length:
                    p = net.extend(v, cache)                 # subpixel s + 1
    """

    def __init__(self, shape: tuple[int, int, int], params_per_dim: int, *, width: int = 128, depth: int = 4,
                 heads: int = 4, condition_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.shape, self.params_per_dim, self.condition_dim = tuple(shape), params_per_dim, condition_dim
        C, H, W = shape
        self.value_embedding = nn.Linear(2 * FOURIER_FREQUENCIES + 1, width)
        self.channel_embedding = nn.Embedding(C, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.condition = nn.Linear(condition_dim, width) if condition_dim > 0 else None
        self.transformer = CausalTransformer(width, depth, heads, max_length=C * H * W, dropout=dropout)
        self.head = nn.Linear(width, params_per_dim)
        for module in (self.value_embedding, self.channel_embedding, self.condition, self.head):
            if module is not None:
                init_weights(module)
        nn.init.normal_(self.start, std=INIT_STD)

    @property
    def sequence_length(self) -> int:
        """``D = C * H * W``, the number of subpixels."""
        C, H, W = self.shape
        return C * H * W

    def start_token(self, h: Tensor | None, batch: int) -> Tensor:
        """The first input, ``(B, 1, width)``: the learned start vector, plus ``h``'s projection."""
        if h is None and self.condition is not None:
            raise ValueError(f"this network was built with condition_dim={self.condition_dim}: "
                             f"pass h of shape (B, {self.condition_dim})")
        if h is not None and self.condition is None:
            raise ValueError("this network was built with condition_dim=0: pass h=None, "
                             "or build it with condition_dim set to h's size")
        start = self.start.expand(batch, 1, -1)  # (B, 1, width)
        return start if self.condition is None else start + self.condition(h)[:, None]

    def embed(self, values: Tensor, channels: Tensor) -> Tensor:
        """Subpixel values ``(B, L)`` and their channel indices ``(L,)`` to inputs ``(B, L, width)``."""
        return self.value_embedding(fourier_features(values)) + self.channel_embedding(channels)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)`` to the parameters ``(B, C * P, H, W)`` of every subpixel in one pass
        (teacher forcing), laid out channel-major: ``out[:, c*P:(c+1)*P, i, j]`` are those of
        subpixel ``(i, j, c)``, computed from the subpixels before it only."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"this network was built for images of shape {self.shape} ({self.sequence_length} "
                             f"subpixels), got {tuple(x.shape[1:])}: build it with shape={tuple(x.shape[1:])}")
        B, (C, H, W), D = x.shape[0], self.shape, self.sequence_length
        values = x.permute(0, 2, 3, 1).reshape(B, D)  # (B, D): raster order, channel innermost
        channels = torch.arange(D - 1, device=x.device) % C  # of the inputs x_0 .. x_{D-2}
        # shifted by one: output s reads x_0 .. x_{s-1}, never x_s itself
        tokens = torch.cat([self.start_token(h, B), self.embed(values[:, :-1], channels)], dim=1)  # (B, D, width)
        params = self.head(self.transformer(tokens))  # (B, D, P)
        return params.view(B, H, W, C, -1).permute(0, 3, 4, 1, 2).reshape(B, -1, H, W)  # (B, C * P, H, W)

    def begin(self, h: Tensor | None, batch: int) -> tuple[Tensor, KVCache]:
        """Start generating ``batch`` images: the parameters ``(B, P)`` of subpixel 0 (from the start
        token alone) and a cache holding that token (``cache.length == 1``)."""
        cache = self.transformer.new_cache(batch)
        return self.head(self.transformer(self.start_token(h, batch), cache=cache))[:, 0], cache

    def extend(self, value: Tensor, cache: KVCache) -> Tensor:
        """Feed ``value (B,)``, the value of the subpixel most recently predicted, i.e. subpixel
        ``cache.length - 1`` (0 after :meth:`begin`), and return the parameters ``(B, P)`` of the
        next one, subpixel ``cache.length`` (before the call; the call adds 1). Called ``D - 1``
        times after :meth:`begin`; together they give :meth:`forward`'s parameters."""
        s = cache.length - 1  # the subpixel whose value this is
        if s < 0:
            raise ValueError("the cache is empty: start with begin(h, batch), which predicts subpixel 0")
        if s + 1 >= self.sequence_length:
            raise ValueError(f"all {self.sequence_length} subpixels have been predicted: the last value needs "
                             f"no extend; start a new image with begin")
        channel = torch.full((1,), s % self.shape[0], device=value.device)
        return self.head(self.transformer(self.embed(value[:, None], channel), cache=cache))[:, 0]  # (B, P)
