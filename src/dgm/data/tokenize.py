"""Byte-level BPE subwords: learnt from the training text with the ``tokenizers`` library, stored as merges.

Byte-pair encoding (Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with
Subword Units", arXiv:1508.07909) starts from the 256 bytes and repeatedly adds the most frequent
adjacent pair of tokens as a new token; the byte-level variant of GPT-2 (Radford et al. 2019) never
merges across the pre-tokenizer's word boundaries, so a space sticks to the word after it. Learning
and applying the merges is the ``tokenizers`` library's (Hugging Face); this module only fixes the
numbering and keeps the merges in a form that saves with a model's weights:

* token ``b < 256`` is byte ``b`` (so token 0 is the data's padding / end token, as for bytes);
* token ``256 + i`` is merge ``i``, the pair of tokens ``merges[i] = (left, right)``, in the order the
  merges were learnt (their priority); rows of ``-1`` are unused (a corpus too small for them all).

The merges array has a shape fixed by the number of merges asked for, so a model keeps it in a
buffer (:meth:`dgm.models.base.GenerativeModel.prepare` fills it) and a loaded run rebuilds the same
tokenizer. Decoding concatenates each token's bytes, so ``decode(encode(text)) == text`` for any
bytes: runs that are not valid UTF-8 are encoded byte by byte.
"""
from __future__ import annotations

import functools
import json
import re

import numpy as np

NUM_BYTES = 256
_SURROGATE = re.compile("([\udc80-\udcff])")  # a byte that is not valid UTF-8, as decoded by surrogateescape


@functools.lru_cache(maxsize=1)
def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in character of each byte (the alphabet of byte-level BPE in
    ``tokenizers``): printable Latin-1 bytes stand for themselves, the others for chr(256 + k)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(NUM_BYTES):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(NUM_BYTES + extra)
            extra += 1
    return [symbols[b] for b in range(NUM_BYTES)]


def _pre_tokenizer():  # noqa: ANN202
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def learn_merges(texts: list[bytes], merges: int) -> np.ndarray:
    """The first ``merges`` byte-level BPE merges learnt from ``texts``, ``(merges, 2)`` int64 token
    pairs in this module's numbering, ``-1`` rows where the texts gave fewer."""
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    symbols = byte_symbols()
    trainer = trainers.BpeTrainer(vocab_size=NUM_BYTES + merges, initial_alphabet=symbols, show_progress=False,
                                  min_frequency=2)
    tokenizer.train_from_iterator((t.decode("utf-8", "surrogateescape") for t in texts), trainer)
    learnt = json.loads(tokenizer.to_str())["model"]["merges"]
    ids = {s: b for b, s in enumerate(symbols)}  # token string -> id in this numbering
    out = np.full((merges, 2), -1, np.int64)
    for i, pair in enumerate(learnt[:merges]):
        left, right = pair.split(" ") if isinstance(pair, str) else pair
        out[i] = ids[left], ids[right]
        ids[left + right] = NUM_BYTES + i
    return out


class Subwords:
    """The tokenizer of a merges array (module docstring): ``encode`` bytes to token ids, ``decode`` back."""

    def __init__(self, merges: np.ndarray) -> None:
        from tokenizers import Tokenizer, models

        merges = np.asarray(merges, np.int64)
        self.pieces = [bytes([b]) for b in range(NUM_BYTES)]  # the bytes of each token
        strings = list(byte_symbols())
        pairs = []
        for left, right in merges:
            if left < 0:  # an unused merge: the token never appears
                self.pieces.append(b"")
                strings.append(None)
                continue
            self.pieces.append(self.pieces[left] + self.pieces[right])
            strings.append(strings[left] + strings[right])
            pairs.append((strings[left], strings[right]))
        self.vocab_size = len(self.pieces)
        vocab = {s: i for i, s in enumerate(strings) if s is not None}
        self._tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
        self._tokenizer.pre_tokenizer = _pre_tokenizer()

    def encode(self, texts: list[bytes]) -> list[list[int]]:
        """Token ids of each text; bytes that are not valid UTF-8 become their byte tokens."""
        decoded = [t.decode("utf-8", "surrogateescape") for t in texts]
        clean = [s for s in decoded if not _SURROGATE.search(s)]
        encoded = iter(e.ids for e in self._tokenizer.encode_batch(clean, add_special_tokens=False))
        out = []
        for s in decoded:
            if not _SURROGATE.search(s):
                out.append(next(encoded))
                continue
            ids: list[int] = []
            for i, run in enumerate(_SURROGATE.split(s)):  # odd positions: the stray bytes
                if i % 2:
                    ids.append(ord(run) - 0xDC00)
                elif run:
                    ids += self._tokenizer.encode(run, add_special_tokens=False).ids
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)


@functools.lru_cache(maxsize=8)
def subwords(merges: bytes) -> Subwords:
    """The :class:`Subwords` of a merges array given as its bytes (``array.tobytes()``), cached: a
    model rebuilds its tokenizer only when its merges buffer changes (after ``prepare`` or a load)."""
    return Subwords(np.frombuffer(merges, np.int64).reshape(-1, 2))
