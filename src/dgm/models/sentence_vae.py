"""The sentence VAE: a global latent code z behind an LSTM language model over byte sequences.

Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio 2016, "Generating Sentences from a Continuous
Space", arXiv:1511.06349.

The data are the language models' (:mod:`dgm.models.language`): real tokens ``x_0 .. x_{n-1}``
padded with 0 to ``L``, the end token ``x_n = END = 0`` scored whenever ``n < L``, ``T = n + 1``
(``T = L`` for a full row). The generative model (Bowman sec. 3.1, fig. 1)::

    z ~ p(z) = N(0, I)
    p(x | z) = prod_{t=0}^{T-1} p(x_t | x_<t, z)

The decoder is the LSTM language model of :class:`dgm.models.language.LSTMLanguageModel` reading
``[START, x_0, .., x_{T-2}]``, with z setting its initial state (h_0 = tanh(W_h z), c_0 = W_c z) and
joined to every input embedding, so each step sees the code directly. The encoder is a
(bi)directional LSTM over the real tokens whose last states give a diagonal Gaussian
``q(z|x) = N(mu(x), diag sigma(x)^2)``. The bound is the VAE's (Kingma & Welling 2014,
arXiv:1312.6114, eq. 3)::

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),  KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)
    L_k(x)  = E[log 1/k sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x)           (Burda et al. 2016, eq. 8)

both in nats per sequence, over the same positions as ``LanguageModel.log_prob`` (the real tokens
and the end token), so the ``nll`` metric divides by the same :meth:`scored_units`.

A strong autoregressive decoder can model x without z, and the KL term then pushes q(z|x) onto the
prior (posterior collapse, Bowman sec. 3.1). The counter-measures:

* KL warm-up (Bowman sec. 3.1, "KL cost annealing"; here linear over ``kl_warmup_steps``) and free
  bits (Kingma et al. 2016, arXiv:1606.04934, eq. 15), by :func:`dgm.models.vae.weighted_kl`;
* word dropout (Bowman sec. 3.1, "word dropout and historyless decoding"): in training, each
  decoder input after the start symbol is replaced by an UNK symbol with probability
  ``word_dropout``, so the decoder must lean on z for what it cannot read from its history. The
  bounds and generation never drop a token.

The report shows homotopies (Bowman sec. 5): greedy decodings of points on the straight line
between two codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import decode_tokens
from dgm.models.base import Loss, Progress, rand, randn, register
from dgm.models.language import (ANCESTRAL, ConditionedLSTM, TextModel, picker, real_tokens, scored_targets,
                                 target_log_probs, with_start)
from dgm.models.vae import VAE, weighted_kl
from dgm.nn.distributions import diagonal_gaussian, normal_log_prob
from dgm.settings import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt

INTERPOLATION_POINTS = 7  # codes decoded on each line between two codes in the report (Bowman sec. 5)
INTERPOLATION_PAIRS = 3


@dataclass
class SentenceVAEConfig:
    """Settings of :class:`SentenceVAE` (``--set model.KEY=VALUE``)."""

    latent_dim: PositiveInt = 32  # dimension of z
    width: PositiveInt = 128  # byte embedding size (encoder and decoder)
    hidden: PositiveInt = 256  # LSTM units per layer (encoder, per direction, and decoder)
    layers: PositiveInt = 1  # stacked LSTM layers (encoder and decoder)
    bidirectional: bool = True  # the encoder reads the sequence both ways
    word_dropout: Fraction = 0.25  # probability that a decoder input (not the start symbol) becomes UNK in training
    beta: NonNegativeFloat = 1.0  # weight of the KL term in training; 1 is the ELBO
    kl_warmup_steps: NonNegativeInt = 1000  # ramp the KL weight linearly from 0 over this many steps (0: off)
    free_bits: NonNegativeFloat = 0.0  # minimum nats of KL counted per latent dimension (0: off)


# --- the networks ----------------------------------------------------------------------------------
class SequenceEncoder(nn.Module):
    """embedding -> (bi)LSTM over the real tokens -> linear: ``x (B, L)`` and ``lengths (B,)`` to the
    parameters ``(B, 2 latent)`` of a diagonal Gaussian (mean first)."""

    def __init__(self, vocab: int, width: int, hidden: int, layers: int, bidirectional: bool, latent: int) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.embedding = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(self.directions * hidden, 2 * latent)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        # packed, so the forward direction stops at the last real token and the backward one starts
        # there: the padding never enters the code. An empty sequence reads its first (END) token.
        packed = pack_padded_sequence(self.embedding(x), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h (layers * directions, B, hidden)
        last = h[-self.directions:].transpose(0, 1).flatten(1)  # (B, directions * hidden): the top layer
        return self.head(last)


# --- the process -----------------------------------------------------------------------------------
@register
class SentenceVAE(TextModel):
    """The sentence VAE of Bowman et al. 2016 (arXiv:1511.06349) over byte sequences: a (bi)LSTM
    encoder, an LSTM decoder fed z at every step, KL warm-up, free bits and word dropout.

    Example:
        >>> data = dgm.data.load("fortunes")
        >>> model = dgm.create("sentence-vae", data.spec, latent_dim=16, hidden=128)
        >>> batch = data.tensors(8); model.elbo(batch.x, mask=batch.mask)   # nats, (8,)
        >>> model.decode(model.encode(batch.x, mask=batch.mask))   # greedy reconstructions (8, L)
    """

    name = "sentence-vae"
    Config = SentenceVAEConfig
    description = "sentence VAE: LSTM encoder and z-conditioned LSTM language model, word dropout (Bowman et al. 2016)"
    samplers = (ANCESTRAL,)

    def __init__(self, config: SentenceVAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        c = config
        self.vocab, self.length = spec.vocab_size, spec.shape[0]  # V, L
        self.encoder = SequenceEncoder(self.vocab, c.width, c.hidden, c.layers, c.bidirectional, c.latent_dim)
        self.decoder = ConditionedLSTM(self.vocab, c.width, c.hidden, c.layers, c.latent_dim)

    # --- the two halves ---------------------------------------------------------------------------
    def posterior(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each ``(B, latent_dim)``."""
        return diagonal_gaussian(self.encoder(x.long(), real_tokens(x, mask).sum(1)))

    def word_dropout(self, inputs: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
        """Decoder inputs ``(B, T)`` ``[START, x_0, ..]`` with each input after the start symbol
        replaced by UNK with probability ``rate`` (Bowman sec. 3.1); the start symbol is kept, so
        the first step still knows where the sequence begins."""
        if rate == 0:
            return inputs
        drop = rand(inputs.shape, like=self.decoder.initial.weight, generator=generator) < rate  # (B, T)
        drop[:, 0] = False
        return inputs.masked_fill(drop, self.decoder.unk)

    def step_log_probs(self, x: Tensor, mask: Tensor | None, z: Tensor, *, word_dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
        """``log p(x_t | x_<t, z)`` at every scored position, ``(B, T)`` with ``T <= L``: the real tokens,
        the end token (``t == n < L``), 0 after; as ``LanguageModel.step_log_probs`` with z. On the CPU
        the batch is cut after its longest sequence's end token (reading the length on a device would
        stall it every step). ``word_dropout``: the training inputs' UNK rate (0: the exact likelihood)."""
        target, n = scored_targets(x, real_tokens(x, mask))
        inputs = self.word_dropout(with_start(target, self.decoder.start), word_dropout, generator)
        logits, _ = self.decoder(inputs, z)  # (B, T, V)
        return target_log_probs(logits, target, n)

    def log_likelihood(self, x: Tensor, mask: Tensor | None, z: Tensor) -> Tensor:
        """Exact log p(x|z) in nats, ``(B,)``."""
        return self.step_log_probs(x, mask, z).sum(1)

    # --- training ---------------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """-ELBO per scored token (real tokens and end tokens), nats, with the KL term weighted by
        warm-up and free bits and the decoder's inputs thinned by word dropout (module docstring)."""
        c = self.config
        x, mask = batch.x, real_tokens(batch.x, batch.mask)
        mu, logvar = self.posterior(x, mask)
        z = VAE.reparameterize(mu, logvar, progress.generator)
        rate = c.word_dropout if self.training else 0.0
        rec = self.step_log_probs(x, mask, z, word_dropout=rate, generator=progress.generator).sum(1)  # (B,)
        kl = VAE.analytic_kl(mu, logvar)  # (B, latent_dim)
        penalty, beta = weighted_kl(kl, beta=c.beta, free_bits=c.free_bits, warmup_steps=c.kl_warmup_steps,
                                    step=progress.step)  # per sequence, batch-averaged
        scored = self.scored_units(mask.sum(1)).sum()
        B = x.shape[0]
        elbo = rec - kl.sum(-1)  # (B,) with word dropout's inputs in training: a bound on the thinned decoder
        return Loss((-rec.sum() + B * penalty) / scored,
                    {"kl": kl.sum(-1).mean(), "bits_per_char": -elbo.sum().detach() / (scored * math.log(2)),
                     "beta": torch.tensor(beta)})

    # --- likelihood bounds ------------------------------------------------------------------------
    def elbo(self, x: Tensor, mask: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """One-sample Monte Carlo ELBO with the analytic KL, nats per sequence, ``(B,)``."""
        mu, logvar = self.posterior(x, mask)
        z = VAE.reparameterize(mu, logvar, generator)
        return self.log_likelihood(x, mask, z) - VAE.analytic_kl(mu, logvar).sum(-1)

    def log_weights(self, x: Tensor, k: int, mask: Tensor | None = None, *,
                    generator: torch.Generator | None = None) -> Tensor:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), ``(k, B)``."""
        mask = real_tokens(x, mask)
        mu, logvar = self.posterior(x, mask)
        B, d = mu.shape
        z = mu + randn((k, B, d), like=mu, generator=generator) * (0.5 * logvar).exp()  # (k, B, d)
        log_q = normal_log_prob(z, mu, logvar).sum(-1)  # (k, B)
        log_prior = normal_log_prob(z).sum(-1)  # (k, B)
        log_px = self.log_likelihood(x.repeat(k, 1), mask.repeat(k, 1), z.reshape(k * B, d)).view(k, B)
        return log_px + log_prior - log_q

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500, mask: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """L_k = log 1/k sum_i w_i (Burda et al. 2016, eq. 8), nats per sequence, ``(B,)``; the k
        samples are drawn ``chunk`` at a time and combined with logsumexp."""
        parts = [self.log_weights(x, min(chunk, k - i), mask, generator=generator) for i in range(0, k, chunk)]
        return torch.cat(parts).logsumexp(0) - math.log(k)

    def kl_per_dim(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return VAE.analytic_kl(*self.posterior(x, mask))

    def monitors(self) -> dict[str, dict]:
        return {"heldout_nll": {}}  # held-out bits per character after every epoch, for the report

    # --- codes and generation ---------------------------------------------------------------------
    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The posterior mean, ``(B, latent_dim)``."""
        return self.posterior(x, mask)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Greedy (argmax) decodings of codes ``z (B, latent_dim)``: ``(B, L)`` int64, 0 after the end."""
        return self.generate(z, self.prompt_tokens(None), greedy=True)

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, prompt: str | None = None) -> Tensor:
        """``n`` byte sequences ``(n, L)`` int64, 0 after the end: z ~ N(0, I), then ancestral sampling
        of p(x|z) with the options of :func:`dgm.models.language.truncate_logits` after ``prompt``."""
        prefix, options = self.ancestral_options(condition, sampler, temperature, top_k, top_p, prompt)
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.generate(z, prefix, generator=generator, **options)

    def generate(self, z: Tensor, prompt: Tensor, *, generator: torch.Generator | None = None, greedy: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Token sequences ``(B, L)`` from p(x|z) for codes ``z (B, latent_dim)`` after the tokens
        ``prompt (m,)``, one position per step through the LSTM state; ``greedy``: the argmax at
        each step, else a draw from the truncated conditionals."""
        pick = picker(generator, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        return self.decoder.generate(z, prompt, self.length, pick)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        """Homotopies (Bowman sec. 5): greedy decodings of evenly spaced codes on the line between two
        codes drawn from the prior."""
        d, K = self.config.latent_dim, INTERPOLATION_POINTS
        ends = torch.randn(2, INTERPOLATION_PAIRS, d, generator=generator, device=self.device)  # (2, pairs, d)
        s = torch.linspace(0, 1, K, device=self.device)[:, None, None]  # (K, 1, 1)
        z = (1 - s) * ends[0] + s * ends[1]  # (K, pairs, d): z(s) = (1 - s) z_a + s z_b
        texts = decode_tokens(self.decode(z.transpose(0, 1).reshape(-1, d)))  # pair-major
        lines = []
        for p in range(INTERPOLATION_PAIRS):
            lines.append(f"pair {p + 1}")
            lines += [f"  {i}/{K - 1}  {texts[p * K + i]}" for i in range(K)]
        return [("Interpolations", "\n".join(lines), 0,
                 f"Homotopies (Bowman et al. 2016, sec. 5): for {INTERPOLATION_PAIRS} pairs of codes "
                 f"z_a, z_b ~ N(0, I), the greedy decodings of z = (1 - s) z_a + s z_b at s = 0, 1/{K - 1}, .., 1, one line each")]
