"""ProdLDA: a neural topic model of documents as bags of words, trained by autoencoding VI.

Srivastava & Sutton 2017, "Autoencoding Variational Inference for Topic Models", arXiv:1703.01488.

Words: a document is one token sequence of the byte data (:mod:`dgm.data.sequences`, 0 = padding);
its words are the runs of ASCII letters of its lowercased bytes (``[a-z]+``), without scikit-learn's
English stop words and words of one or two letters. The vocabulary, the ``vocab_size`` words found in
most documents of the training split (ties alphabetically), is learnt by :meth:`ProdLDA.prepare` and
kept in a buffer saved with the weights. A document is its word counts ``n (V,)``, ``N = sum_v n_v``.

The generative model (sec. 3, with the Laplace approximation of sec. 3.2)::

    z ~ N(mu_1, Sigma_1),  theta = softmax(z)                     (logistic normal ~ Dirichlet(alpha))
    w_1 .. w_N ~ Categorical(softmax(beta^T theta))               (product of experts, sec. 3.3)

with the Dirichlet(alpha) prior over K topics approximated in the softmax basis (eq. 7)::

    mu_1k     = log a_k - 1/K sum_i log a_i
    Sigma_1kk = 1/a_k (1 - 2/K) + 1/K^2 sum_i 1/a_i

The topic-word matrix ``beta (K, V)`` is not normalised: the words' logits are a weighted sum of the
topics' (the "product of experts" that sets ProdLDA apart from LDA's mixture), batch-normalised as
in the paper (with a learnt scale and shift). A topic's words are those of largest weight in its row
of beta less the mean row: a part shared by every topic moves every document's logits alike
(``sum_k theta_k = 1``), as the batch norm's shift does. The inference network maps counts to q(z|n) = N(mu(n), diag sigma^2(n)). The ELBO
(eq. 2 in the softmax basis), in nats per document::

    ELBO(n) = E_q[sum_v n_v log softmax(beta^T theta)_v] - KL(q(z|n) || N(mu_1, Sigma_1))

with one reparameterised sample of z and the KL of two diagonal Gaussians in closed form. The
likelihood is that of the document's words in their order: the multinomial's count-permutation
constant ``N! / prod_v n_v!`` is left out (it does not depend on the model), so the ELBO per word
gives a perplexity per word (an upper bound: the ELBO is a lower bound). Training minimises the
negative ELBO per word of the batch.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, Dataset
from dgm.data.sequences import unpack
from dgm.errors import DgmError
from dgm.models.base import Loss, Progress, capability, randn, register
from dgm.models.language import TextModel
from dgm.models.vae import weighted_kl
from dgm.nn.distributions import diagonal_gaussian, normal_kl
from dgm.nn.likelihoods import sample_categorical
from dgm.settings import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

MAX_WORD_BYTES = 24  # a vocabulary row: longer words are left out of the vocabulary
MIN_WORD_LETTERS = 3  # words of 1-2 letters carry little topic
WORD = re.compile(rb"[a-z]+")


@functools.cache
def stop_words() -> frozenset[bytes]:
    """scikit-learn's English stop words as bytes (imported on first use: it pulls in scipy)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(w.encode() for w in ENGLISH_STOP_WORDS)


def words(text: bytes) -> list[bytes]:
    """The words of a document's bytes, in order: lowercase runs of ASCII letters, without stop words
    and words shorter than :data:`MIN_WORD_LETTERS`."""
    stop = stop_words()
    return [w for w in WORD.findall(text.lower()) if len(w) >= MIN_WORD_LETTERS and w not in stop]


def learn_vocabulary(texts: list[bytes], size: int) -> list[bytes]:
    """The ``size`` words of :func:`words` in the most documents of ``texts`` (document frequency),
    ties broken alphabetically, each at most :data:`MAX_WORD_BYTES` bytes; fewer if the texts hold fewer."""
    frequency = Counter(w for text in texts for w in set(words(text)) if len(w) <= MAX_WORD_BYTES)
    return sorted(frequency, key=lambda w: (-frequency[w], w))[:size]


def laplace_prior(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance ``(K,)`` of the Gaussian in the softmax basis that approximates a
    Dirichlet(alpha) (Srivastava & Sutton 2017, eq. 7; MacKay 1998)."""
    K = alpha.shape[-1]
    mean = alpha.log() - alpha.log().mean(-1, keepdim=True)
    var = (1 / alpha) * (1 - 2 / K) + (1 / alpha).sum(-1, keepdim=True) / K ** 2
    return mean, var.log()


def multinomial_log_likelihood(counts: Tensor, word_logits: Tensor) -> Tensor:
    """``sum_v n_v log softmax(logits)_v``, ``(B,)``: the words of each document in their order (no
    count-permutation constant). ``counts (B, V)``; logits of ``-inf`` (no word) need zero counts."""
    log_p = F.log_softmax(word_logits, -1)
    return (counts * log_p.masked_fill(counts == 0, 0.0)).sum(-1)  # 0 * -inf is no word, not NaN


@dataclass
class ProdLDAConfig:
    """Settings of :class:`ProdLDA` (``--set model.KEY=VALUE``)."""

    topics: PositiveInt = 20  # K, the dimension of z and theta
    vocab_size: PositiveInt = 2000  # V, words kept (by document frequency in the training split)
    hidden: tuple[PositiveInt, ...] = (100, 100)  # inference network widths (softplus), as the paper
    alpha: PositiveFloat = 1.0  # the symmetric Dirichlet prior's concentration per topic
    dropout: Fraction = 0.2  # dropout of the inference network's last hidden layer and of theta (paper: keep 0.8)
    #: batch-normalise (mu, log sigma^2) and the word logits, the paper's remedy for component collapse;
    #: off: the word logits get a bias instead
    batch_norm: bool = True
    beta: NonNegativeFloat = 1.0  # weight of the KL term; 1 is the ELBO
    kl_warmup_steps: NonNegativeInt = 0  # ramp the KL weight from 0 over this many steps (0: no warm-up)
    sample_words: PositiveInt = 20  # words per sampled document (cut to the data's length)


@register
class ProdLDA(TextModel):
    """ProdLDA, a topic model with a product-of-experts decoder trained by autoencoding VI
    (Srivastava & Sutton 2017, arXiv:1703.01488; module docstring).

    It scores bags of words, not the byte sequences as stored, so it has no ``log_prob`` or
    ``elbo``: :meth:`document_elbo` is its bound, which the ``topic_perplexity`` metric reads.

    Example:
        >>> data = dgm.data.load("docs:notes/")
        >>> model = dgm.create("prodlda", data.spec, topics=10, vocab_size=500)
        >>> model.prepare(data)   # the vocabulary (the trainer does this on a fresh run)
        >>> model.topics(5)       # [['word', ...], ...] one list per topic
    """

    name = "prodlda"
    Config = ProdLDAConfig
    description = "ProdLDA neural topic model over the words of token documents: topics, perplexity, coherence"

    reads = "the words of text documents"

    def __init__(self, config: ProdLDAConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        K, V = config.topics, config.vocab_size
        self.length = spec.shape[0]
        # the vocabulary (prepare): word v's bytes, zero-padded; an all-zero row is an unused slot
        self.register_buffer("vocabulary_bytes", torch.zeros(V, MAX_WORD_BYTES, dtype=torch.uint8))
        mean, log_var = laplace_prior(torch.full((K,), config.alpha, dtype=torch.float64))
        self.register_buffer("prior_mean", mean.float(), persistent=False)  # set by the config
        self.register_buffer("prior_log_var", log_var.float(), persistent=False)
        sizes = [V, *config.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Softplus()]
        self.encoder = nn.Sequential(*layers, nn.Dropout(config.dropout))  # counts -> hidden
        self.posterior = nn.Linear(sizes[-1], 2 * K)  # -> (mu, log sigma^2)
        # BN with a learnt scale and shift (the paper's code learns the shift only): with unit variance
        # across documents, a word's logit could not be peaked enough for a sharp topic (a two-topic
        # corpus, K = 4: held-out perplexity 9.3 without the scale, 7.0 with it; 5 is the truth)
        self.posterior_norm = nn.BatchNorm1d(2 * K) if config.batch_norm else nn.Identity()
        self.theta_dropout = nn.Dropout(config.dropout)
        self.topic_words = nn.Linear(K, V, bias=not config.batch_norm)  # weight (V, K) = beta^T
        self.word_norm = nn.BatchNorm1d(V) if config.batch_norm else nn.Identity()
        self._word_ids: tuple[bytes, dict[bytes, int]] | None = None  # (buffer bytes, word -> column)

    # --- the vocabulary ------------------------------------------------------------------------------
    def prepare(self, data: Dataset) -> None:
        """Learn the vocabulary from the training split's documents (module docstring)."""
        vocabulary = learn_vocabulary(unpack(data.raw, data.lengths), self.config.vocab_size)
        if not vocabulary:
            raise DgmError(f"the training split of {data.spec.name!r} holds no words (runs of 3+ ASCII letters "
                           f"that are not stop words): a topic model needs text")
        table = np.zeros((self.config.vocab_size, MAX_WORD_BYTES), np.uint8)
        for v, word in enumerate(vocabulary):
            table[v, :len(word)] = np.frombuffer(word, np.uint8)
        self.vocabulary_bytes.copy_(torch.from_numpy(table))

    @property
    def vocabulary(self) -> list[str]:
        """The words, in the order of :meth:`bag_of_words`'s columns (``""``: an unused slot)."""
        return [row.tobytes().rstrip(b"\0").decode("ascii") for row in self.vocabulary_bytes.cpu().numpy()]

    def word_ids(self) -> dict[bytes, int]:
        """word -> column, cached while the buffer holds the same bytes (``prepare`` and loading
        weights write it in place; comparing V x 24 bytes costs little next to reading the text)."""
        key = self.vocabulary_bytes.cpu().numpy().tobytes()
        if self._word_ids is None or self._word_ids[0] != key:
            ids = {w.encode(): v for v, w in enumerate(self.vocabulary) if w}
            if not ids:
                raise DgmError(f"model {self.name!r} has no vocabulary yet: call model.prepare(training_data) "
                               f"first (the trainer does on a fresh run)")
            self._word_ids = (key, ids)
        return self._word_ids[1]

    @capability
    def bag_of_words(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Word counts ``(B, V)`` float of token sequences ``x (B, L)`` (``mask``: the real tokens;
        ``None``: those before the first 0); words outside the vocabulary are not counted."""
        ids = self.word_ids()
        texts = unpack(x, None if mask is None else mask.sum(1))
        rows, cols = [], []
        for i, text in enumerate(texts):
            found = [ids[w] for w in words(text) if w in ids]
            rows += [i] * len(found)
            cols += found
        counts = torch.zeros(len(texts), self.config.vocab_size)
        counts.index_put_((torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
                          torch.ones(len(rows)), accumulate=True)
        return counts.to(self.device)

    # --- the generative model and the inference network --------------------------------------------
    def word_logits(self, theta: Tensor) -> Tensor:
        """Logits of the words ``(B, V)`` for topic proportions ``theta (B, K)``: ``beta^T theta``,
        batch-normalised; unused vocabulary slots get ``-inf``."""
        logits = self.word_norm(self.topic_words(theta))
        unused = self.vocabulary_bytes[:, 0] == 0  # (V,)
        return logits.masked_fill(unused, float("-inf"))

    def posterior_params(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(B, K)`` of q(z | n) for word counts ``counts (B, V)``."""
        return diagonal_gaussian(self.posterior_norm(self.posterior(self.encoder(counts))))

    def kl(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """``KL(q(z|n) || N(mu_1, Sigma_1))`` of each topic dimension, ``(B, K)``, closed form."""
        return normal_kl(mean, log_var, self.prior_mean, self.prior_log_var)

    def bound_terms(self, counts: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The expected log-likelihood (one reparameterised sample) ``(B,)`` and the KL per topic
        dimension ``(B, K)`` of word counts ``counts (B, V)``."""
        mean, log_var = self.posterior_params(counts)
        z = mean + (0.5 * log_var).exp() * randn(mean.shape, like=mean, generator=generator)
        theta = self.theta_dropout(z.softmax(-1))  # (B, K)
        return multinomial_log_likelihood(counts, self.word_logits(theta)), self.kl(mean, log_var)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """Negative ELBO per word of the batch (KL weighted by ``beta`` and its warm-up), nats."""
        counts = self.bag_of_words(batch.x, batch.mask)
        expected, kl = self.bound_terms(counts, progress.generator)
        kl_term, weight = weighted_kl(kl, beta=self.config.beta, free_bits=0.0,
                                      warmup_steps=self.config.kl_warmup_steps, step=progress.step)
        n_words = counts.sum().clamp(min=1)  # a batch of documents without known words: per document
        loss = (-expected.sum() + len(counts) * kl_term) / n_words
        neg_elbo = (kl.sum() - expected.sum()).detach() / n_words
        return Loss(loss, {"neg_elbo_per_word": neg_elbo, "kl": kl.sum(-1).mean().detach(),
                           "beta": torch.tensor(weight)})

    @capability
    def document_elbo(self, x: Tensor, mask: Tensor | None = None, *,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The ELBO of each document's words, nats ``(B,)`` (one sample of z; in eval mode no dropout),
        and its number of words in the vocabulary ``(B,)`` (module docstring)."""
        counts = self.bag_of_words(x, mask)
        expected, kl = self.bound_terms(counts, generator)
        return expected - kl.sum(-1), counts.sum(-1)

    def topic_word_weights(self) -> Tensor:
        """``beta (K, V)`` as it sets the words of a topic apart: less the mean topic, since a part
        common to every topic adds the same to the logits of every document (``sum_k theta_k = 1``), as
        the bias or the batch norm's shift does; each word's column rescaled by the batch norm's scale
        over its running standard deviation (the slope of the logits in theta, in eval mode)."""
        beta = self.topic_words.weight.detach().T  # (K, V)
        beta = beta - beta.mean(0)
        norm = self.word_norm
        if isinstance(norm, nn.BatchNorm1d):
            beta = beta * norm.weight.detach() / (norm.running_var + norm.eps).sqrt()
        return beta

    @capability
    def topics(self, n_words: int = 10) -> list[list[str]]:
        """The ``n_words`` words of each topic with the largest weight in ``beta`` (after the batch
        norm's rescaling: :meth:`topic_word_weights`; fewer when the vocabulary is smaller), one list per topic."""
        vocabulary = self.vocabulary
        used = torch.tensor([bool(w) for w in vocabulary], device=self.device)
        weights = self.topic_word_weights().masked_fill(~used, float("-inf"))  # (K, V)
        top = weights.topk(min(n_words, int(used.sum())), dim=-1).indices.tolist()
        return [[vocabulary[v] for v in row] for row in top]

    # --- generation ------------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` documents ``(n, L)`` int64 in the data's format: theta from the (Laplace) prior, then
        ``sample_words`` words from softmax(beta^T theta), joined by spaces and zero-padded; words
        that would pass ``L`` bytes are left out."""
        if condition is not None:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (--class)")
        vocabulary = [w.encode() for w in self.vocabulary]
        self.word_ids()  # refuses a model without a vocabulary
        mean = self.prior_mean.expand(n, -1)
        z = mean + (0.5 * self.prior_log_var).exp() * randn(mean.shape, like=mean, generator=generator)
        logits = self.word_logits(z.softmax(-1))  # (n, V)
        drawn = sample_categorical(logits[:, None].expand(-1, self.config.sample_words, -1).contiguous(), -1,
                                   generator)[..., 0]  # (n, sample_words)
        x = torch.zeros(n, self.length, dtype=torch.long)
        for i, row in enumerate(drawn.tolist()):
            text = b""
            for v in row:
                longer = (text + b" " + vocabulary[v]) if text else vocabulary[v]
                if len(longer) > self.length:
                    break
                text = longer
            x[i, :len(text)] = torch.tensor(list(text), dtype=torch.long)
        return x.to(self.device)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        lines = [f"topic {k + 1:>2}: {' '.join(top)}" for k, top in enumerate(self.topics(10))]
        return [("Topics", "\n".join(lines), 0,
                 f"The 10 words of largest weight in each of the {self.config.topics} topics (rows of beta)")]
