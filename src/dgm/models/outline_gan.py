"""Text from adversarially learned neural outlines: a GAN in the embedding space of a sentence
autoencoder, whose decoder turns generated embeddings into text.

Subramanian, Rajeswar, Sordoni, Trischler, Courville & Pal 2018, "Towards Text Generation with
Adversarially Learned Neural Outlines", NeurIPS 2018. The paper encodes sentences with a fixed,
pretrained general-purpose encoder; here the encoder is learnt with the decoder as an autoencoder
(as in ARAE: Zhao et al. 2018, arXiv:1706.04223) and then frozen, so the model trains from the
data alone. Text is byte-level token sequences in the format of :mod:`dgm.models.language`: the
real tokens ``x_0 .. x_{n-1}``, then the end token 0 at the first padding position.

Stage ``"autoencoder"`` learns an encoder e = E(x) (the "outline") and a decoder p(x | e)::

    h_n = GRU(x_0 .. x_{n-1}, END)            the encoder's state after the end token
    e   = tanh(W h_n)                          (B, embed_dim), in [-1, 1]^d
    p(x | e) = prod_{t=0}^{T-1} p(x_t | x_<t, e)   an LSTM from (h_0, c_0) = (tanh(A e), B e),
                                                   reading [embed(x_{t-1}); e] at every step

with ``T`` the scored positions of :meth:`dgm.models.language.LanguageModel.step_log_probs` (the real
tokens and the end token). It minimises -log p(x | e + sigma eps), eps ~ N(0, I), per scored token:
the noise (``embedding_noise``) asks nearby embeddings to decode to the same sentence, a smoother
space for the generator to land in.

Stage ``"gan"`` freezes the encoder and the decoder and fits a generator e~ = G(z) = MLP(z),
z ~ N(0, I), to the encoder's embeddings of real sentences with the WGAN-GP game (Gulrajani et al.
2017, arXiv:1704.00028, eq. 3 and Algorithm 1: ``critic_steps`` critic steps per generator step)::

    L_critic    = E f(e~) - E f(E(x)) + lambda E (||grad f(e^)||_2 - 1)^2,  e^ = u E(x) + (1 - u) e~, u ~ U[0, 1]
    L_generator = -E f(G(z))

Sampling: z -> G(z) -> ancestral decoding from p(x | G(z)) with temperature, top-k and nucleus
truncation (:func:`dgm.models.language.truncate_logits`). ``encode`` gives E(x); ``decode`` decodes
an embedding greedily (the most probable byte at each step). The model has no likelihood: the GAN's
distribution over embeddings has no density.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import decode_tokens
from dgm.errors import DgmError
from dgm.models.base import Loss, Phase, Progress, Stage, inference, randn, register
from dgm.models.gan import gradient_penalty
from dgm.models.language import (ANCESTRAL, ConditionedLSTM, TextModel, picker, real_tokens, scored_targets,
                                 target_log_probs, with_start)
from dgm.nn import MLP
from dgm.nn.adversarial import MLPFeatures
from dgm.settings import Decay, NonNegativeFloat, PositiveFloat, PositiveInt

#: the phases: the autoencoder's (stage "autoencoder"), then the two players (stage "gan")
AUTOENCODER, CRITIC, GENERATOR = "autoencoder", "critic", "generator"


# --- the networks ------------------------------------------------------------------------------------
class SentenceEncoder(nn.Module):
    """embedding -> GRU -> linear -> tanh: tokens ``(B, T)`` (the real ones, then END) to the
    embedding ``(B, embed_dim)`` read at each row's end token ``n``; the GRU runs forwards, so what
    follows the end token does not reach it."""

    def __init__(self, vocab: int, width: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)  # row 0 is the end token
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.out = nn.Linear(hidden, embed_dim)

    def forward(self, ids: Tensor, n: Tensor) -> Tensor:
        states, _ = self.gru(self.embedding(ids))  # (B, T, hidden)
        at_end = n.clamp(max=ids.shape[1] - 1)  # a row filling all L positions has no end token: its last
        h_n = states.gather(1, at_end.view(-1, 1, 1).expand(-1, 1, states.shape[-1]))[:, 0]  # (B, hidden)
        return torch.tanh(self.out(h_n))


# --- the model ---------------------------------------------------------------------------------------
@dataclass
class OutlineGANConfig:
    """Settings of :class:`OutlineGAN` (``--set model.KEY=VALUE``)."""

    embed_dim: PositiveInt = 64  # size of the sentence embedding e, the space the GAN plays in
    width: PositiveInt = 64  # byte embedding size of the encoder and the decoder
    encoder_hidden: PositiveInt = 128  # GRU units of the encoder
    decoder_hidden: PositiveInt = 256  # LSTM units per decoder layer
    decoder_layers: PositiveInt = 1  # stacked decoder LSTM layers
    embedding_noise: NonNegativeFloat = 0.1  # sigma of the Gaussian noise on e while the autoencoder trains (0: off)
    autoencoder_epochs: PositiveInt = 5  # epochs of stage "autoencoder"; stage "gan" trains for the rest of train.epochs
    noise_dim: PositiveInt = 32  # dimension of the generator's noise z ~ N(0, I)
    hidden: tuple[PositiveInt, ...] = (256, 256)  # MLP widths of the generator and the critic
    critic_steps: PositiveInt = 5  # critic steps per generator step (WGAN-GP Algorithm 1: 5)
    gradient_penalty: NonNegativeFloat = 10.0  # lambda of the gradient penalty (WGAN-GP: 10)
    lr_critic: PositiveFloat = 1e-4  # Adam rate of the critic (WGAN-GP: 1e-4)
    lr_generator: PositiveFloat = 1e-4  # Adam rate of the generator
    betas: tuple[Decay, Decay] = (0.0, 0.9)  # Adam betas of both players (WGAN-GP Algorithm 1)


@register
class OutlineGAN(TextModel):
    """A sentence autoencoder, then a WGAN-GP over its embeddings; samples decode generated
    embeddings (module docstring).

    Example:
        >>> data = dgm.data.load("fortunes")
        >>> model = dgm.create("outline-gan", data.spec, embed_dim=32)
        >>> batch = data.tensors(8); model.encode(batch.x, batch.mask)   # (8, 32)
        >>> model.sample(4, temperature=0.8)   # (4, L) bytes, 0 after the end
    """

    name = "outline-gan"
    Config = OutlineGANConfig
    description = "text GAN over sentence embeddings of an autoencoder, decoded by a conditional LSTM (WGAN-GP)"
    samplers = (ANCESTRAL,)

    def __init__(self, config: OutlineGANConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        c = config
        if not c.hidden:
            raise DgmError("model.hidden needs at least one width (the critic's features): e.g. model.hidden=[256,256]")
        self.vocab, self.length = spec.vocab_size, spec.shape[0]  # V, L
        self.encoder = SentenceEncoder(self.vocab, c.width, c.encoder_hidden, c.embed_dim)
        self.decoder = ConditionedLSTM(self.vocab, c.width, c.decoder_hidden, c.decoder_layers, c.embed_dim)
        # linear output, no tanh: the encoder's codes sit near the corners of [-1, 1]^d, where a
        # tanh output would have to saturate and its gradient would vanish
        self.generator = MLP(c.noise_dim, c.hidden, c.embed_dim, activation=nn.ReLU)
        # E f(e~) - E f(e) does not change when f shifts by a constant: the score has no bias
        self.critic = nn.Sequential(MLPFeatures(c.embed_dim, c.hidden), nn.Linear(c.hidden[-1], 1, bias=False))

    # --- teacher forcing, as LanguageModel.step_log_probs -------------------------------------------
    def step_log_probs(self, x: Tensor, e: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log p(x_t | x_<t, e)`` of every scored position (the real tokens, the end token), 0 after,
        ``(B, T)``."""
        target, n = scored_targets(x, real_tokens(x, mask))
        logits, _ = self.decoder(with_start(target, self.decoder.start), e)  # (B, T, V)
        return target_log_probs(logits, target, n)


    # --- training ------------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        return [Phase(AUTOENCODER, [*self.encoder.parameters(), *self.decoder.parameters()]),
                Phase(CRITIC, list(self.critic.parameters()), steps=c.critic_steps, lr=c.lr_critic, betas=c.betas),
                Phase(GENERATOR, list(self.generator.parameters()), lr=c.lr_generator, betas=c.betas)]

    def stages(self) -> list[Stage]:
        autoencoder, critic, generator = self.phases()
        return [Stage("autoencoder", [autoencoder], epochs=self.config.autoencoder_epochs),
                Stage("gan", [critic, generator])]

    def score(self, e: Tensor) -> Tensor:
        """The critic's score f(e), ``(B,)`` in float32."""
        return self.critic(e).squeeze(-1).float()

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x, g = batch.x, progress.generator
        real = real_tokens(x, batch.mask)
        if phase == AUTOENCODER:
            e = self.encode(x, real)
            if self.config.embedding_noise > 0:
                e = e + self.config.embedding_noise * randn(e.shape, like=e, generator=g)
            nll = -self.step_log_probs(x, e, real).sum() / self.scored_units(real.sum(1)).sum()
            return Loss(nll, {"bits_per_char": nll.detach() / math.log(2)})
        with torch.no_grad():  # the encoder is frozen in stage "gan" (the trainer freezes it too)
            e_real = self.encode(x, real)
        z = randn((len(x), self.config.noise_dim), like=e_real, generator=g)
        if phase == CRITIC:
            with torch.no_grad():  # the critic's step moves the critic alone
                e_fake = self.generator(z)
            return self.critic_objective(e_real, e_fake, generator=g)
        if phase == GENERATOR:
            fake_score = self.score(self.generator(z))
            return Loss(-fake_score.mean(), {"fake_score": fake_score.mean()})
        raise ValueError(f"unknown phase {phase!r}")

    def critic_objective(self, e_real: Tensor, e_fake: Tensor, *, generator: torch.Generator | None = None) -> Loss:
        """E f(e~) - E f(e) + lambda E (||grad f(e^)|| - 1)^2 (WGAN-GP eq. 3) on embeddings ``(B, d)``."""
        real_score, fake_score = self.score(e_real), self.score(e_fake)
        distance = real_score.mean() - fake_score.mean()  # the critic's estimate of W(real, fake)
        metrics = {"wasserstein": distance.detach()}
        loss = -distance
        if self.config.gradient_penalty > 0:
            penalty = gradient_penalty(self.score, (e_real,), (e_fake,), generator)
            loss = loss + self.config.gradient_penalty * penalty
            metrics["gradient_penalty"] = penalty
        return Loss(loss, metrics)

    # --- encoding and decoding -----------------------------------------------------------------------
    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The sentence embeddings E(x) ``(B, embed_dim)`` of byte sequences ``x (B, L)`` (``mask``: the
        real tokens; ``None``: those before the first 0)."""
        ids, n = scored_targets(x, real_tokens(x, mask))
        return self.encoder(ids, n[:, 0])

    @inference
    def decode(self, z: Tensor) -> Tensor:
        """Greedy decoding of embeddings ``z (B, embed_dim)``: byte sequences ``(B, L)``, 0 after the end."""
        return self.generate(z, torch.zeros(0, dtype=torch.long, device=z.device), greedy=True)

    def generate(self, e: Tensor, prompt: Tensor, *, generator: torch.Generator | None = None, greedy: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Token sequences ``(n, L)`` from p(x | e) for embeddings ``e (n, d)``, after the tokens
        ``prompt (m,)``: one token per step through the decoder's state, the most probable one
        (``greedy``) or drawn from the truncated conditional, until every row has ended."""
        pick = picker(generator, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        return self.decoder.generate(e, prompt, self.length, pick)

    # --- generation ----------------------------------------------------------------------------------
    def generate_embeddings(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """G(z) for ``n`` draws of z ~ N(0, I), ``(n, embed_dim)``."""
        z = torch.randn(n, self.config.noise_dim, generator=generator, device=generator.device if generator else None)
        return self.generator(z.to(self.device))

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, prompt: str | None = None) -> Tensor:
        """``n`` byte sequences ``(n, L)`` int64, 0 after the end token: z -> G(z) -> p(x | G(z)), each
        starting with ``prompt``'s bytes; the options as :func:`truncate_logits`."""
        prefix, options = self.ancestral_options(condition, sampler, temperature, top_k, top_p, prompt)
        return self.generate(self.generate_embeddings(n, generator=generator), prefix, generator=generator, **options)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        """Greedy decodings along straight lines between two generator inputs z, four lines."""
        steps, lines = 7, 4
        ends = torch.randn(2, lines, self.config.noise_dim, generator=generator,
                           device=generator.device if generator else None).to(self.device)
        a = torch.linspace(0, 1, steps, device=self.device)[:, None, None]  # (steps, 1, 1)
        z = ((1 - a) * ends[0] + a * ends[1]).transpose(0, 1).reshape(lines * steps, -1)  # line by line
        texts = decode_tokens(self.decode(self.generator(z)))
        blocks = ["\n".join(texts[i * steps:(i + 1) * steps]) for i in range(lines)]
        return [("Interpolations between outlines", "\n\n".join(blocks), 0,
                 f"{lines} blocks; each decodes (greedily) G(z) for {steps} points on a straight line between two "
                 f"random noise vectors z: how the generated sentence changes as its outline moves")]
