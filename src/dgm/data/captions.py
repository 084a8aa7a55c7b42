"""Captions as word ids: the one tokenizer rule, a closed vocabulary, and class names as captions.

A caption is split into lowercase words (:func:`words`); a :class:`CaptionVocabulary` maps word
``words[i]`` to id ``i + 1`` and pads every caption with id 0 after its last word, to ``length``
ids. Text-to-image models (DALL-E, Ramesh et al. 2021, arXiv:2102.12092) read these ids in front of
the image tokens.

Data with captions of its own (``scenes``) names its vocabulary in ``spec.extras["caption_words"]``
and ``["caption_length"]``; labelled data without captions is captioned by its class names
(:func:`class_caption`: ``"T-shirt/top"`` -> ``"t-shirt or top"``), so the same model can be
trained on any labelled data set.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError

_WORD = re.compile(r"[\w'-]+")  # letters, digits, apostrophes and hyphens: "t-shirt" is one word


def words(text: str) -> list[str]:
    """The lowercase words of ``text``; punctuation and spacing between words are dropped."""
    return _WORD.findall(text.lower())


def class_caption(name: str) -> str:
    """The caption of a class name: lowercase words, ``"/"`` read as ``" or "``."""
    return " ".join(words(name.replace("/", " or ")))


class CaptionVocabulary:
    """A closed set of words and the most words per caption.

    Args:
        words: the known words, each one word of :func:`words`; id ``i + 1`` is ``words[i]``.
        length: the most words a caption may have (``Lc``, the width of the id tensors).

    Example::

        vocab = CaptionVocabulary(["a", "red", "circle"], length=3)
        vocab.encode(["a red circle", "a circle"])  # tensor([[1, 2, 3], [1, 3, 0]])
    """

    def __init__(self, words: Sequence[str], length: int) -> None:
        self.words = [str(w) for w in words]
        self.length = int(length)
        bad = [w for w in self.words if not (_WORD.fullmatch(w) and w == w.lower())]
        if bad or not self.words:
            raise DgmError(f"a caption vocabulary needs at least one word and single lowercase words only, "
                           f"not {', '.join(map(repr, bad))}: split or lowercase them")
        if len(set(self.words)) != len(self.words):
            raise DgmError("a caption vocabulary lists a word twice: list each word once")
        if self.length < 1:
            raise DgmError(f"a caption length of {self.length} words holds no caption: use at least 1")
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        """The number of ids, counting the padding id 0."""
        return len(self.words) + 1

    def __repr__(self) -> str:
        return f"CaptionVocabulary({len(self.words)} words, length={self.length})"

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Word ids ``(N, Lc)`` int64 of the captions ``texts``, padded with 0 after the last word.

        Raises:
            DgmError: a caption with no words, a word outside the vocabulary, or more than ``length`` words.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.length, dtype=torch.int64)
        for n, text in enumerate(texts):
            ws = words(text)
            if not ws:
                raise DgmError(f"the caption {text!r} has no words: give at least one word of the vocabulary "
                               f"({', '.join(sorted(self.words))})")
            unknown = list(dict.fromkeys(w for w in ws if w not in self._ids))
            if unknown:
                raise DgmError(f"the caption {text!r} has words outside the vocabulary: "
                               f"{', '.join(map(repr, unknown))}; known words: {', '.join(sorted(self.words))}: "
                               "use only those")
            if len(ws) > self.length:
                raise DgmError(f"the caption {text!r} has {len(ws)} words, more than the model's context of "
                               f"{self.length} words: shorten it")
            out[n, :len(ws)] = torch.tensor([self._ids[w] for w in ws])
        return out

    def decode(self, ids: Tensor) -> list[str]:
        """The captions of word ids ``(N, Lc)``: the words of the non-padding ids joined by one space.

        Raises:
            DgmError: an id outside ``0 .. size - 1``.
        """
        ids = torch.as_tensor(ids).long().cpu().reshape(len(ids), -1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.size):
            raise DgmError(f"caption ids must lie in 0..{self.size - 1} (0 is padding), found "
                           f"{int(ids.min())}..{int(ids.max())}: encode captions with this vocabulary")
        return [" ".join(self.words[i - 1] for i in row.tolist() if i) for row in ids]


def caption_vocabulary(spec: DataSpec) -> CaptionVocabulary | None:
    """The vocabulary of the data of ``spec``: its own captions' (``spec.extras["caption_words"]``),
    else that of its class captions (:func:`class_caption`), else ``None`` (no captions at all)."""
    if "caption_words" in spec.extras:
        return CaptionVocabulary(spec.extras["caption_words"], spec.extras["caption_length"])
    if spec.class_names:
        captions = [words(class_caption(name)) for name in spec.class_names]
        return CaptionVocabulary(list(dict.fromkeys(w for ws in captions for w in ws)), max(map(len, captions)))
    return None


def class_caption_ids(spec: DataSpec) -> Tensor | None:
    """Word ids ``(num_classes, Lc)`` of the class captions of labelled data without captions of its
    own (row k captions class k); ``None`` for other data."""
    if "caption_words" in spec.extras or not spec.class_names:
        return None
    return caption_vocabulary(spec).encode([class_caption(name) for name in spec.class_names])


def caption_ids(batch: Batch, spec: DataSpec, class_captions: Tensor | None = None) -> Tensor:
    """Word ids ``(B, Lc)`` of the captions of ``batch``: its own, or the class captions of its labels
    (``class_captions``, the table of :func:`class_caption_ids`, which a caller that asks every step
    makes once; ``None``: made here).

    Raises:
        DgmError: the data has neither captions nor class names, the batch lacks the data's own
            captions, or it has unknown labels.
    """
    if batch.captions is not None:
        return batch.captions
    if "caption_words" in spec.extras:  # class captions would fall outside the data's own grammar
        raise DgmError(f"this batch of {spec.name!r} carries no captions, though the data has them: draw batches "
                       "from the dataset (Dataset.batches), which carry Batch.captions")
    vocab = caption_vocabulary(spec)
    if vocab is None or not spec.class_names:
        raise DgmError(f"dataset {spec.name!r} has neither captions nor class names: choose captioned data "
                       "(scenes) or labelled data")
    if batch.y is None:
        raise DgmError(f"this batch of {spec.name!r} carries no labels to caption: load the data with its labels")
    y = batch.y
    if len(y) and (y.min() < 0 or y.max() >= len(spec.class_names)):
        raise DgmError(f"the batch has labels outside 0..{len(spec.class_names) - 1} (-1 marks an unknown label), "
                       "which have no class caption: caption only labelled examples (Dataset.known_labels())")
    table = class_caption_ids(spec) if class_captions is None else class_captions  # (num_classes, Lc)
    return table.to(y.device)[y]
