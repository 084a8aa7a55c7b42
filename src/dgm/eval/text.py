"""Metrics of topic models: held-out perplexity from the document ELBO, and topic coherence by NPMI.

* ``topic_perplexity``: ``exp(-sum_d ELBO_d / sum_d N_d)`` over the documents of the evaluation
  split that hold at least one word of the vocabulary (capability ``document_elbo``: the bound and
  the word count N_d of each document). The ELBO is a lower bound on log p(words), so this is an
  upper bound on the perplexity per word (Srivastava & Sutton 2017, arXiv:1703.01488, sec. 5;
  Miao, Yu & Blunsom 2016, arXiv:1511.06038, sec. 4 use the same bound, averaged per document).
* ``topic_coherence``: for each topic, the mean over the pairs of its top 10 words of their
  normalised pointwise mutual information (Bouma 2009, "Normalized (Pointwise) Mutual Information
  in Collocation Extraction"; as a topic coherence, Lau, Newman & Baldwin 2014, "Machine Reading Tea
  Leaves", EACL), with probabilities counted as document frequencies on the evaluation split::

      NPMI(w_i, w_j) = log(P(w_i, w_j) / (P(w_i) P(w_j))) / -log P(w_i, w_j)

  in [-1, 1]; a pair that never occurs in one document scores -1 (the limit), a pair found in every
  document 1. The metric is the mean over topics (capabilities ``topics`` and ``bag_of_words``,
  whose columns are named by the model's ``vocabulary``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval.core import EvalContext, Plan, Result, Work, metric
from dgm.models.base import GenerativeModel

TOP_WORDS = 10  # words per topic in the coherence (Lau et al. 2014 score the top 10)


def needs_tokens(spec: DataSpec) -> str | None:
    return None if spec.kind == "tokens" else "topic metrics need text documents (--data docs:PATH, text:PATH)"


# --- NPMI ------------------------------------------------------------------------------------------------
def npmi_matrix(incidence: Tensor) -> Tensor:
    """NPMI ``(n, n)`` float64 of every pair of ``n`` words from ``incidence (N, n)``: true where
    document d holds word i (module docstring); -1 where a pair never co-occurs, 1 where it occurs
    in every document. The diagonal is meaningless."""
    d = incidence.double()
    joint = d.T @ d / len(d)  # (n, n) P(w_i, w_j)
    p = joint.diagonal()  # (n,) P(w_i)
    pmi = joint.log() - (p[:, None] * p[None, :]).log()
    npmi = pmi / -joint.log()
    npmi = torch.where(joint >= 1, 1.0, npmi)  # always together: PMI 0 over 0, the limit is 1
    return torch.where(joint > 0, npmi, -1.0)


def topic_npmi(topics: Tensor, incidence: Tensor) -> Tensor:
    """The mean NPMI ``(K,)`` of the word pairs ``i < j`` of each topic's word columns ``topics (K, n)``
    (n >= 2), documents' words ``incidence (N, V)`` bool."""
    if topics.shape[1] < 2:
        raise DgmError(f"topic coherence scores pairs of words: each topic needs at least 2, got {topics.shape[1]}")
    n = topics.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return torch.stack([npmi_matrix(incidence[:, row])[upper].mean() for row in topics.cpu()])


# --- the metrics -----------------------------------------------------------------------------------------
def document_bounds(model: GenerativeModel, ctx: EvalContext) -> tuple[Tensor, Tensor]:
    """The ELBO and the word count of every document of the split, each ``(N,)`` float64 (seeded)."""
    generator = torch.Generator().manual_seed(ctx.seed)
    elbos, counts = [], []
    for x, options in ctx.inputs(desc="document ELBO"):
        elbo, n = model.document_elbo(x, **options, generator=generator)
        elbos.append(elbo.double().cpu())
        counts.append(n.double().cpu())
    return torch.cat(elbos), torch.cat(counts)


def perplexity_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    x = ctx.data.tensors(8)
    model.document_elbo(x.x[:1], x.mask[:1])  # one-time costs (the stop words, the word ids) before the timing
    return Plan(f"document ELBO of {len(ctx.data)} documents",
                [Work("document ELBO", len(ctx.data), lambda n: model.document_elbo(x.x[:n], x.mask[:n]))],
                "--max-examples N")


@metric("topic_perplexity", requires=("document_elbo",), data=needs_tokens, plan=perplexity_plan,
        description="perplexity per word of held-out documents from the document ELBO (an upper bound)")
def topic_perplexity(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    elbo, words = document_bounds(model, ctx)
    kept = words > 0
    if not bool(kept.any()):
        raise DgmError(f"no document of the {ctx.split.split(',')[0]} split holds a word of the model's vocabulary: "
                       f"evaluate on text like the training data")
    nats = -elbo[kept].sum().item() / words[kept].sum().item()
    what = (f"upper bound (ELBO, 1 sample), per word of the vocabulary: {int(words.sum())} words in "
            f"{int(kept.sum())} documents ({int((~kept).sum())} without a known word left out)")
    return [Result("topic_perplexity", math.exp(nats), "", what, ctx.split,
                   {"neg_elbo_per_word": nats, "bits_per_word": nats / math.log(2)})]


@metric("topic_coherence", requires=("topics", "bag_of_words"), data=needs_tokens,
        description="mean NPMI of the top-10 word pairs of each topic, document co-occurrence on the split "
                    "(Lau et al. 2014); in [-1, 1], higher: more coherent")
def topic_coherence(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    topics = model.topics(TOP_WORDS)
    column = {w: v for v, w in enumerate(model.vocabulary)}
    ids = torch.tensor([[column[w] for w in words] for words in topics])  # (K, n)
    incidence = torch.cat([model.bag_of_words(x, **options).cpu() > 0
                           for x, options in ctx.inputs(desc="word incidence")])  # (N, V)
    per_topic = topic_npmi(ids, incidence)
    n = ids.shape[1]
    what = (f"NPMI, mean of the {n * (n - 1) // 2} pairs of each topic's top {n} words, over {len(topics)} topics; "
            f"document co-occurrence in {len(incidence)} documents, never together: -1")
    return [Result("topic_coherence", per_topic.mean().item(), "", what, ctx.split,
                   {"per_topic": [round(v, 4) for v in per_topic.tolist()],
                    "top_words": [" ".join(words) for words in topics]})]
