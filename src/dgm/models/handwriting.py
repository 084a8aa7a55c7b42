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
``sample(n, condition=k)`` draws that character.

**Synthesis** (section 5, ``model.window_components = K > 0``, on data whose captions are characters:
``hershey-words``). The strokes are conditioned on a string ``c_1 .. c_U`` (one-hot ``c_u``) through a
soft window that the first layer moves along it::

    (alpha^, beta^, kappa^)_t = W_{h^1 p} h^1_t + b_p                       (eq. 48)
    alpha_t = exp(alpha^_t),  beta_t = exp(beta^_t),  kappa_t = kappa_{t-1} + exp(kappa^_t)   (eqs. 49-51)
    phi(t, u) = sum_{k=1}^K alpha^k_t exp(-beta^k_t (kappa^k_t - u)^2)         (eq. 46)
    w_t = sum_{u=1}^U phi(t, u) c_u                                         (eq. 47)

``h^1_t`` reads ``x_t`` and ``w_{t-1}`` (eq. 52), so the first layer is stepped through time (batched
over the sequences); ``w_t`` joins the input of the higher layers (eq. 53) and, beside Graves's eqs.,
the output ``y_t`` (so that a one-layer net reads the window too). :meth:`log_prob` is then
``log p(x | c)`` and needs the text (``captions=``, the batch's caption ids; the protocol's
``conditional_log_prob(x, captions)``): there is no ``p(c)``, so the marginal ``log_prob`` is
withheld from evaluation. ``sample(n, caption="dgm")`` (``dgm sample RUN --caption dgm``) stops a
sequence at its end bit or when the window has passed the last character, ``phi(t, U + 1) > phi(t, u)``
for every ``u <= U`` (Graves's heuristic, section 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.data.pictures import real_mask
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, capability, class_marginal, register
from dgm.models.refusals import class_labels, refuse_partial_labels, refuse_unlabelled
from dgm.nn.likelihoods import PenMixture
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt

START = (0.0, 0.0, 1.0)  # x_{-1}: no offset, the pen up
POINTS_PER_CHARACTER = 20  # about the points of a glyph of hershey: the window's first pace (eq. 51)


@dataclass
class MixtureDensityRNNConfig:
    """Settings of :class:`MixtureDensityRNN` (``--set model.KEY=VALUE``); Graves used 3 layers of 400
    and 20 components on IAM-OnDB."""

    layers: PositiveInt = 2  # LSTM layers, each reading the input and the layer below (skip connections)
    hidden: PositiveInt = 128  # units per LSTM layer
    components: PositiveInt = 20  # M, the bivariate Gaussians of the offset's mixture
    conditional: bool = False  # the class (the character, on hershey) is an input at every step
    class_dim: PositiveInt = 16  # conditional: the size of the class embedding
    window_components: NonNegativeInt = 0  # K Gaussians of the soft window over the text (synthesis); 0: no text


@dataclass
class StrokeOptions:
    """Options of ancestral sampling of pen strokes (``dgm sample RUN --bias 1``)."""

    bias: NonNegativeFloat | None = field(default=None, metadata={
        "help": "Graves's sampling bias b (section 5.4): pi = softmax(pi^ (1 + b)), sigma = exp(sigma^ - b); "
                "0 draws from the model itself, larger values give neater strokes; default 0"})
    caption: str | None = field(default=None, metadata={
        "help": "synthesis (model.window_components > 0): write this string (characters of the data's alphabet); "
                "default: the data's example strings in turn"})


@register
class MixtureDensityRNN(GenerativeModel):
    """An LSTM with a bivariate Gaussian mixture and pen bits over pen offsets (Graves 2013; module docstring).

    Example:
        >>> data = dgm.data.load("hershey")
        >>> model = dgm.create("mdn-rnn", data.spec, hidden=64)
        >>> batch = data.tensors(8)
        >>> model.log_prob(batch.x, mask=batch.mask)  # exact, nats per glyph, (8,)
        >>> model.sample(4, bias=1.0)  # (4, 64, 3): rows (dx, dy, pen_up), then zero rows
        >>> words = dgm.data.load("hershey-words")
        >>> writer = dgm.create("mdn-rnn", words.spec, window_components=10)
        >>> writer.conditional_log_prob(batch.x, batch.captions, mask=batch.mask)  # log p(x | text), (8,)
        >>> writer.sample(4, caption="dgm")  # (4, 256, 3)
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
        window = 0  # the size of w_t: the alphabet's, with a window
        if c.window_components:
            alphabet = spec.extras.get("caption_characters")
            if c.conditional:
                raise DgmError("model.conditional and model.window_components both condition mdn-rnn: the text of "
                               "a synthesis model names its characters already, so set model.conditional=false")
            if not alphabet:
                raise DgmError(f"model.window_components={c.window_components} conditions {self.name!r} on text, but "
                               f"{spec.name!r} has no character captions: use --data hershey-words, or "
                               "model.window_components=0")
            self.alphabet, window = str(alphabet), len(alphabet)
            self.window = nn.Linear(c.hidden, 3 * c.window_components)  # eq. 48
            with torch.no_grad():  # kappa^ starts near log(1/20): a glyph has some 20 points (the window keeps pace)
                self.window.bias[2 * c.window_components:] = -math.log(POINTS_PER_CHARACTER)
        # eqs. 1-2 (52-53): layer 1 reads the input (and w_{t-1}), layer n the input (and w_t) and h^{n-1}
        self.lstms = nn.ModuleList(nn.LSTM(inputs + window + (n > 0) * c.hidden, c.hidden, batch_first=True)
                                   for n in range(c.layers))
        self.output = nn.Linear(c.layers * c.hidden + window, PenMixture.num_params(c.components))  # eq. 3
        self.register_buffer("start", torch.tensor(START))

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.window_components:
            return {"log_prob": "a synthesis model (model.window_components > 0) has p(strokes | text) and no p(text): "
                                "use conditional_log_prob(x, captions)"}
        return {"conditional_log_prob": "the model reads no text (train with --set model.window_components=10 "
                                        "on --data hershey-words)"}

    # --- the network: y_t from x_{t-1} ------------------------------------------------------------------
    def network(self, inputs: Tensor, labels: Tensor | None, state: list | None = None,
                text: Tensor | None = None) -> tuple[Tensor, list]:
        """Outputs ``y (B, T, num_params)`` for inputs ``(B, T, 3)`` and the states after them (``state``:
        the states before, ``None`` for zeros), eqs. 1-3; with a window, of the one-hot text ``(B, U, V)``
        (eqs. 46-53; the first state is then the window's, :meth:`first_layer`)."""
        if labels is not None:
            inputs = torch.cat([inputs, self.class_embedding(labels)[:, None].expand(-1, inputs.shape[1], -1)], -1)
        h, hs, states, window = None, [], [], []
        for n, lstm in enumerate(self.lstms):
            s = None if state is None else state[n]
            if n == 0 and text is not None:
                h, s, w = self.first_layer(inputs, text, s)
                inputs, window = torch.cat([inputs, w], -1), [w]  # w_t reaches the higher layers and y_t
            else:
                h, s = lstm(inputs if h is None else torch.cat([inputs, h], -1), s)
            hs.append(h)
            states.append(s)
        return self.output(torch.cat(hs + window, -1)), states

    def first_layer(self, inputs: Tensor, text: Tensor, state: tuple | None) -> tuple[Tensor, tuple, Tensor]:
        """Layer 1 and the soft window stepped through ``T`` inputs ``(B, T, D)`` (module docstring): ``h^1
        (B, T, H)``, the state after them ``(h, c, kappa, w, log phi)`` (``log phi (B, U + 1)``: the last
        step's window, ``u = 1 .. U + 1``) and ``w (B, T, V)``."""
        B, T, _ = inputs.shape
        U, lstm = text.shape[1], self.lstms[0]
        if state is None:
            zero = inputs.new_zeros(B, self.config.hidden)
            kappa, w = inputs.new_zeros(B, self.config.window_components), inputs.new_zeros(B, text.shape[2])
            state = zero, zero, kappa, w, None
        h, c, kappa, w, _ = state
        u = torch.arange(1, U + 2, device=inputs.device, dtype=inputs.dtype)  # the characters' positions, and U + 1
        hs, ws = [], []
        for t in range(T):  # h^1_t needs w_{t-1}, which needs h^1_{t-1}: no parallel scan
            h, c = torch.lstm_cell(torch.cat([inputs[:, t], w], -1), (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0,
                                   lstm.bias_ih_l0, lstm.bias_hh_l0)  # eq. 52, one step of nn.LSTM's layer
            alpha_hat, beta_hat, kappa_hat = self.window(h).chunk(3, -1)  # eq. 48, (B, K) each
            kappa = kappa + kappa_hat.exp()  # eq. 51: the window only moves forward
            # eq. 46 with alpha = exp(alpha^), beta = exp(beta^) (eqs. 49-50), summed in logs: far past the
            # text every phi(t, u) underflows, and the sampler still compares them
            log_phi = (alpha_hat[..., None] - beta_hat.exp()[..., None] * (kappa[..., None] - u) ** 2).logsumexp(1)
            w = torch.bmm(log_phi[:, None, :U].exp(), text)[:, 0]  # eq. 47, (B, V)
            hs.append(h)
            ws.append(w)
        return torch.stack(hs, 1), (h, c, kappa, w, log_phi), torch.stack(ws, 1)

    def one_hot(self, captions: Tensor) -> Tensor:
        """The one-hot characters ``c_u`` ``(B, U, V)`` of caption ids ``(B, U)`` (0, the padding, is all zeros)."""
        if captions is None or captions.dim() != 2:
            raise DgmError("a synthesis model (model.window_components > 0) needs the text: pass caption ids (B, U) "
                           "(Batch.captions of --data hershey-words) as captions=")
        return F.one_hot(captions.long(), len(self.alphabet) + 1)[..., 1:].to(self.output.weight.dtype)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Caption ids ``(n, U)`` of strings; one clear line for characters outside the alphabet."""
        bad = sorted({ch for text in texts for ch in text if ch not in self.alphabet})
        if bad or not all(texts):
            raise DgmError(f"cannot write {texts!r}: give non-empty strings of {self.alphabet!r}"
                           + (f" (not {''.join(bad)!r})" if bad else ""))
        ids = torch.zeros(len(texts), max(map(len, texts)), dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, :len(text)] = torch.tensor([1 + self.alphabet.index(ch) for ch in text])
        return ids.to(self.start.device)

    # --- the density -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, mask: Tensor | None = None, y: Tensor | None = None, *,
                 captions: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``, of sequences ``x (B, N, 3)`` whose real points are ``mask
        (B, N)`` (``None``: the rows that are not all zero); a density over the offsets (module docstring,
        Units). A conditional model gives ``log p(x | y)`` for classes ``y (B,)``, and without them the
        marginal over a uniform class prior, ``logsumexp_k log p(x | k) - log K``. A synthesis model gives
        ``log p(x | c)`` of the text of caption ids ``captions (B, U)``, which it needs."""
        mask = real_mask(x, self.spec) if mask is None else mask
        if not self.config.conditional or y is not None:
            return self.log_prob_per_point(x, mask, y, captions).sum(1)
        return class_marginal(lambda x, y: self.log_prob_per_point(x, mask, y, captions).sum(1), x,
                              self.spec.num_classes)

    @capability
    def conditional_log_prob(self, x: Tensor, captions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Exact ``log p(x | c)`` in nats, ``(B,)``, of strokes ``x (B, N, 3)`` given their text, caption
        ids ``(B, U)`` (synthesis models only: module docstring)."""
        return self.log_prob(x, mask, captions=captions)

    def log_prob_per_point(self, x: Tensor, mask: Tensor, y: Tensor | None = None,
                           captions: Tensor | None = None) -> Tensor:
        """``log Pr(x_t | y_{t-1})`` of every real point, 0 at the padding, ``(B, N)``."""
        x, N = x.to(self.output.weight.dtype), x.shape[1]
        text = self.one_hot(captions) if self.config.window_components else None
        if text is not None:  # stepped through time: stop at the longest sequence (one host read)
            longest = int(mask.sum(1).max())
            x, mask = x[:, :longest], mask[:, :longest]
        inputs = torch.cat([self.start.expand(len(x), 1, 3), x[:, :-1]], 1)  # x_{-1} .. x_{N-2}
        out, _ = self.network(inputs, y if self.config.conditional else None, text=text)
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        last = torch.arange(x.shape[1], device=x.device) == lengths - 1  # (B, N): the sequence ends here
        point = PenMixture.from_outputs(out, self.config.components).log_prob(x, last)  # eq. 23
        return F.pad(torch.where(mask, point, 0.0), (0, N - x.shape[1]))

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        mask = real_mask(batch.x, self.spec) if batch.mask is None else batch.mask
        if self.config.conditional:
            refuse_partial_labels(self.name, batch, "conditioned on the class")
        point = self.log_prob_per_point(batch.x, mask, batch.y, batch.captions)
        nll_per_point = -point.sum() / mask.sum()  # eq. 26, per real point
        return Loss(nll_per_point, {"nll_per_point": nll_per_point.detach()})

    # --- generation --------------------------------------------------------------------------------------
    def sample(self, n: int, condition: Tensor | int | str | list[str] | None = None, *,
               generator: torch.Generator | None = None, sampler: str | None = None, bias: float | None = None,
               caption: str | None = None) -> Tensor:
        """``n`` sequences ``(n, max_points, 3)``: points drawn one at a time until the end bit (or
        ``max_points``), then zero rows; ``bias`` as Graves's section 5.4 (default 0). A synthesis model
        writes ``caption`` (or ``condition``: a string, ``n`` strings or caption ids ``(n, U)``; default
        the data's example strings in turn) and also stops where its window has passed the text."""
        if sampler not in (None, "ancestral"):
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use --sampler ancestral")
        if bias is not None and bias < 0:
            raise DgmError(f"--bias must be >= 0, got {bias}")
        if self.config.window_components:
            return self.write(self.requested_text(n, condition, caption), generator=generator, bias=bias or 0.0)
        if caption is not None:
            raise DgmError(f"this {self.name!r} reads no text: drop --caption, or train one with "
                           "--set model.window_components=10 on --data hershey-words")
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

    def requested_text(self, n: int, condition: Tensor | str | list[str] | None, caption: str | None) -> Tensor:
        """Caption ids ``(n, U)`` of what a synthesis model was asked to write (:meth:`sample`)."""
        if caption is not None and condition is not None:
            raise DgmError("give a caption or a condition, not both")
        condition = caption if caption is not None else condition
        if isinstance(condition, Tensor):
            ids = condition.to(self.start.device).long()
            return ids.expand(n, -1) if len(ids) == 1 else ids
        texts = ([condition] if isinstance(condition, str) else list(condition) if condition is not None else
                 list(self.spec.extras.get("example_captions") or [self.alphabet[:3]]))
        if len(texts) != n and (condition is not None and len(texts) != 1):
            raise DgmError(f"give one string or {n} of them, got {len(texts)}")
        return self.encode_text([texts[i % len(texts)] for i in range(n)])

    def write(self, captions: Tensor, *, generator: torch.Generator | None = None, bias: float = 0.0) -> Tensor:
        """Strokes ``(n, max_points, 3)`` of caption ids ``(n, U)``: ancestral sampling with the window, until
        the end bit or until the window has passed the last character (module docstring)."""
        n, N = len(captions), self.spec.shape[0]
        text, chars = self.one_hot(captions), (captions != 0).sum(1)  # (n, U, V), U_i
        real = torch.arange(captions.shape[1] + 1, device=captions.device) < chars[:, None]  # u <= U_i, (n, U + 1)
        x = torch.zeros(n, N, 3, device=self.start.device)
        point, state = self.start.expand(n, 1, 3), None
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for t in range(N):  # fixed length: no host read of `done` per step
            out, state = self.network(point, None, state, text)
            log_phi = state[0][4]  # log phi(t, u), u = 1 .. U + 1
            passed = log_phi.gather(1, chars[:, None])[:, 0] > log_phi.masked_fill(~real, -torch.inf).amax(1)
            if t > 0:  # the window passed the text: the last point drawn ends the sequence (and its stroke)
                ends = passed & ~done
                x[:, t - 1, 2] = torch.where(ends, 1.0, x[:, t - 1, 2])
                done = done | ends
            point, stop = PenMixture.from_outputs(out, self.config.components, bias=bias).sample(generator)
            x[:, t] = torch.where(done[:, None], 0.0, point[:, 0])
            done = done | stop[:, 0]
        return x
