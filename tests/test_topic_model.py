"""ProdLDA (Srivastava & Sutton 2017) and the topic metrics: known answers for the document
likelihood, the Laplace prior, the KL, the vocabulary and NPMI; training lowers the held-out
perplexity; the contract's checks on the contract's token data."""
from __future__ import annotations

import math

import pytest
import torch

from dgm.data.core import Dataset, DataSpec
from dgm.data.sequences import pack
from dgm.errors import DgmError
from dgm.eval import evaluate
from dgm.eval.text import npmi_matrix, topic_npmi
from dgm.models import Progress, capabilities, create
from dgm.models.topic_model import laplace_prior, multinomial_log_likelihood
from dgm.nn.distributions import normal_log_prob
from dgm.train import checkpoint as ckpt

#: the settings the contract test would use
TINY = {"topics": 3, "vocab_size": 16, "hidden": (16,)}


def corpus(texts: list[bytes], length: int = 64, train: bool = True) -> Dataset:
    x, lengths = pack(texts, length)
    spec = DataSpec("docs", (length,), "levels", levels=256, kind="tokens")
    return Dataset(torch.from_numpy(x), None, spec, train=train, lengths=torch.from_numpy(lengths))


def prepared(texts: list[bytes], **config) -> tuple:
    data = corpus(texts)
    torch.manual_seed(0)
    model = create("prodlda", data.spec, **config)
    model.prepare(data)
    return model, data


# --- known answers --------------------------------------------------------------------------------
def test_document_log_likelihood_matches_the_words_counted_by_hand():
    """log p(w | theta) = sum over the document's words of log softmax(beta^T theta + b)_w, on a
    3-word vocabulary (a 4th slot unused: never drawn, no NaN)."""
    model, _ = prepared([b"apple banana cherry", b"apple banana", b"apple"], topics=2, vocab_size=4,
                        batch_norm=False)
    assert model.vocabulary == ["apple", "banana", "cherry", ""]  # by document frequency
    beta = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.0, 1.5, -1.0, 0.7]])  # (K, V)
    bias = torch.tensor([0.1, -0.2, 0.3, 5.0])
    with torch.no_grad():
        model.topic_words.weight.copy_(beta.T)
        model.topic_words.bias.copy_(bias)
    theta = torch.tensor([[0.25, 0.75]])
    doc = corpus([b"Cherry, apple; APPLE and a banana-split!"]).tensors(1)
    counts = model.bag_of_words(doc.x, doc.mask)
    torch.testing.assert_close(counts, torch.tensor([[2.0, 1.0, 1.0, 0.0]]))  # "split" is not a known word
    logits = [sum(theta[0, k].item() * beta[k, v].item() for k in range(2)) + bias[v].item() for v in range(3)]
    log_z = math.log(sum(math.exp(u) for u in logits))
    by_hand = sum(logits[v] - log_z for v in (2, 0, 0, 1))  # cherry apple apple banana
    got = multinomial_log_likelihood(counts, model.word_logits(theta))
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


def test_laplace_prior_matches_the_papers_closed_form():
    """Srivastava & Sutton 2017, eq. 7, for alpha = (0.5, 1, 2)."""
    alpha = [0.5, 1.0, 2.0]
    K = 3
    mean_log = sum(math.log(a) for a in alpha) / K
    inverse_sum = sum(1 / a for a in alpha)
    mean, log_var = laplace_prior(torch.tensor(alpha, dtype=torch.float64))
    for k, a in enumerate(alpha):
        assert mean[k].item() == pytest.approx(math.log(a) - mean_log)
        assert log_var[k].exp().item() == pytest.approx((1 / a) * (1 - 2 / K) + inverse_sum / K ** 2)
    model = create("prodlda", corpus([b"x"]).spec, topics=20, alpha=1.0)  # symmetric: mean 0, var 1 - 1/K
    torch.testing.assert_close(model.prior_mean, torch.zeros(20))
    torch.testing.assert_close(model.prior_log_var.exp(), torch.full((20,), 0.95))


def test_kl_closed_form_matches_monte_carlo():
    model = create("prodlda", corpus([b"x"]).spec, topics=4, alpha=0.3).double()
    mean = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.0, -1.0, 0.5, 1.0]], dtype=torch.float64)
    exact = model.kl(mean, log_var).sum().item()
    g = torch.Generator().manual_seed(0)
    z = mean + (0.5 * log_var).exp() * torch.randn(200_000, 4, generator=g, dtype=torch.float64)
    log_ratio = (normal_log_prob(z, mean, log_var) - normal_log_prob(z, model.prior_mean, model.prior_log_var)).sum(1)
    stderr = log_ratio.std().item() / math.sqrt(len(z))
    assert abs(log_ratio.mean().item() - exact) < 4 * stderr


def test_vocabulary_by_document_frequency_survives_a_state_dict_round_trip():
    texts = [b"The cat sat on the mat with another CAT", b"A cat and a dog", b"dog days of summer",
             b"an ox is an ox", b"zebra " + b"z" * 25]
    model, data = prepared(texts, topics=2, vocab_size=5)
    # cat, dog in 2 documents; then alphabetically; stop words, "ox" (2 letters) and a 26-letter word left out
    assert model.vocabulary == ["cat", "dog", "days", "mat", "sat"]
    other, _ = prepared([b"giraffe elephant giraffe"], topics=2, vocab_size=5)
    batch = data.tensors(5)
    assert other.bag_of_words(batch.x, batch.mask).sum() == 0  # its own vocabulary, cached
    other.load_state_dict(model.state_dict())  # the buffer changes: the cached word ids must follow
    assert other.vocabulary == model.vocabulary
    torch.testing.assert_close(other.bag_of_words(batch.x, batch.mask), model.bag_of_words(batch.x, batch.mask))
    torch.testing.assert_close(model.bag_of_words(batch.x, batch.mask)[0], torch.tensor([2.0, 0, 0, 1, 1]))


def test_a_model_without_vocabulary_or_words_is_refused():
    data = corpus([b"apple banana", b"cherry"])
    model = create("prodlda", data.spec, topics=2, vocab_size=4)
    with pytest.raises(DgmError, match="prepare"):
        model.loss(data.tensors(2), "model", Progress())
    with pytest.raises(DgmError, match="prepare"):
        model.sample(2)
    with pytest.raises(DgmError, match="no words"):
        model.prepare(corpus([b"the of an", b"a b c"]))
    from conftest import image_dataset

    with pytest.raises(DgmError, match="docs:PATH"):
        create("prodlda", image_dataset(n=4).spec)


def test_npmi_against_a_hand_computation():
    # 4 documents; word 0 in documents 0, 1; word 1 in 0, 1, 2; word 2 in 3; word 3 in all
    incidence = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    npmi = npmi_matrix(incidence)
    pair01 = math.log((2 / 4) / ((2 / 4) * (3 / 4))) / -math.log(2 / 4)  # = log(4/3) / log 2
    assert npmi[0, 1].item() == pytest.approx(pair01)
    assert npmi[0, 2].item() == -1 and npmi[1, 2].item() == -1  # never in one document
    assert npmi[0, 3].item() == pytest.approx(0.0)  # word 3 is everywhere: independent of every word
    only_everywhere = torch.ones(3, 2, dtype=torch.bool)
    assert npmi_matrix(only_everywhere)[0, 1].item() == 1.0
    per_topic = topic_npmi(torch.tensor([[0, 1, 2], [0, 1, 3]]), incidence)
    torch.testing.assert_close(per_topic, torch.tensor([(pair01 - 2) / 3, (pair01 + 0 + 0) / 3], dtype=torch.float64))


# --- training --------------------------------------------------------------------------------------
FRUIT = [b"apple", b"banana", b"cherry", b"grape", b"lemon"]
SPACE = [b"rocket", b"planet", b"comet", b"galaxy", b"orbit"]


def two_topic_corpus(n: int, seed: int, train: bool) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    texts = []
    for i in range(n):
        words = FRUIT if i % 2 else SPACE
        texts.append(b" ".join(words[j] for j in torch.randint(5, (8,), generator=g).tolist()))
    return corpus(texts, train=train)


def test_training_on_two_obvious_topics_lowers_the_held_out_perplexity():
    train, test = two_topic_corpus(200, 0, True), two_topic_corpus(40, 1, False)
    torch.manual_seed(0)
    model = create("prodlda", train.spec, topics=2, vocab_size=12, hidden=(32,), dropout=0.0)
    model.prepare(train)
    assert sorted(model.vocabulary[:10]) == sorted(w.decode() for w in FRUIT + SPACE)

    def perplexity() -> float:
        return evaluate(model, test, ["topic_perplexity"], progress=False)[0].value

    before = perplexity()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(200):
        batch = next(iter(train.batches(50, generator=g)))
        optimiser.zero_grad()
        model.loss(batch, "model", Progress(step=step)).loss.backward()
        optimiser.step()
    after = perplexity()
    # uniform over the 10 words: 10; knowing the document's topic: 5 (plus the KL of the bound)
    assert before > 8 and after < 0.7 * before, (before, after)
    assert sorted(sorted(words) for words in model.topics(5)) == sorted(sorted(w.decode() for w in topic)
                                                                       for topic in (FRUIT, SPACE))
    coherence = evaluate(model, test, ["topic_coherence"], progress=False)[0]
    assert -1 <= coherence.value <= 1 and len(coherence.details["top_words"]) == 2


# --- the contract, on its token data --------------------------------------------------------------
def contract_model():
    from test_contract import token_dataset

    data = token_dataset()
    torch.manual_seed(0)
    model = create("prodlda", data.spec, **TINY)
    model.prepare(data)
    return model, data


def test_contract_loss_gradients_samples_and_round_trip(tmp_path):
    model, data = contract_model()
    assert {"document_elbo", "topics", "bag_of_words", "sample"} <= capabilities(model)
    assert not {"log_prob", "elbo", "iwae_bound"} & capabilities(model)  # it does not score the bytes
    out = model.loss(data.tensors(16), "model", Progress())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    model.eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 32) and x.dtype == torch.long
    torch.testing.assert_close(model.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    known = set(model.vocabulary) - {""}
    for row in x.tolist():
        text = bytes(t for t in row if t).decode()
        assert text and set(text.split()) <= known
    ckpt.save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    clone = create("prodlda", data.spec, **TINY).eval()  # not prepared: the vocabulary comes with the weights
    ckpt.load_state_dict_checked(clone, ckpt.load_tensors(tmp_path / "w.safetensors"), tmp_path)
    torch.testing.assert_close(clone.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    assert clone.topics(3) == model.topics(3)
    title, table, columns, _ = model.report_figures()[0]
    assert title == "Topics" and columns == 0 and len(table.splitlines()) == TINY["topics"]


def test_document_elbo_is_the_bound_of_one_seeded_sample():
    model, data = contract_model()
    model.eval()
    batch = data.tensors(8)
    elbo, words = model.document_elbo(batch.x, batch.mask, generator=torch.Generator().manual_seed(3))
    assert elbo.shape == words.shape == (8,) and (elbo <= 0).all()
    counts = model.bag_of_words(batch.x, batch.mask)
    torch.testing.assert_close(words, counts.sum(1))
    mean, log_var = model.posterior_params(counts)
    z = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    expected = multinomial_log_likelihood(counts, model.word_logits(z.softmax(-1)))
    torch.testing.assert_close(elbo, expected - model.kl(mean, log_var).sum(1))
