"""A CLIP-style contrastive text-image model: two encoders into one embedding space, and its loss.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP), arXiv:2103.00020, figure 3. For a batch of ``B`` matched (caption, image) pairs with
embeddings ``t_i`` and ``v_j``, L2-normalised::

    logits_ij = exp(s) * <t_i / |t_i|, v_j / |v_j|>          (B, B) scaled cosine similarities
    loss = (CE(logits, i) + CE(logits^T, i)) / 2              symmetric over captions and images

where ``CE(logits, i)`` is the mean cross-entropy of each row against its own index (the matched
pair is the diagonal) and ``s`` is a learned log-scale (an inverse temperature), initialised to
``log(1 / 0.07)`` and clipped at ``log(100)`` so that the logits are never scaled by more than 100
(section 2.5).

The model here serves DALL-E's reranking (Ramesh et al. 2021, arXiv:2102.12092, section 2.5):
draw ``R`` images per caption, keep the one whose embedding is most similar to the caption's.
The text encoder is a small bidirectional transformer, not a bag of words, since word order carries
the meaning of the scenes' captions ("a red circle left of a blue square" is another scene than
"a blue square left of a red circle").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.errors import DgmError

LOG_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOG_SCALE_MAX = math.log(100.0)  # CLIP clips the scale of the logits at 100
INIT_STD = 0.02  # the embeddings' initial scale (GPT-2's, as in CLIP's text transformer)


def contrastive_loss(text: Tensor, image: Tensor, log_scale: Tensor) -> Tensor:
    """The symmetric cross-entropy of CLIP (figure 3) over a batch of matched pairs.

    Args:
        text: ``(B, E)`` caption embeddings (any norm: they are normalised here).
        image: ``(B, E)`` image embeddings; row ``i`` is the image of caption ``i``.
        log_scale: scalar ``s``; the cosine similarities are scaled by ``exp(min(s, log 100))``.

    Returns:
        The scalar loss, ``(CE(logits, arange B) + CE(logits^T, arange B)) / 2`` in nats.
    """
    if text.dim() != 2 or text.shape != image.shape:
        raise DgmError(f"contrastive_loss takes text and image embeddings of one shape (B, E), got "
                       f"{tuple(text.shape)} and {tuple(image.shape)}: pass one image per caption")
    text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = log_scale.clamp(max=LOG_SCALE_MAX).exp() * text @ image.T  # (B, B), matched pairs on the diagonal
    matched = torch.arange(len(text), device=text.device)
    return (F.cross_entropy(logits, matched) + F.cross_entropy(logits.T, matched)) / 2


class TextEncoder(nn.Module):
    """Word ids to an embedding: word + position embeddings, a bidirectional pre-LayerNorm
    transformer encoder, the mean over the caption's words, a linear map to ``embed_dim``.

    Input ``(B, L)`` int64 word ids with ``L <= length``, ``0`` = padding after the last word and
    ``1 .. vocab_size - 1`` words; output ``(B, embed_dim)``. Padding is masked out of the attention
    (no word attends to it) and out of the mean, so a caption's embedding does not depend on how
    much padding follows it or on the other captions of its batch.
    """

    def __init__(self, vocab_size: int, length: int, width: int = 64, depth: int = 2, heads: int = 4,
                 embed_dim: int = 64) -> None:
        super().__init__()
        if width % heads:
            raise DgmError(f"the text encoder's width {width} must be a multiple of its {heads} heads")
        self.vocab_size, self.length = vocab_size, length
        self.words = nn.Embedding(vocab_size, width, padding_idx=0)
        self.positions = nn.Parameter(torch.empty(length, width))  # learned, as in CLIP's text transformer
        # words and positions start at one scale (GPT-2's 0.02), so that order is heard from the start
        nn.init.normal_(self.words.weight, std=INIT_STD)
        nn.init.normal_(self.positions, std=INIT_STD)
        with torch.no_grad():
            self.words.weight[0].zero_()  # the padding id's row stays zero (and gets no gradient)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        # pre-LayerNorm blocks need a LayerNorm after the last one; nested tensors do not apply to them
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.out = nn.Linear(width, embed_dim)

    def forward(self, captions: Tensor) -> Tensor:
        check_captions(captions, self.vocab_size, self.length)
        is_word = captions != 0  # (B, L)
        h = self.words(captions) + self.positions[: captions.shape[1]]  # (B, L, width)
        h = self.transformer(h, src_key_padding_mask=~is_word)  # (B, L, width); True = ignored key
        weights = is_word.to(h.dtype).unsqueeze(-1)  # (B, L, 1)
        pooled = (h * weights).sum(1) / weights.sum(1)  # (B, width), the mean over the words only
        return self.out(pooled)  # (B, embed_dim)


def check_captions(captions: Tensor, vocab_size: int, length: int) -> None:
    """Refuse word ids a :class:`TextEncoder` cannot read, in one line that says what to pass."""
    if captions.dim() != 2 or captions.dtype != torch.long:
        raise DgmError(f"captions must be int64 word ids of shape (B, L), got {captions.dtype} "
                       f"{tuple(captions.shape)}: encode them with a CaptionVocabulary")
    if captions.shape[1] > length:
        raise DgmError(f"captions have {captions.shape[1]} positions but the text encoder reads at most "
                       f"{length}: encode them with the vocabulary the model was built with")
    if len(captions) and (captions.min() < 0 or captions.max() >= vocab_size):
        raise DgmError(f"word ids must lie in 0..{vocab_size - 1} (0 = padding), got "
                       f"{int(captions.min())}..{int(captions.max())}: encode with the model's vocabulary")
    if len(captions) and not (captions != 0).any(1).all():
        raise DgmError("a caption has no words (all padding): give every caption at least one word")


class ImageEncoder(nn.Module):
    """An image in ``[0, 1]`` to an embedding: stride-2 convolutions with SiLU down to a side of at
    most 4, one more 3x3 convolution, the global average, a LayerNorm and a linear map to
    ``embed_dim`` (CLIP's ``ln_post`` and projection).

    Input ``(B, in_channels, side, side)`` in ``[0, 1]`` (convert a model's representation with
    :func:`dgm.data.to_unit`), output ``(B, embed_dim)``. The images are deliberately not centred:
    black, the scenes' background, is zero, and with zero initial biases a blank region adds
    nothing, so the average holds the objects alone. Centred to ``[-1, 1]``, the background's
    response is the same large part of every image's average (on eight toy scenes, cosine 0.98
    between the initial embeddings of different images, against 0.65 uncentred), and the loss's fastest way down
    from there is to map every input to one point, where training stalls at ``log B``. The last
    convolution makes each output position see the whole image (for 32x32 the receptive field is
    33 pixels), so the average keeps where the objects are relative to each other ("left of",
    "above").
    """

    def __init__(self, in_channels: int, side: int, width: int = 32, embed_dim: int = 64) -> None:
        super().__init__()
        self.in_shape = (in_channels, side, side)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        ch, s = width, side
        while s > 4:
            layers += [nn.SiLU(), nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)]
            ch, s = 2 * ch, (s + 1) // 2
        layers += [nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        for conv in self.conv[::2]:
            # He et al. 2015 (arXiv:1502.01852) keeps the activations' scale through the layers, and zero
            # biases keep black at zero: with PyTorch's default the signal shrinks each layer until the
            # biases, the same for every image, drown it
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.out = nn.Sequential(nn.LayerNorm(ch), nn.Linear(ch, embed_dim))  # CLIP's ln_post, then the projection

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[1:]) != self.in_shape:
            raise DgmError(f"the image encoder takes images of shape (B, {', '.join(map(str, self.in_shape))}), "
                           f"got {tuple(images.shape)}")
        h = self.conv(images)  # (B, ch, s, s); black stays zero (see above)
        return self.out(h.mean((2, 3)))  # (B, embed_dim)


class ContrastiveModel(nn.Module):
    """A text encoder and an image encoder trained with :func:`contrastive_loss`, with the learned
    log-scale ``s`` (CLIP, figure 3). Captions are ``(N, L)`` word ids as :class:`TextEncoder`
    reads them; images ``(N, C, H, W)`` in ``[0, 1]`` as :class:`ImageEncoder` reads them."""

    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.log_scale = nn.Parameter(torch.tensor(LOG_SCALE_INIT))

    def embed(self, captions: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """The unit-norm embeddings ``(N, E)`` of the captions and ``(M, E)`` of the images."""
        return (F.normalize(self.text_encoder(captions), dim=-1),
                F.normalize(self.image_encoder(images), dim=-1))

    def loss(self, captions: Tensor, images: Tensor) -> Tensor:
        """The contrastive loss of ``N`` matched pairs (image ``i`` is the image of caption ``i``)."""
        check_pairs(captions, images)
        return contrastive_loss(self.text_encoder(captions), self.image_encoder(images), self.log_scale)

    def similarity(self, captions: Tensor, images: Tensor) -> Tensor:
        """``(N,)`` cosine similarity of each caption with its own image, in ``[-1, 1]``; to rerank,
        score ``R`` candidates of a caption and keep the argmax."""
        check_pairs(captions, images)
        text, image = self.embed(captions, images)
        return (text * image).sum(-1)  # (N,)

    def similarity_matrix(self, captions: Tensor, images: Tensor) -> Tensor:
        """``(N, M)`` cosine similarities of every caption with every image (unscaled by ``s``)."""
        text, image = self.embed(captions, images)
        return text @ image.T  # (N, M)


def check_pairs(captions: Tensor, images: Tensor) -> None:
    if len(captions) != len(images):
        raise DgmError(f"{len(captions)} captions and {len(images)} images: pass one image per caption")
