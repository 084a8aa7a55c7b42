"""Handwriting: a mixture-density LSTM over pen-stroke sequences (Graves 2013, section 4).

Graves 2013, "Generating Sequences With Recurrent Neural Networks" (arXiv:1308.0850). A glyph is a
sequence of points ``x_0 .. x_{n-1}``, each ``(dx, dy, e)``: the pen's offset and whether the point
ends a stroke (:mod:`dgm.data.strokes`; ``hershey``, ``strokes:PATH``). The model factorises::

    p(x) = prod_{t=0}^{n-1} Pr(x_t | y_{t-1}),     y_{t-1} = network(x_{-1}, x_0, .., x_{t-1})

with ``x_{-1} = (0, 0, 1)`` (the pen up before the first stroke). The network is a stack of LSTM
layers with skip connections (eqs. 1-3): every layer reads the input beside the layer below, and
the output reads every layer, ``y_t = b_y + sum_n W_{h^n y} h^n_t``. ``Pr(x_t | y_{t-1})`` is
:class:`dgm.nn.likelihoods.PenMixture`: an M-component bivariate Gaussian mixture over the offset
and a Bernoulli end-of-stroke bit (eqs. 17-25), with an end-of-sequence bit at the ends of strokes
so that a sample finishes its glyph (the sequence's last point; a sequence that fills all
``max_points`` rows ends there as well). The loss is eq. 26, ``-log p(x)`` of each sequence, over its
real points only (the batch's ``mask``); it is logged and minimised per real point.

**Units.** :meth:`MixtureDensityRNN.log_prob` is exact: a density over the continuous offsets (in
the data's units, ``spec.extras["scale"]`` font units each) times the probabilities of the pen
bits, in nats per sequence; per stroke point it is ``-log p(x) / n``. It changes by ``2 log c`` per
point when the offsets are measured in units ``c`` times smaller.

**Sampling** is ancestral, one point at a time with the LSTM states as the cache, until the end
bit is drawn (or ``max_points``), then zero rows (padding); ``bias`` is Graves's biased sampling
(section 5.4, eqs. 61-62): sharper mixture weights and narrower Gaussians, neater glyphs. With
``model.conditional`` the class (the character of ``hershey``) is an input at every step, and
``sample(n, condition=k)`` draws that character. Text-conditioned synthesis (section 5, the soft
window over a character string) is not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import real_mask
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, class_marginal, register
from dgm.models.refusals import class_labels, refuse_partial_labels, refuse_unlabelled
from dgm.nn.likelihoods import PenMixture
from dgm.settings import NonNegativeFloat, PositiveInt

START = (0.0, 0.0, 1.0)  # x_{-1}: no offset, the pen up


@dataclass
class MixtureDensityRNNConfig:
    """Settings of :class:`MixtureDensityRNN` (``--set model.KEY=VALUE``); Graves used 3 layers of 400
    and 20 components on IAM-OnDB."""

    layers: PositiveInt = 2  # LSTM layers, each reading the input and the layer below (skip connections)
    hidden: PositiveInt = 128  # units per LSTM layer
    components: PositiveInt = 20  # M, the bivariate Gaussians of the offset's mixture
    conditional: bool = False  # the class (the character, on hershey) is an input at every step
    class_dim: PositiveInt = 16  # conditional: the size of the class embedding


@dataclass
class StrokeOptions:
    """Options of ancestral sampling of pen strokes (``dgm sample RUN --bias 1``)."""

    bias: NonNegativeFloat | None = field(default=None, metadata={
        "help": "Graves's sampling bias b (section 5.4): pi = softmax(pi^ (1 + b)), sigma = exp(sigma^ - b); "
                "0 draws from the model itself, larger values give neater strokes; default 0"})


@register
class MixtureDensityRNN(GenerativeModel):
    """An LSTM with a bivariate Gaussian mixture and pen bits over pen offsets (Graves 2013; module docstring).

    Example:
        >>> data = dgm.data.load("hershey")
        >>> model = dgm.create("mdn-rnn", data.spec, hidden=64)
        >>> batch = data.tensors(8)
        >>> model.log_prob(batch.x, mask=batch.mask)  # exact, nats per glyph, (8,)
        >>> model.sample(4, bias=1.0)  # (4, 64, 3): rows (dx, dy, pen_up), then zero rows
    """

    name = "mdn-rnn"
    Config = MixtureDensityRNNConfig
    description = "Mixture-density LSTM over pen strokes (Graves 2013): handwriting, exact NLL per stroke point"
    samplers = (Sampler("ancestral", "one point at a time: a mixture component, its Gaussian offset, the pen bits; "
                        "with Graves's bias", StrokeOptions),)

    def __init__(self, config: MixtureDensityRNNConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if spec.kind != "points" or not spec.extras.get("strokes"):
            raise DgmError(f"model {self.name!r} models pen strokes, but {spec.name!r} holds {spec.kind} data: use "
                           "--data hershey or --data strokes:PATH (a Hershey .jhf file)")
        c = config
        if c.conditional:
            refuse_unlabelled(self.name, spec)
            self.class_embedding = nn.Embedding(spec.num_classes, c.class_dim)
        inputs = 3 + (c.class_dim if c.conditional else 0)  # x_{t-1} (and the class)
        # eqs. 1-2: layer 1 reads the input, layer n the input and h^{n-1}
        self.lstms = nn.ModuleList(nn.LSTM(inputs + (n > 0) * c.hidden, c.hidden, batch_first=True)
                                   for n in range(c.layers))
        self.output = nn.Linear(c.layers * c.hidden, PenMixture.num_params(c.components))  # eq. 3
        self.register_buffer("start", torch.tensor(START))

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    # --- the network: y_t from x_{t-1} ------------------------------------------------------------------
    def network(self, inputs: Tensor, labels: Tensor | None,
                state: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Outputs ``y (B, T, num_params)`` for inputs ``(B, T, 3)`` and the LSTM states after them
        (``state``: the states before, ``None`` for zeros), eqs. 1-3."""
        if labels is not None:
            inputs = torch.cat([inputs, self.class_embedding(labels)[:, None].expand(-1, inputs.shape[1], -1)], -1)
        h, hs, states = None, [], []
        for n, lstm in enumerate(self.lstms):
            h, s = lstm(inputs if h is None else torch.cat([inputs, h], -1), None if state is None else state[n])
            hs.append(h)
            states.append(s)
        return self.output(torch.cat(hs, -1)), states

    # --- the density -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, mask: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``, of sequences ``x (B, N, 3)`` whose real points are ``mask
        (B, N)`` (``None``: the rows that are not all zero); a density over the offsets (module docstring,
        Units). A conditional model gives ``log p(x | y)`` for classes ``y (B,)``, and without them the
        marginal over a uniform class prior, ``logsumexp_k log p(x | k) - log K``."""
        mask = real_mask(x, self.spec) if mask is None else mask
        if not self.config.conditional or y is not None:
            return self.log_prob_per_point(x, mask, y).sum(1)
        return class_marginal(lambda x, y: self.log_prob_per_point(x, mask, y).sum(1), x, self.spec.num_classes)

    def log_prob_per_point(self, x: Tensor, mask: Tensor, y: Tensor | None = None) -> Tensor:
        """``log Pr(x_t | y_{t-1})`` of every real point, 0 at the padding, ``(B, N)``."""
        x = x.to(self.output.weight.dtype)
        inputs = torch.cat([self.start.expand(len(x), 1, 3), x[:, :-1]], 1)  # x_{-1} .. x_{N-2}
        out, _ = self.network(inputs, y if self.config.conditional else None)
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        last = torch.arange(x.shape[1], device=x.device) == lengths - 1  # (B, N): the sequence ends here
        point = PenMixture.from_outputs(out, self.config.components).log_prob(x, last)  # eq. 23
        return torch.where(mask, point, 0.0)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        mask = real_mask(batch.x, self.spec) if batch.mask is None else batch.mask
        if self.config.conditional:
            refuse_partial_labels(self.name, batch, "conditioned on the class")
        nll_per_point = -self.log_prob_per_point(batch.x, mask, batch.y).sum() / mask.sum()  # eq. 26, per real point
        return Loss(nll_per_point, {"nll_per_point": nll_per_point.detach()})

    # --- generation --------------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | int | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, bias: float | None = None) -> Tensor:
        """``n`` sequences ``(n, max_points, 3)``: points drawn one at a time until the end bit (or
        ``max_points``), then zero rows; ``bias`` as Graves's section 5.4 (default 0)."""
        if sampler not in (None, "ancestral"):
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use --sampler ancestral")
        if bias is not None and bias < 0:
            raise DgmError(f"--bias must be >= 0, got {bias}")
        labels = class_labels(self.name, condition, n, self.num_classes, self.start.device)
        if self.config.conditional and labels is None:  # a conditional model draws classes in turn
            labels = torch.arange(n, device=self.start.device) % self.spec.num_classes
        N = self.spec.shape[0]
        x = torch.zeros(n, N, 3, device=self.start.device)
        point, state = self.start.expand(n, 1, 3), None
        done = torch.zeros(n, dtype=torch.bool, device=x.device)  # the end bit was drawn before this row
        for t in range(N):  # fixed length: no host read of `done` per step
            out, state = self.network(point, labels, state)
            point, stop = PenMixture.from_outputs(out, self.config.components, bias=bias or 0.0).sample(generator)
            x[:, t] = torch.where(done[:, None], 0.0, point[:, 0])
            done = done | stop[:, 0]
        return x
