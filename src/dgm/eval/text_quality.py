"""Quality of generated text: diversity (self-BLEU), closeness to the data in an embedding space
(the Frechet distance of sentence embeddings) and fluency under a held-out language model.

* BLEU-4 of a hypothesis against references (Papineni et al. 2002, "BLEU: a Method for Automatic
  Evaluation of Machine Translation", eqs. in sec. 2.3) with the conventions of NLTK's
  ``sentence_bleu``: clipped n-gram precisions ``p_n`` for n = 1..4 with uniform weights,
  smoothing method 1 of Chen & Cherry 2014 ("A Systematic Comparison of Smoothing Techniques for
  Sentence-Level BLEU", sec. 2.1: a zero count becomes ``epsilon = 0.1``), the brevity penalty
  against the reference length closest to the hypothesis (ties: the shorter), and 0 when no
  unigram matches::

      BLEU = BP exp(sum_n 1/4 log p_n),   BP = 1 if c > r else exp(1 - r / c)

* ``self_bleu`` (Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models",
  arXiv:1802.01886, sec. 3.3): the mean over generated sentences of BLEU-4 against all the other
  generated sentences; high when the samples repeat one another (mode collapse). Words are the
  whitespace-separated pieces of the decoded text. Computed exactly in one pass over the n-grams:
  the clip count of an n-gram against "every sentence but i" is the largest count among the others,
  i.e. the top count unless sentence i holds it, then the second.
* ``embedding_fid``: the Frechet distance (:func:`dgm.eval.fidelity.frechet_distance`) between
  Gaussians fitted to the model's own sentence embeddings (capability ``encode``) of the evaluation
  split and of its samples; comparable between runs of one model only (each has its own encoder).
* :func:`sample_perplexity`: the perplexity per character of samples under a language model
  trained apart (any model with ``log_prob`` on token data), ``exp(-sum log p / sum units)`` over the
  units that model scores (real bytes and end tokens).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.data.core import DataSpec
from dgm.data.pictures import decode_tokens
from dgm.errors import DgmError
from dgm.eval.core import EvalContext, Plan, Result, Work, metric
from dgm.eval.fidelity import GaussianStats, frechet_distance
from dgm.eval.quality import samples, sampling_work
from dgm.models.base import GenerativeModel, capabilities

MAX_N = 4  # BLEU-4
EPSILON = 0.1  # smoothing method 1: the count given to an n-gram order with no match (NLTK's default)
ENCODE_BATCH = 500


# --- BLEU ----------------------------------------------------------------------------------------------
def ngram_counts(words: Sequence[str], n: int) -> Counter:
    """How often each n-gram (a tuple of ``n`` words) occurs in ``words``."""
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def closest_length(c: int, lengths: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length ``c``, the shorter on a tie."""
    return min(lengths, key=lambda r: (abs(r - c), r))


def bleu_from_counts(matches: Sequence[int], totals: Sequence[int], c: int, r: int,
                     epsilon: float = EPSILON) -> float:
    """BLEU from the clipped matches and the hypothesis's n-gram totals of each order (n = 1..N),
    the hypothesis length ``c`` and the reference length ``r`` (module docstring)."""
    if c == 0 or matches[0] == 0:  # no unigram in common: NLTK returns 0 before smoothing
        return 0.0
    # a hypothesis shorter than n has no n-grams: its precision is m / max(1, 0), as NLTK's
    precisions = [(m if m > 0 else epsilon) / max(1, t) for m, t in zip(matches, totals)]
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(sum(math.log(p) for p in precisions) / len(precisions))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = MAX_N,
         epsilon: float = EPSILON) -> float:
    """Sentence BLEU-``max_n`` of the words ``hypothesis`` against the word lists ``references``."""
    if not references:
        raise DgmError("BLEU needs at least one reference sentence")
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hyp = ngram_counts(hypothesis, n)
        most = Counter()  # the clip: the most often an n-gram occurs in one reference
        for ref in references:
            most |= ngram_counts(ref, n)
        matches.append(sum(min(k, most[g]) for g, k in hyp.items()))
        totals.append(sum(hyp.values()))
    r = closest_length(len(hypothesis), [len(ref) for ref in references])
    return bleu_from_counts(matches, totals, len(hypothesis), r, epsilon)


def self_bleu(sentences: Sequence[str], max_n: int = MAX_N, epsilon: float = EPSILON) -> float:
    """The mean over ``sentences`` of the BLEU-``max_n`` of each against all the others (Texygen's
    self-BLEU), words split at whitespace; exact, in time linear in the number of n-grams."""
    if len(sentences) < 2:
        raise DgmError(f"self-BLEU compares each sentence with the others: it needs at least 2, got {len(sentences)}")
    words = [s.split() for s in sentences]
    counts = [[ngram_counts(w, n) for n in range(1, max_n + 1)] for w in words]  # [sentence][n - 1]
    # per n-gram: its top count, the sentence holding it, and the second count among the others
    top: list[dict[tuple[str, ...], list[int]]] = [{} for _ in range(max_n)]
    for i, per_order in enumerate(counts):
        for order, table in zip(top, per_order):
            for gram, k in table.items():
                best = order.setdefault(gram, [0, -1, 0])  # [top, holder, second]
                if k > best[0]:
                    best[:] = [k, i, best[0]]
                elif k > best[2]:
                    best[2] = k
    lengths = Counter(len(w) for w in words)
    scores = []
    for i, per_order in enumerate(counts):
        matches = [sum(min(k, order[g][2] if order[g][1] == i else order[g][0]) for g, k in table.items())
                   for order, table in zip(top, per_order)]
        totals = [sum(table.values()) for table in per_order]
        c = len(words[i])
        others = [r for r, k in lengths.items() if k - (r == c) > 0]  # lengths of the other sentences
        scores.append(bleu_from_counts(matches, totals, c, closest_length(c, others), epsilon))
    return sum(scores) / len(scores)


# --- sentence embeddings --------------------------------------------------------------------------------
def embeddings(model: GenerativeModel, x: Tensor, mask: Tensor | None = None,
               batch_size: int = ENCODE_BATCH) -> Tensor:
    """The model's codes ``(N, D)`` float64 on the CPU of token sequences ``x (N, L)`` (``mask``: the
    real tokens; ``None``: those before the first 0)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(model.device)
            kwargs = {} if mask is None else {"mask": mask[i:i + batch_size].to(model.device)}
            out.append(model.encode(xb, **kwargs).flatten(1).double().cpu())
    return torch.cat(out)


def embedding_frechet_distance(model: GenerativeModel, real: Tensor, fake: Tensor, *,
                               real_mask: Tensor | None = None) -> float:
    """The Frechet distance between Gaussians fitted to the model's embeddings of two sets of token
    sequences ``(N, L)`` (``fake``'s real tokens: those before the first 0)."""
    return frechet_distance(GaussianStats.from_features(embeddings(model, real, real_mask)),
                            GaussianStats.from_features(embeddings(model, fake)))


# --- perplexity under another model ---------------------------------------------------------------------
@dataclass
class SamplePerplexity:
    """How probable samples are under a language model: per character (each scored unit: a byte or
    an end token) in bits and as a perplexity, over ``units`` units of ``sequences`` sequences."""

    bits_per_char: float
    perplexity: float
    units: int
    sequences: int


def sample_perplexity(lm: GenerativeModel, samples: Tensor, *, batch_size: int = 256) -> SamplePerplexity:
    """``exp(-sum_i log p(x_i) / sum_i units_i)`` of token sequences ``samples (N, L)`` (0 after the
    end) under ``lm``, a model with ``log_prob`` on token data of the same length ``L`` (e.g. a
    trained ``lstm-lm``): the perplexity per character, and the same in bits per character. The
    units are those ``lm`` scores (:meth:`~dgm.models.base.GenerativeModel.scored_units`). A model
    uniform over 256 bytes gives 256 (8 bits)."""
    if "log_prob" not in capabilities(lm) or lm.spec.kind != "tokens":
        raise DgmError(f"the perplexity of samples needs a language model with log_prob on token data, "
                       f"but {lm.name!r} has none: train one, e.g. dgm train lstm-lm --data ...")
    if samples.ndim != 2 or samples.shape[1] != lm.spec.shape[0]:
        raise DgmError(f"the samples hold sequences of shape {tuple(samples.shape[1:])} and the language model "
                       f"reads ({lm.spec.shape[0]},): train it on data of the same data.size")
    x = samples.long()
    real = (x == 0).long().cumsum(1) == 0  # (N, L): the tokens before the end
    was_training = lm.training
    lm.eval()  # no dropout
    total = 0.0
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb, rb = x[i:i + batch_size].to(lm.device), real[i:i + batch_size].to(lm.device)
                total += float(lm.log_prob(xb, mask=rb).double().sum())
    finally:
        lm.train(was_training)
    units = int(lm.scored_units(real.sum(1)).sum())
    nats = -total / units
    return SamplePerplexity(nats / math.log(2), math.exp(nats), units, len(x))


# --- the metrics ----------------------------------------------------------------------------------------
def needs_tokens(spec: DataSpec) -> str | None:
    return None if spec.kind == "tokens" else "text metrics need token sequences (--data text:PATH, fortunes)"


def self_bleu_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    return Plan(f"self-BLEU-4 of {ctx.num_samples} samples", [sampling_work(model, ctx)], "--num-samples N")


@metric("self_bleu", requires=("sample",), data=needs_tokens, plan=self_bleu_plan, default=False,
        description="self-BLEU-4 of samples, each against the others (Zhu et al. 2018, Texygen); higher: less "
                    "diverse. The evaluation split's own self-BLEU is given beside it")
def self_bleu_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    generated = decode_tokens(samples(model, ctx))
    data = ctx.data.tensors()
    reference = self_bleu(decode_tokens(data.x, data.mask))
    what = (f"BLEU-4 of each of {len(generated)} samples against the others, whitespace words, smoothing 1; "
            f"the split's own: {reference:.4f}")
    return [Result("self_bleu", self_bleu(generated), "", what, ctx.split, {"data_self_bleu": reference})]


def embedding_fid_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    x = ctx.data.tensors(8).x
    work = [sampling_work(model, ctx),
            Work("embeddings", ctx.num_samples + len(ctx.data), lambda n: embeddings(model, x[:n]), 8)]
    return Plan(f"the model's embeddings of {ctx.num_samples} samples and {len(ctx.data)} examples", work,
                "--num-samples N, --max-examples N")


@metric("embedding_fid", requires=("encode", "sample"), data=needs_tokens, plan=embedding_fid_plan, default=False,
        description="Frechet distance between Gaussians of the model's own sentence embeddings of its samples "
                    "and of the evaluation split (comparable between runs of one model only)")
def embedding_fid(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    fake = samples(model, ctx)
    data = ctx.data.tensors()
    value = embedding_frechet_distance(model, data.x, fake, real_mask=data.mask)
    what = f"the model's encoder, {len(fake)} samples vs {ctx.split}"
    return [Result("embedding_fid", value, "", what, ctx.split)]
