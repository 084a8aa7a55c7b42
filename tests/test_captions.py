"""Captions as word ids: the tokenizer rule, the vocabulary's round trip and refusals, class captions."""
from __future__ import annotations

import pytest
import torch

from dgm import data
from dgm.data import scenes
from dgm.data.captions import CaptionVocabulary, caption_ids, caption_vocabulary, class_caption, words
from dgm.data.core import Batch, DataSpec
from dgm.data.sources import FASHION_MNIST_CLASSES, Request
from dgm.errors import DgmError

FASHION = DataSpec("fashion-mnist", (1, 28, 28), class_names=FASHION_MNIST_CLASSES, num_classes=10)


def test_words_and_class_captions():
    assert words("A Small,  RED circle.") == ["a", "small", "red", "circle"]
    assert words("  ") == []
    assert class_caption("T-shirt/top") == "t-shirt or top"
    assert class_caption("Ankle boot") == "ankle boot"
    assert class_caption("7") == "7"


def test_encode_pads_after_the_last_word_and_decode_inverts_it():
    vocab = CaptionVocabulary(["a", "red", "circle"], length=3)
    assert vocab.size == 4 and vocab.words == ["a", "red", "circle"]
    assert vocab.encode(["a red circle", "A circle"]).tolist() == [[1, 2, 3], [1, 3, 0]]
    assert vocab.encode([]).shape == (0, 3)
    assert vocab.decode(torch.tensor([[1, 2, 3], [1, 3, 0]])) == ["a red circle", "a circle"]


def test_every_scene_caption_and_class_caption_round_trips():
    texts = scenes.caption(scenes.load(Request("test")).factors)
    vocab = caption_vocabulary(DataSpec("scenes", (3, 32, 32), extras={"caption_words": scenes.CAPTION_WORDS,
                                                                       "caption_length": scenes.CAPTION_LENGTH}))
    assert (vocab.size, vocab.length) == (14, 10)
    assert vocab.decode(vocab.encode(texts)) == texts
    fashion = caption_vocabulary(FASHION)
    assert fashion.length == 3 and fashion.words[:4] == ["t-shirt", "or", "top", "trouser"]
    names = [class_caption(n) for n in FASHION_MNIST_CLASSES]
    assert fashion.decode(fashion.encode(names)) == [" ".join(words(t)) for t in names]
    assert caption_vocabulary(DataSpec("ring8", (2,), "continuous", levels=None)) is None


@pytest.mark.parametrize("text, message", [
    ("a purple circle", "has words outside the vocabulary: 'purple'; known words: a, above, blue, circle"),
    ("a small red circle left of a large blue square above", "has 11 words, more than the model's context of "
                                                             "10 words: shorten it"),
    ("", "has no words"),
    (" ,. ", "has no words"),
])
def test_bad_captions_are_refused_with_what_to_fix(text, message):
    vocab = scenes.vocabulary()
    with pytest.raises(DgmError, match=message):
        vocab.encode(["a red circle", text])


def test_bad_vocabularies_and_ids_are_refused():
    with pytest.raises(DgmError, match="single lowercase words"):
        CaptionVocabulary(["a", "Red"], 3)
    with pytest.raises(DgmError, match="single lowercase words"):
        CaptionVocabulary(["a", "left of"], 3)
    with pytest.raises(DgmError, match="twice"):
        CaptionVocabulary(["a", "a"], 3)
    with pytest.raises(DgmError, match="at least 1"):
        CaptionVocabulary(["a"], 0)
    with pytest.raises(DgmError, match=r"0\.\.3"):
        CaptionVocabulary(["a", "red", "circle"], 3).decode(torch.tensor([[1, 4, 0]]))


def test_labelled_data_is_captioned_by_its_class_names():
    digits = data.load("digits")
    batch = digits.tensors(20)
    assert batch.captions is None
    vocab = caption_vocabulary(digits.spec)
    assert vocab.words == [str(d) for d in range(10)] and vocab.length == 1
    ids = caption_ids(batch, digits.spec)
    assert ids.shape == (20, 1) and vocab.decode(ids) == [str(int(y)) for y in batch.y]
    hidden = digits.with_labelled(10, seed=0).tensors(200)
    with pytest.raises(DgmError, match="-1 marks an unknown label"):
        caption_ids(hidden, digits.spec)
    with pytest.raises(DgmError, match="carries no labels"):
        caption_ids(Batch(batch.x), digits.spec)
    scenes_spec = data.load("scenes", "test").spec
    with pytest.raises(DgmError, match="carries no captions"):
        caption_ids(Batch(batch.x, batch.y), scenes_spec)
    ring = data.load("ring8", "test").tensors(4)
    with pytest.raises(DgmError, match="neither captions nor class names"):
        caption_ids(ring, data.load("ring8", "test").spec)
