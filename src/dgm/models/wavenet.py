"""WaveNet: an autoregressive model of raw audio over mu-law 8-bit samples.

van den Oord, Dieleman, Zen, Simonyan, Vinyals, Graves, Kalchbrenner, Senior & Kavukcuoglu 2016,
"WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499. A clip ``x = (x_1, ..., x_T)`` of
mu-law codes (:mod:`dgm.data.audio`) factorises as (eq. 1)::

    p(x | h) = prod_{t=1}^{T} p(x_t | x_1, ..., x_{t-1}, h)

each conditional a 256-way softmax over the codes, computed for all t at once by the network of
:mod:`dgm.nn.wavenet` (stacks of dilated causal convolutions with gated units, eq. 2, residual and
skip connections). With ``conditional=true`` a learned embedding ``h`` of the clip's label (the
spoken word) is given to every layer (global conditioning, eq. 3); ``log_prob`` is then the exact
marginal over a uniform label prior, ``log p(x) = logsumexp_y log p(x | y) - log K``.

The conditional of ``x_t`` sees the ``R`` codes before it (:attr:`WaveNetModel.receptive_field`);
before the clip's start the history is a start symbol (an input code of its own, ``levels``: the
network knows where a clip begins, so it learns when the speech after the leading silence starts),
padded explicitly, so the network's convolutions are valid and a crop of a clip (``crop``: training on random windows, the history
before the window included) gives the same conditionals as the whole clip. ``log_prob`` is exact:
``sum_t log p(x_t | x_<t)`` in nats; the evaluator's bits per dimension are bits per audio sample
(a uniform model scores 8).

Sampling draws one code at a time with the per-layer queues of Fast WaveNet (Paine et al. 2016,
arXiv:1611.09482): one column of every layer per sample, so T samples cost T small steps, not T
passes over the receptive field.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, capability, class_marginal, randint, register
from dgm.models.refusals import class_labels, refuse_partial_labels
from dgm.nn.likelihoods import sample_categorical
from dgm.nn.wavenet import WaveNet
from dgm.settings import NonNegativeInt, PositiveFloat, PositiveInt

#: the most logits one pass of log_prob holds (examples x codes x positions), to bound its memory
LOGITS_PER_PASS = 2 ** 25


def at_least_float32(logits: Tensor) -> Tensor:
    """Logits in float32 where the network ran in bf16 or fp16 (autocast): the log-likelihood sums
    T terms; float64 stays float64."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU operators on one thread (restored after): a generation step is a few products
    of (n, 32) by (32, 64) matrices, which several threads only slow down by waking each other
    (about 10x on a busy 2-core machine)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class WaveNetConfig:
    """Settings of ``wavenet`` (``--set model.KEY=VALUE``)."""

    residual_channels: PositiveInt = 32  # channels of the residual stream
    gate_channels: PositiveInt = 32  # channels of each gated unit's filter and gate
    skip_channels: PositiveInt = 64  # channels of the skip connections and of the output's hidden layer
    dilation_depth: PositiveInt = 8  # layers per stack, dilations 1, 2, ..., 2^(depth - 1)
    stacks: PositiveInt = 2  # stacks of dilated layers (section 2.1 repeats 1..512 several times); R = 2 + stacks (2^depth - 1)
    conditional: bool = False  # global conditioning on the label (the spoken word), eq. 3
    condition_dim: PositiveInt = 16  # size of the label embedding h
    crop: NonNegativeInt = 1000  # train on a random window of this many samples of each clip (0, or longer than a clip: whole clips)


@dataclass
class AncestralOptions:
    """Options of ancestral sampling (``dgm sample RUN --temperature 0.9``)."""

    temperature: PositiveFloat | None = field(default=None, metadata={
        "help": "divide the logits by this (< 1 sharper, > 1 flatter); default 1"})


ANCESTRAL = Sampler("ancestral", "one code at a time from p(x_t | x_<t), with Fast WaveNet's per-layer queues "
                    "(exact)", AncestralOptions)


@register
class WaveNetModel(GenerativeModel):
    """WaveNet over mu-law codes: exact log p(x) in nats, bits per audio sample, incremental sampling."""

    name = "wavenet"
    Config = WaveNetConfig
    description = ("WaveNet (van den Oord et al. 2016): dilated causal convolutions with gated units over "
                   "mu-law 8-bit audio, a 256-way softmax per sample; exact likelihood, Fast WaveNet sampling")
    samplers = (ANCESTRAL,)

    @classmethod
    def default_representation(cls, config: WaveNetConfig, spec: DataSpec) -> str:
        if spec.kind != "audio":
            raise DgmError(f"model {cls.name!r} models audio, but {spec.name!r} holds {spec.kind} data: use "
                           f"--data spoken-digits or wav:PATH")
        return "levels"

    def __init__(self, config: WaveNetConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        if spec.representation != "levels" or spec.levels is None:
            raise DgmError(f"model {self.name!r} reads mu-law codes (the 'levels' representation), got "
                           f"{spec.representation!r}: drop --set data.representation")
        c = config
        if c.conditional and not spec.num_classes:
            raise DgmError(f"a conditional wavenet needs labelled audio, and {spec.name!r} has no labels: "
                           f"set model.conditional=false")
        dilations = tuple(2 ** i for i in range(c.dilation_depth)) * c.stacks
        self.label_embedding = nn.Embedding(spec.num_classes, c.condition_dim) if c.conditional else None
        self.network = WaveNet(spec.levels, c.residual_channels, c.gate_channels, c.skip_channels, dilations,
                               c.condition_dim if c.conditional else 0)
        # the start symbol, an input code after the data's (levels), pads the history before a clip
        self.register_buffer("before", torch.full((1, self.receptive_field), spec.levels), persistent=False)

    @property
    def receptive_field(self) -> int:
        """How many samples before ``x_t`` its conditional sees (and, divided by the sample rate, how long)."""
        return self.network.receptive_field

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    @property
    def sample_rate(self) -> int:
        return int(self.spec.extras.get("sample_rate", 8000))

    def describe(self) -> str:
        """One line for reports: the receptive field in samples and milliseconds."""
        R = self.receptive_field
        return f"receptive field {R} samples ({1000 * R / self.sample_rate:.0f} ms at {self.sample_rate} Hz)"

    # --- the conditionals -------------------------------------------------------------------------------
    def condition(self, y: Tensor | None) -> Tensor | None:
        if self.label_embedding is None:
            return None
        if y is None:
            raise DgmError(f"this {self.name} is conditional: give the labels")
        return self.label_embedding(y)

    def history(self, x: Tensor) -> Tensor:
        """The network's input for clips ``x (B, T)``: R start symbols, then ``x`` without its last
        code, ``(B, T + R - 1)``; output ``t`` of the network then predicts ``x_t`` from ``x_{t-R..t-1}``."""
        pad = self.before.expand(len(x), -1)
        return torch.cat([pad, x[:, :-1].long()], 1)

    def code_log_probs(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``log p(x_t | x_<t, y)`` of every sample, ``(B, T)`` nats, in passes of bounded memory."""
        per_pass = max(1, LOGITS_PER_PASS // (self.spec.levels * x.shape[1]))
        out = []
        for i in range(0, len(x), per_pass):
            xs = x[i:i + per_pass].long()
            logits = self.network(self.history(xs), self.condition(None if y is None else y[i:i + per_pass]))
            out.append(-F.cross_entropy(at_least_float32(logits), xs, reduction="none"))
        return torch.cat(out)

    # --- likelihood and training ----------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        """Mean NLL per audio sample (nats), over whole clips or a random window of ``crop`` samples
        of each (its history before the window included, so its conditionals are exact)."""
        x = batch.x.long()
        y = None
        if self.config.conditional:
            refuse_partial_labels(self.name, batch, "as a conditional model")
            y = batch.y
        inputs, targets = self.history(x), x
        if self.config.crop and self.config.crop < x.shape[1]:
            W, R = self.config.crop, self.receptive_field
            start = randint(x.shape[1] - W + 1, (len(x),), like=x, generator=progress.generator)[:, None]  # (B, 1)
            steps = torch.arange(W + R - 1, device=x.device)
            inputs = inputs.gather(1, start + steps)  # history[start .. start + W + R - 2]: codes up to x_{start+W-2}
            targets = x.gather(1, start + steps[:W])
        logits = self.network(inputs, self.condition(y))  # (B, 256, T or W)
        nll = F.cross_entropy(at_least_float32(logits), targets)
        return Loss(nll, {"bits_per_sample": nll.detach() / math.log(2)})

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``; for a conditional model the marginal over a uniform
        label prior (K passes)."""
        if not self.config.conditional:
            return self.code_log_probs(x).sum(1)
        return class_marginal(self.conditional_log_prob, x, self.spec.num_classes)

    @capability
    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """Exact ``log p(x | y)`` in nats, ``(B,)``, of a conditional model (the word given)."""
        return self.code_log_probs(x, y).sum(1)

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.conditional:
            return {}
        return {"conditional_log_prob": "the model is unconditional (train with --set model.conditional=true)"}

    def monitors(self) -> dict[str, dict]:
        # held-out bits per sample after every epoch, on 64 clip passes (a conditional model's marginal takes K each)
        return {"heldout_nll": {"max_examples": max(4, 64 // (self.num_classes or 1))}}

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        dilations = [layer.dilation for layer in self.network.layers]
        return [("Receptive field", f"{self.describe()}: a causal convolution of width 2, then dilated layers of "
                 f"width 2 with dilations {', '.join(map(str, dilations))}", 0,
                 "how much of the past each sample's conditional p(x_t | x_<t) sees (R = 2 + the sum of the dilations)")]

    # --- generation -----------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, temperature: float | None = None, progress: bool = False) -> Tensor:
        """``n`` clips ``(n, T)`` of mu-law codes, drawn one sample at a time from the start (each
        given its label: ``condition``, or uniform labels for a conditional model)."""
        if sampler not in (None, ANCESTRAL.name):
            raise DgmError(f"wavenet has one sampler, {ANCESTRAL.name!r}: drop --sampler {sampler}")
        y = class_labels(self.name, condition, n, self.num_classes, self.device)
        if y is None and self.config.conditional:
            y = randint(self.spec.num_classes, (n,), like=self.before, generator=generator)
        T = self.spec.shape[0]
        x = torch.empty(n, T, dtype=torch.long, device=self.device)
        logits, queues = self.network.start(self.before.expand(n, -1), self.condition(y))
        steps = range(T)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="wavenet sampling", unit="sample", leave=False)
        with one_cpu_thread(self.device):
            for t in steps:
                x[:, t] = sample_categorical(at_least_float32(logits) / (temperature or 1.0), 1, generator)[:, 0]
                if t + 1 < T:
                    logits = self.network.step(x[:, t], queues)
        return x

    def preview_sample(self, n: int, *, generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        return self.sample(n, generator=generator, progress=progress)
