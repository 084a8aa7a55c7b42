"""The CLIP-style contrastive model (dgm.nn.contrastive): the loss against a hand computation, its
clipped scale, the encoders' shapes, padding and word order, and a quick fit."""
from __future__ import annotations

import math

import pytest
import torch

from dgm.errors import DgmError
from dgm.nn.contrastive import (
    LOG_SCALE_INIT,
    LOG_SCALE_MAX,
    ContrastiveModel,
    ImageEncoder,
    TextEncoder,
    contrastive_loss,
)

TEXT = [[1.0, 2.0], [-0.5, 0.3], [0.2, -1.0]]
IMAGE = [[0.9, 1.5], [0.1, 0.4], [-0.3, -0.8]]


def hand_loss(text: list[list[float]], image: list[list[float]], scale: float) -> float:
    """CLIP's symmetric cross-entropy with explicit loops: cosine similarities, then each row's and
    each column's log-sum-exp minus its diagonal entry."""
    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    t, v = [unit(r) for r in text], [unit(r) for r in image]
    b = len(t)
    logits = [[scale * sum(x * y for x, y in zip(t[i], v[j])) for j in range(b)] for i in range(b)]

    def ce(rows):  # mean over rows of -log softmax(row)[i]
        total = 0.0
        for i, row in enumerate(rows):
            m = max(row)
            total += m + math.log(sum(math.exp(a - m) for a in row)) - row[i]
        return total / len(rows)

    columns = [[logits[i][j] for i in range(b)] for j in range(b)]
    return (ce(logits) + ce(columns)) / 2


def test_loss_equals_a_hand_computation():
    text, image = torch.tensor(TEXT, dtype=torch.float64), torch.tensor(IMAGE, dtype=torch.float64)
    for s in [0.0, 1.3, LOG_SCALE_INIT]:
        got = contrastive_loss(text, image, torch.tensor(s, dtype=torch.float64))
        assert got.item() == pytest.approx(hand_loss(TEXT, IMAGE, math.exp(s)), rel=1e-12)


def test_the_scale_is_clipped_at_100():
    text, image = torch.tensor(TEXT, dtype=torch.float64), torch.tensor(IMAGE, dtype=torch.float64)
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    got = contrastive_loss(text, image, s)
    assert got.item() == pytest.approx(hand_loss(TEXT, IMAGE, 100.0), rel=1e-12)
    got.backward()
    assert s.grad.item() == 0.0  # clipped: no gradient pushes it further
    assert math.exp(LOG_SCALE_MAX) == pytest.approx(100.0)
    assert math.exp(-LOG_SCALE_INIT) == pytest.approx(0.07)


def test_identical_embeddings_give_log_b():
    for b in [1, 2, 5]:
        e = torch.ones(b, 4)
        assert contrastive_loss(e, 3 * e, torch.tensor(2.0)).item() == pytest.approx(math.log(b), abs=1e-6)


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(DgmError, match="one image per caption"):
        contrastive_loss(torch.ones(3, 2), torch.ones(4, 2), torch.tensor(0.0))


def model(vocab: int = 12, length: int = 6) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(TextEncoder(vocab, length, width=32, depth=2, heads=4, embed_dim=16),
                            ImageEncoder(3, 32, width=8, embed_dim=16))


def test_shapes():
    m = model()
    captions = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0]])
    images = torch.rand(2, 3, 32, 32)
    assert m.text_encoder(captions).shape == (2, 16)
    assert m.image_encoder(images).shape == (2, 16)
    assert m.loss(captions, images).shape == ()
    sim = m.similarity(captions, images)
    assert sim.shape == (2,) and sim.abs().max() <= 1 + 1e-6
    matrix = m.similarity_matrix(captions, torch.rand(5, 3, 32, 32))
    assert matrix.shape == (2, 5)
    assert torch.allclose(m.similarity_matrix(captions, images).diagonal(), sim, atol=1e-6)
    assert m.log_scale.item() == pytest.approx(LOG_SCALE_INIT)


def test_bad_input_is_refused():
    m = model()
    with pytest.raises(DgmError, match="word ids"):
        m.text_encoder(torch.tensor([[12, 1]]))
    with pytest.raises(DgmError, match="at most 6"):
        m.text_encoder(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(DgmError, match="no words"):
        m.text_encoder(torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(DgmError, match="shape"):
        m.image_encoder(torch.rand(1, 1, 32, 32))
    with pytest.raises(DgmError, match="one image per caption"):
        m.similarity(torch.ones(2, 3, dtype=torch.long), torch.rand(3, 3, 32, 32))


def test_text_encoder_ignores_padding_and_reads_word_order():
    enc = model().text_encoder
    short = torch.tensor([[3, 7, 2, 0], [5, 0, 0, 0]])
    out = enc(short)
    # more padding after the words, and another caption beside it in the batch, change nothing
    longer = torch.cat([short, torch.zeros(2, 2, dtype=torch.long)], 1)
    assert torch.allclose(enc(longer), out, atol=1e-5)
    assert torch.allclose(enc(torch.tensor([[3, 7, 2, 0, 0, 0], [1, 2, 3, 4, 5, 6]]))[0], out[0], atol=1e-5)
    # the same words in another order are another caption
    assert not torch.allclose(enc(torch.tensor([[2, 7, 3, 0]]))[0], out[0], atol=1e-3)


def toy_scenes() -> torch.Tensor:
    """Eight images in [0, 1] on black: a block of one primary colour, each at its own place."""
    x = torch.zeros(8, 3, 32, 32)
    for i in range(8):
        row, col = divmod(i, 4)
        x[i, i % 3, 16 * row: 16 * row + 12, 8 * col: 8 * col + 8] = 1
    return x


def test_a_quick_fit_matches_captions_to_images():
    m = model(vocab=10, length=4)
    # two pairs of captions differ only in word order
    captions = torch.tensor([[1, 2, 0, 0], [2, 1, 0, 0], [3, 4, 5, 0], [5, 4, 3, 0],
                             [6, 0, 0, 0], [7, 8, 0, 0], [9, 1, 2, 3], [8, 7, 0, 0]])
    images = toy_scenes()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(captions, images).item()
    for _ in range(40):
        loss = m.loss(captions, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert m.loss(captions, images).item() < 0.05 * first
        assert torch.equal(m.similarity_matrix(captions, images).argmax(1), torch.arange(8))
        assert torch.equal(m.similarity_matrix(captions, images).argmax(0), torch.arange(8))
