"""Language models over byte sequences, by characters or by subwords: an LSTM and a causal transformer.

A sequence of real tokens ``x_0 .. x_{n-1}`` (bytes 1..255 of UTF-8 text, ``spec.kind == "tokens"``)
is padded with 0 to ``L`` tokens; the first padding position carries the end-of-sequence symbol 0,
so the model also learns where a sequence ends. The factorisation (Bengio et al. 2003, "A Neural
Probabilistic Language Model"; Graves 2013, "Generating Sequences With Recurrent Neural Networks",
arXiv:1308.0850, section 2)::

    p(x) = prod_{t=0}^{T-1} p(x_t | x_<t),   T = n + 1 (the real tokens and the end token x_n = 0)

with ``T = L`` when a sequence fills all ``L`` positions (it has no end token: there is no position
left for one). Positions after the end are not modelled. :meth:`LanguageModel.log_prob` is exact,
in nats per sequence; the training loss is the mean NLL per scored token (real tokens + end tokens).
A token 0 inside a sequence would read as its end: the byte data never holds one (text lines).

A network reads ``[START, x_0, .., x_{T-2}]`` (an extra embedding row ``V`` is the start symbol) and
gives the logits of ``x_0 .. x_{T-1}``, output t seeing inputs ``<= t`` only:

* ``lstm-lm``: embedding -> LSTM (Hochreiter & Schmidhuber 1997) -> linear; its state (h, c) is the
  cache of generation (Graves 2013, section 3).
* ``transformer-lm``: embedding -> GPT-2 decoder stack (:class:`dgm.nn.transformer.CausalTransformer`:
  Vaswani et al. 2017, arXiv:1706.03762; Radford et al. 2019; character level as Al-Rfou et al.
  2019, arXiv:1808.04444, without their auxiliary losses) -> linear; its key-value cache makes a
  generation step one position's work.

Sampling is ancestral, one token per step until every row has drawn the end token (or filled ``L``),
from the logits reshaped by :func:`truncate_logits`: temperature ``tau`` (``softmax(u / tau)``),
top-k (Fan, Lewis & Dauphin 2018, "Hierarchical Neural Story Generation", arXiv:1805.04833, section
5.4: the k most probable tokens) and nucleus / top-p (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", arXiv:1904.09751, section 3.1: the smallest set ``V^(p)`` of most probable
tokens whose probability reaches p), each renormalised. A prompt's bytes start every sample.

Subwords: with ``model.merges = M > 0`` the model's tokens are byte-level BPE subwords (vocabulary
``256 + M``, :mod:`dgm.data.tokenize`) learnt from the training split when training starts
(:meth:`LanguageModel.prepare`) and kept in a buffer saved with the weights. The data stays bytes:
each batch is encoded on the host (:meth:`LanguageModel.token_ids`), samples are decoded back to
bytes. ``log_prob`` is then the probability of the text's one BPE spelling, a lower bound on the
probability of the text (which sums over every spelling): its bits per character are an upper
bound, the usual convention of subword language models. The end token stays 0.

Units: ``log_prob`` scores the real tokens and the end token of every sequence shorter than the
padded length (:meth:`LanguageModel.scored_units`), and the ``nll`` metric divides by the same count:
bits per character of the text with each line's end (its newline) counted, so a model that predicts
the uniform distribution over 256 bytes gives exactly 8.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec, Dataset
from dgm.data.sequences import pack, unpack
from dgm.data.tokenize import Subwords, learn_merges, subwords
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, inference, register
from dgm.models.dct_transformer import full
from dgm.nn.likelihoods import sample_categorical
from dgm.nn.transformer import CausalTransformer, KVCache, init_weights
from dgm.settings import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, Range, coerce, type_hints

END = 0  # the end-of-sequence token: the first padding position


# --- sampling options and the truncation of the logits ------------------------------------------------
@dataclass
class TextOptions:
    """Options of ancestral text sampling (``dgm sample RUN --temperature 0.8 --top-p 0.9 --prompt "The "``)."""

    temperature: PositiveFloat | None = field(default=None, metadata={
        "help": "divide the logits by this (< 1 sharper, > 1 flatter); default 1"})
    top_k: PositiveInt | None = field(default=None, metadata={
        "help": "keep only the k most probable tokens at each step; default all"})
    top_p: Annotated[float, Range(0, 1, low_open=True)] | None = field(default=None, metadata={
        "help": "nucleus: keep the fewest most probable tokens whose probability reaches p, in (0, 1]; default 1"})
    prompt: str | None = field(default=None, metadata={
        "help": "text whose UTF-8 bytes begin every sample; default none"})


ANCESTRAL = Sampler("ancestral", "one token at a time from the model's conditionals, with the network's cache "
                    "(LSTM state, transformer key-value cache); temperature, top-k, nucleus, prompt", TextOptions)


def truncate_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> Tensor:
    """The logits ``(..., V)`` of the distribution sampling draws from: ``logits / temperature``, then
    ``-inf`` outside the ``top_k`` most probable tokens, then ``-inf`` outside the nucleus, the
    fewest most probable tokens whose probability (after temperature and top-k) reaches ``top_p``.
    The most probable token always survives; ``softmax`` of the result is the renormalised
    distribution. Ties at the k-th value are broken by position (``torch.topk``)."""
    logits = logits / temperature
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kept = logits.topk(top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # (..., V): the mass of the more probable tokens
        drop = before >= top_p  # the nucleus already reached without this token
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def checked_options(temperature: float | None, top_k: int | None, top_p: float | None,
                    prompt: str | None) -> dict[str, Any]:
    """The sampling options with their defaults, each checked against its range (for callers in Python;
    the command line checks the same ranges): one-line :class:`DgmError` naming the flag."""
    hints = type_hints(TextOptions)
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "prompt": prompt}
    options = {k: coerce(v, hints[k], "--" + k.replace("_", "-")) for k, v in given.items()}
    options["temperature"] = options["temperature"] or 1.0
    return options


# --- teacher forcing, shared by every model of token sequences ---------------------------------------
def real_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, L)`` bool: ``mask``, or the tokens before the first END when there is none."""
    return mask.bool() if mask is not None else (x == END).long().cumsum(1) == 0


def scored_targets(x: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """The targets of every scored position ``(B, T)`` (the real tokens, then END, then END as
    filler) and each row's length ``n (B, 1)``. On the CPU ``T`` is cut after the longest row's end
    token; elsewhere ``T = L``, since reading the length would stall the device every step."""
    n = real.sum(1, keepdim=True)  # (B, 1)
    T = min(int(n.max()) + 1, x.shape[1]) if x.device.type == "cpu" else x.shape[1]
    t = torch.arange(T, device=x.device)
    return torch.where(t < n, x[:, :T].long(), END), n


def target_log_probs(logits: Tensor, target: Tensor, n: Tensor) -> Tensor:
    """``log p(target_t | ...)`` from the logits ``(B, T, V)`` of every position, 0 after each row's
    end token (position ``n``): ``(B, T)``."""
    lp = F.log_softmax(full(logits), -1).gather(-1, target[..., None])[..., 0]  # (B, T)
    return torch.where(torch.arange(target.shape[1], device=target.device) <= n, lp, 0.0)


def with_start(target: Tensor, start: int) -> Tensor:
    """The inputs ``[START, x_0, .., x_{T-2}]`` that predict ``target (B, T)``: input t is x_{t-1}."""
    return torch.cat([torch.full_like(target[:, :1], start), target[:, :-1]], 1)


def prompt_bytes(prompt: str | None, length: int) -> list[int]:
    """The prompt's UTF-8 bytes, checked for sequences of ``length`` tokens: no byte 0 (the end
    token), shorter than ``length``."""
    data = (prompt or "").encode("utf-8")
    if END in data:
        raise DgmError("the prompt holds a NUL byte (0), the end-of-sequence token: remove it")
    if len(data) >= length:
        raise DgmError(f"the prompt is {len(data)} bytes and the model's sequences hold {length}: "
                       f"use a prompt of at most {length - 1} bytes")
    return list(data)


def autoregress(x: Tensor, start: int, logits: Tensor, advance: Callable[[int], Tensor],
                pick: Callable[[Tensor], Tensor]) -> Tensor:
    """Fill ``x (n, L)`` from position ``start`` one token at a time until every row has drawn the
    end token (later positions stay 0) or ``L`` is reached: ``pick(logits (n, V)) -> tokens (n,)``
    chooses position t from ``logits``, the next-token logits after position ``t - 1``; ``advance(t)``
    gives those after position t (reading ``x``, as filled). Returns ``x``."""
    n, L = x.shape
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    for t in range(start, L):
        token = pick(full(logits))  # (n,)
        x[:, t] = token.masked_fill(done, END)  # an ended row stays padded
        done |= token == END
        if t + 1 == L or bool(done.all()):
            break
        logits = advance(t)
    return x


# --- the networks: token ids in, next-token logits out ------------------------------------------------
class LSTMNetwork(nn.Module):
    """embedding -> LSTM -> linear: ``ids (B, T)`` (``V`` the start symbol) to logits ``(B, T, V)``;
    the state ``(h, c)``, each ``(layers, B, hidden)``, carries the prefix (``None``: empty)."""

    def __init__(self, vocab: int, width: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab + 1, width)  # row V: the start symbol
        self.lstm = nn.LSTM(width, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab)

    def new_state(self, batch: int) -> None:
        return None  # nn.LSTM starts from zeros

    def forward(self, ids: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Any]:
        out, state = self.lstm(self.embedding(ids), state)  # (B, T, hidden)
        return self.head(out), state


class TransformerNetwork(nn.Module):
    """embedding -> :class:`CausalTransformer` -> linear: ``ids (B, T)`` to logits ``(B, T, V)``; the
    state is a :class:`KVCache` (``None``: one parallel pass with no cache)."""

    def __init__(self, vocab: int, width: int, depth: int, heads: int, max_length: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab + 1, width)
        self.transformer = CausalTransformer(width, depth, heads, max_length, dropout=dropout)
        self.head = nn.Linear(width, vocab)
        for module in (self.embedding, self.head):
            init_weights(module)

    def new_state(self, batch: int) -> KVCache:
        return self.transformer.new_cache(batch)

    def forward(self, ids: Tensor, state: KVCache | None = None) -> tuple[Tensor, Any]:
        return self.head(self.transformer(self.embedding(ids), cache=state)), state  # (B, T, V)


class ConditionedLSTM(nn.Module):
    """embedding -> LSTM -> linear, conditioned on a code ``c (B, d)`` (a sentence VAE's z, an outline's
    embedding) that sets the initial state ``(tanh(W_h c), W_c c)`` and is joined to every input, so
    each step sees it: ``ids (B, T)`` (``V`` the start symbol, ``V + 1`` an UNK symbol for word dropout)
    and ``c`` to logits ``(B, T, V)``, output t seeing ids ``<= t``; the state ``(h, c)``, each
    ``(layers, B, hidden)``, carries the prefix (``None``: the state of the code)."""

    def __init__(self, vocab: int, width: int, hidden: int, layers: int, code_dim: int) -> None:
        super().__init__()
        self.start, self.unk = vocab, vocab + 1
        self.layers, self.hidden = layers, hidden
        self.embedding = nn.Embedding(vocab + 2, width)  # rows V: start, V + 1: UNK
        self.initial = nn.Linear(code_dim, 2 * layers * hidden)  # c -> (h_0, c_0)
        self.lstm = nn.LSTM(width + code_dim, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def initial_state(self, code: Tensor) -> tuple[Tensor, Tensor]:
        h, c = self.initial(code).view(len(code), 2, self.layers, self.hidden).permute(1, 2, 0, 3)  # (layers, B, hidden)
        return torch.tanh(h).contiguous(), c.contiguous()

    def forward(self, ids: Tensor, code: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Any]:
        return self.from_embeddings(self.embedding(ids), code, state)

    def from_embeddings(self, inputs: Tensor, code: Tensor, state: tuple[Tensor, Tensor] | None = None
                        ) -> tuple[Tensor, Any]:
        """The logits of embedded inputs ``(B, T, width)`` (the causal-order tests differentiate these)."""
        state = self.initial_state(code) if state is None else state
        steps = torch.cat([inputs, code[:, None].expand(-1, inputs.shape[1], -1)], -1)  # (B, T, width + d)
        out, state = self.lstm(steps, state)  # (B, T, hidden)
        return self.head(out), state

    @inference  # the state is made and used inside inference mode
    def generate(self, code: Tensor, prompt: Tensor, length: int, pick: Callable[[Tensor], Tensor]) -> Tensor:
        """Token sequences ``(B, length)`` from p(x | code) after the tokens ``prompt (m,)``, one position
        per step through the state; ``pick(logits (B, V)) -> tokens (B,)`` chooses each token."""
        n, m = len(code), len(prompt)
        x = torch.zeros(n, length, dtype=torch.long, device=code.device)
        x[:, :m] = prompt
        logits, state = self(with_start(x[:, :m + 1], self.start), code)  # (n, m + 1, V): [START, prompt]

        def advance(t: int) -> Tensor:
            nonlocal state
            logits, state = self(x[:, t:t + 1], code, state)  # (n, 1, V)
            return logits[:, -1]

        return autoregress(x, m, logits[:, -1], advance, pick)


def picker(generator: torch.Generator | None, *, greedy: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None) -> Callable[[Tensor], Tensor]:
    """How a sampler chooses a token from logits ``(B, V)``: the argmax (``greedy``), or a draw from
    the logits as :func:`truncate_logits` reshapes them."""
    def pick(logits: Tensor) -> Tensor:
        if greedy:
            return logits.argmax(-1)
        step = truncate_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return sample_categorical(step, -1, generator)[:, 0]

    return pick


# --- the process -----------------------------------------------------------------------------------
@dataclass
class LanguageConfig:
    """Settings every language model shares (``--set model.KEY=VALUE``)."""

    width: PositiveInt = 128  # token embedding size (the transformer's width)
    dropout: Fraction = 0.1  # dropout in training (between LSTM layers; the transformer's attention, MLP and inputs)
    #: byte-level BPE merges learnt from the training split (vocabulary 256 + merges, dgm.data.tokenize); 0: bytes
    merges: NonNegativeInt = 0


class TextModel(GenerativeModel):
    """What every model of token sequences shares: it refuses other data in one line, and counts the
    language models' units (the real tokens, and the end token of every sequence shorter than L)."""

    #: what the model reads from a text, for the refusal of other data
    reads = "token sequences"

    @classmethod
    def default_representation(cls, config: Any, spec: DataSpec) -> str:
        if spec.kind != "tokens":
            raise DgmError(f"model {cls.name!r} models {cls.reads}, but {spec.name!r} holds {spec.kind} data: "
                           f"use --data text:PATH (a sequence per line), docs:PATH (per document) or fortunes")
        return "levels"

    def scored_units(self, lengths: Tensor) -> Tensor:
        """The real tokens and, for a sequence shorter than the padded length, its end token."""
        return lengths + (lengths < self.spec.shape[0]).to(lengths.dtype)

    def prompt_tokens(self, prompt: str | None) -> Tensor:
        """The prompt's UTF-8 bytes as the model's tokens ``(m,)``, checked: no byte 0, shorter than ``L``."""
        return torch.tensor(prompt_bytes(prompt, self.spec.shape[0]), dtype=torch.long, device=self.device)

    def ancestral_options(self, condition: Tensor | None, sampler: str | None, temperature: float | None,
                          top_k: int | None, top_p: float | None, prompt: str | None) -> tuple[Tensor, dict[str, Any]]:
        """The arguments of an unconditional ``ancestral`` sampler, checked (one line each): the
        prompt's tokens and the options of :func:`truncate_logits`."""
        if condition is not None:
            raise DgmError(f"model {self.name!r} is unconditional: drop the condition (--class)")
        if sampler not in (None, ANCESTRAL.name):
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use {ANCESTRAL.name}")
        options = checked_options(temperature, top_k, top_p, prompt)
        return self.prompt_tokens(options.pop("prompt")), options


class LanguageModel(TextModel):
    """The autoregressive process over byte sequences, written once (module docstring): the start
    symbol, the exact likelihood with the end token, the loss and the cached ancestral sampler. A
    subclass builds its network in :meth:`build_network`."""

    Config = LanguageConfig
    samplers = (ANCESTRAL,)

    def __init__(self, config: LanguageConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        if config.merges and spec.vocab_size != 256:
            raise DgmError(f"model.merges={config.merges} learns subwords of bytes, but {spec.name!r} has "
                           f"{spec.vocab_size} tokens: set model.merges=0")
        self.vocab, self.length = spec.vocab_size + config.merges, spec.shape[0]  # V, L
        # the learnt merges (prepare), saved with the weights; -1 rows: not learnt yet
        self.register_buffer("merge_table", torch.full((config.merges, 2), -1, dtype=torch.long))
        self.network = self.build_network()

    @property
    def log_prob_description(self) -> str:
        # p(x) sums over every spelling of the text in subwords; log_prob scores the BPE one
        return "bound (the text's BPE spelling)" if self.config.merges else "exact"

    # --- subwords ------------------------------------------------------------------------------------
    def prepare(self, data: Dataset) -> None:
        """Learn the byte-level BPE merges (``model.merges`` of them) from the training split."""
        if self.config.merges:
            self.merge_table.copy_(torch.from_numpy(learn_merges(unpack(data.raw, data.lengths), self.config.merges)))

    @property
    def subwords(self) -> Subwords | None:
        """The tokenizer of the learnt merges (None for a byte-level model)."""
        return subwords(self.merge_table.cpu().numpy().tobytes()) if self.config.merges else None

    def token_ids(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The model's tokens of byte sequences ``x (B, L)`` with real bytes ``mask``: the subword ids
        ``(B, L)`` padded with 0 and their mask (subwords are encoded on the host), or ``x`` itself."""
        if not self.config.merges:
            return x, mask
        ids = self.subwords.encode(unpack(x, mask.sum(1)))
        padded = torch.zeros(len(ids), x.shape[1], dtype=torch.long)
        for i, row in enumerate(ids):
            padded[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        counts = torch.tensor([len(row) for row in ids])
        return padded.to(x.device), (torch.arange(x.shape[1]) < counts[:, None]).to(x.device)

    def byte_sequences(self, ids: Tensor) -> Tensor:
        """Token sequences ``(n, L)`` (0 after the end) as the data's byte sequences ``(n, L)``, each cut
        at ``L`` bytes (a subword sample can spell more bytes than the data holds)."""
        if not self.config.merges:
            return ids
        rows = [row[:row.index(END)] if END in row else row for row in ids.cpu().tolist()]
        x, _ = pack([self.subwords.decode(row)[:self.length] for row in rows], self.length)
        return torch.from_numpy(x).long().to(ids.device)

    def build_network(self) -> nn.Module:
        """The network ``(ids (B, T), state) -> (logits (B, T, V), state)``, output t seeing ids ``<= t``,
        with ``new_state(batch)``; ids ``0..V-1`` are tokens, ``V`` the start symbol."""
        raise NotImplementedError

    # --- likelihood and training -------------------------------------------------------------------
    def step_log_probs(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log p(x_t | x_<t)`` of every scored position of the model's tokens (bytes, or the
        subwords of :meth:`token_ids`), ``(B, T)`` with ``T <= L``: the real tokens (``t < n``), the
        end token (``t == n < L``), 0 after. ``x (B, L)`` bytes, ``mask (B, L)`` true on the real ones,
        which come first (``None``: the bytes before the first 0). On the CPU the batch is cut after
        its longest sequence's end token; elsewhere it is not, since reading the length would stall
        the device every step."""
        target, n = scored_targets(*self.token_ids(x.long(), real_tokens(x, mask)))
        logits, _ = self.network(with_start(target, self.vocab))  # (B, T, V)
        return target_log_probs(logits, target, n)

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``: the real tokens and the end token (module docstring)."""
        return self.step_log_probs(x, mask).sum(1)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """Mean NLL per scored byte (real bytes and end tokens), nats; logged in bits per character
        (the training split's bits/char; the same unit as the ``nll`` metric on held-out text)."""
        mask = real_tokens(batch.x, batch.mask)
        scored = self.scored_units(mask.sum(1)).sum()  # real bytes + end tokens
        nll = -self.step_log_probs(batch.x, mask).sum() / scored
        return Loss(nll, {"bits_per_char": nll.detach() / math.log(2)})

    def monitors(self) -> dict[str, dict]:
        return {"heldout_nll": {}}  # held-out bits per character after every epoch, for the report

    # --- generation --------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: str | None) -> Tensor:
        """The prompt's UTF-8 bytes as the model's tokens ``(m,)``, checked: no byte 0, shorter than ``L``."""
        data = prompt_bytes(prompt, self.length)
        tokens = self.subwords.encode([bytes(data)])[0] if self.config.merges else data
        return torch.tensor(tokens, dtype=torch.long, device=self.device)

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, prompt: str | None = None) -> Tensor:
        """``n`` byte sequences ``(n, L)`` int64, padded with 0 after the end token (the data's format),
        each starting with ``prompt``'s bytes; the options as :func:`truncate_logits`."""
        prompt_ids, options = self.ancestral_options(condition, sampler, temperature, top_k, top_p, prompt)
        tokens = self.generate(n, prompt_ids, generator=generator, **options)
        return self.byte_sequences(tokens)

    @inference  # the cache is written in place: made and used inside inference mode
    def generate(self, n: int, prompt: Tensor, *, generator: torch.Generator | None = None, cached: bool = True,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Ancestral sampling of ``n`` token sequences ``(n, L)`` after the tokens ``prompt (m,)``; ``cached``:
        one position per step through the network's state, else the whole prefix again at every
        step (the same samples: the check that the cache is right)."""
        m = len(prompt)
        x = torch.zeros(n, self.length, dtype=torch.long, device=self.device)
        x[:, :m] = prompt
        prefix = with_start(x[:, :m + 1], self.vocab)  # (n, m + 1): [START, prompt]
        state = self.network.new_state(n) if cached else None
        logits, state = self.network(prefix, state)  # (n, m + 1, V)

        def advance(t: int) -> Tensor:
            nonlocal state
            if cached:
                logits, state = self.network(x[:, t:t + 1], state)  # (n, 1, V)
            else:
                logits, _ = self.network(torch.cat([prefix[:, :1], x[:, :t + 1]], 1))  # (n, t + 2, V)
            return logits[:, -1]

        pick = picker(generator, temperature=temperature, top_k=top_k, top_p=top_p)
        return autoregress(x, m, logits[:, -1], advance, pick)


# --- the models: a network each ---------------------------------------------------------------------
@dataclass
class LSTMLanguageConfig(LanguageConfig):
    """Settings of :class:`LSTMLanguageModel` (``--set model.KEY=VALUE``)."""

    hidden: PositiveInt = 256  # LSTM units per layer
    layers: PositiveInt = 2  # stacked LSTM layers


@register
class LSTMLanguageModel(LanguageModel):
    """A character-level LSTM language model (Graves 2013, arXiv:1308.0850).

    Example:
        >>> data = dgm.data.load("text:notes.txt")
        >>> model = dgm.create("lstm-lm", data.spec, hidden=128, layers=1)
        >>> batch = data.tensors(8); model.log_prob(batch.x, mask=batch.mask)   # nats, (8,)
        >>> model.sample(4, prompt="The ", top_p=0.9)   # (4, L) tokens, 0 after the end
    """

    name = "lstm-lm"
    Config = LSTMLanguageConfig
    description = "LSTM language model over bytes or BPE subwords: exact NLL, temperature/top-k/top-p sampling"

    def build_network(self) -> nn.Module:
        c = self.config
        return LSTMNetwork(self.vocab, c.width, c.hidden, c.layers, c.dropout)


@dataclass
class TransformerLanguageConfig(LanguageConfig):
    """Settings of :class:`TransformerLanguageModel` (``--set model.KEY=VALUE``)."""

    depth: PositiveInt = 4  # transformer blocks
    heads: PositiveInt = 4  # attention heads per block (divide width)


@register
class TransformerLanguageModel(LanguageModel):
    """A character-level GPT-2-style transformer language model with KV-cached sampling
    (Radford et al. 2019; Al-Rfou et al. 2019, arXiv:1808.04444); its context is the data's length.

    Example:
        >>> data = dgm.data.load("fortunes")
        >>> model = dgm.create("transformer-lm", data.spec, width=128, depth=4, heads=4)
        >>> batch = data.tensors(8); model.log_prob(batch.x, mask=batch.mask)   # nats, (8,)
        >>> model.sample(4, prompt="The ", temperature=0.8, top_k=40)
    """

    name = "transformer-lm"
    Config = TransformerLanguageConfig
    description = "causal transformer language model over bytes or BPE subwords: exact NLL, KV-cached sampling"

    def build_network(self) -> nn.Module:
        c = self.config
        if c.width % c.heads:
            raise DgmError(f"model.heads ({c.heads}) must divide model.width ({c.width})")
        return TransformerNetwork(self.vocab, c.width, c.depth, c.heads, self.length, c.dropout)
