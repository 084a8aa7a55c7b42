"""The WaveNet network: dilated causal convolutions with gated units, residual and skip connections,
and its incremental form for generation (shapes in, logits out; the probability lives in
:mod:`dgm.models.wavenet`).

van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499, section 2
and Fig. 4. Each layer ``l`` (dilation ``d``, filter width 2) maps its input ``h`` to::

    z   = tanh(W_f,l * h + V_f,l^T c) (.) sigmoid(W_g,l * h + V_g,l^T c)      (eq. 2; eq. 3: c global)
    out = h + 1x1_res(z),   skip_l = 1x1_skip(z)

and the output is ``1x1(relu(1x1(relu(sum_l skip_l))))``: logits over the next sample's code.

The convolutions here are *valid* (no implicit zero padding): an input of ``L`` codes gives
``L - R + 1`` outputs, output ``j`` seeing inputs ``j .. j + R - 1``, ``R`` the receptive field
(:attr:`WaveNet.receptive_field`). The process pads the history explicitly (with a start symbol,
input code ``levels``, one more than the outputs), so a window
cut anywhere from a clip (training on crops) gives exactly the logits of the whole clip.

Generation runs one sample at a time with a queue per layer (Paine et al. 2016, "Fast Wavenet
Generation Algorithm", arXiv:1611.09482): a layer of dilation ``d`` keeps the inputs of its last
``d`` steps in a ring buffer, so each step costs one column of every layer, not a pass over the
receptive field. :meth:`WaveNet.start` fills the queues from a history, :meth:`WaveNet.step`
advances by one code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GatedLayer(nn.Module):
    """One residual layer: a dilated convolution of width 2 to filter and gate, the gated unit, the
    1x1 residual and skip outputs (eq. 2, Fig. 4), and the global condition's projection (eq. 3).
    The last layer has no residual output (only its skip reaches the output)."""

    def __init__(self, residual: int, gate: int, skip: int, dilation: int, condition_dim: int,
                 last: bool = False) -> None:
        super().__init__()
        self.dilation = dilation
        self.dilated = nn.Conv1d(residual, 2 * gate, kernel_size=2, dilation=dilation)  # [W_f; W_g]
        self.condition = nn.Linear(condition_dim, 2 * gate, bias=False) if condition_dim else None  # [V_f; V_g]
        self.residual = None if last else nn.Conv1d(gate, residual, 1)
        self.skip = nn.Conv1d(gate, skip, 1)

    def gated(self, pre: Tensor, c: Tensor | None) -> Tensor:
        """tanh(filter) * sigmoid(gate) of the pre-activations ``(B, 2G, ...)`` with the condition added."""
        if c is not None:
            pre = pre + self.condition(c).view(*c.shape[:1], -1, *[1] * (pre.ndim - 2))
        f, g = pre.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """``h (B, C, L)`` -> the next layer's input ``(B, C, L - d)`` and this layer's skip output ``(B, S, L - d)``."""
        z = self.gated(self.dilated(h), c)
        h = h[:, :, self.dilation:]
        return (h if self.residual is None else h + self.residual(z)), self.skip(z)

    def columns(self, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The layer as matrices for one time step at a time (the queues of generation): ``[past,
        now] (B, 2C) @ w_in + b_in`` are the pre-activations (``b_in`` with the condition added,
        ``(B or 1, 2G)``), ``z @ w_out + b_out`` the residual and skip outputs ``(B, C + S)`` (the
        last layer's residual part is zero)."""
        w = self.dilated.weight  # (2G, C, 2): tap 0 reads t - d, tap 1 reads t
        w_in = torch.cat([w[:, :, 0], w[:, :, 1]], 1).t()  # (2C, 2G)
        b_in = self.dilated.bias[None] if c is None else self.dilated.bias + self.condition(c)
        skip_w, skip_b = self.skip.weight[:, :, 0], self.skip.bias
        if self.residual is None:
            res_w = skip_w.new_zeros(w.shape[1], skip_w.shape[1])
            res_b = skip_b.new_zeros(w.shape[1])
        else:
            res_w, res_b = self.residual.weight[:, :, 0], self.residual.bias
        return w_in, b_in, torch.cat([res_w, skip_w]).t(), torch.cat([res_b, skip_b])


@dataclass
class Queues:
    """The state of incremental generation: the last input code's embedding, each layer's ring
    buffer of its last ``d`` inputs ``(B, d, C)`` (slot ``t mod d`` holds time ``t``), the next time
    step ``t``, and each layer as matrices for one step (:meth:`GatedLayer.columns`, the condition
    included)."""

    previous: Tensor  # (B, C): the embedding of the last code (the causal convolution's left tap)
    buffers: list[Tensor]
    t: int
    columns: list[tuple[Tensor, Tensor, Tensor, Tensor]]


class WaveNet(nn.Module):
    """Logits over the next code from the codes before it.

    Args:
        levels: codes of a sample (256 for mu-law 8-bit audio); the input also takes code ``levels``, the
            start symbol that pads the history before a clip.
        residual: channels of the residual stream.
        gate: channels of each gated unit (filter and gate each).
        skip: channels of the skip connections and of the output's hidden 1x1 layer.
        dilations: the dilation of each layer, e.g. ``(1, 2, ..., 512) * 3`` (section 2.1).
        condition_dim: size of a global condition vector ``c`` given to every layer (0: none).

    Example::

        >>> net = WaveNet(256, 16, 16, 32, (1, 2, 4, 8))
        >>> net.receptive_field
        17
        >>> net(torch.randint(256, (2, 100))).shape      # (B, levels, L - R + 1)
        torch.Size([2, 256, 84])
    """

    def __init__(self, levels: int, residual: int, gate: int, skip: int, dilations: tuple[int, ...],
                 condition_dim: int = 0) -> None:
        super().__init__()
        self.levels = levels
        self.embedding = nn.Embedding(levels + 1, residual)  # the one-hot input times a matrix; code `levels`: before the clip
        self.causal = nn.Conv1d(residual, residual, kernel_size=2)  # the causal convolution of Fig. 4
        self.layers = nn.ModuleList(GatedLayer(residual, gate, skip, d, condition_dim, last=i == len(dilations) - 1)
                                    for i, d in enumerate(dilations))
        self.hidden = nn.Conv1d(skip, skip, 1)
        self.out = nn.Conv1d(skip, levels, 1)

    @property
    def receptive_field(self) -> int:
        """``R``: how many of the latest codes an output sees (2 through the causal convolution, one
        more per unit of dilation: ``R = 2 + sum(dilations)``)."""
        return 2 + sum(layer.dilation for layer in self.layers)

    def head(self, skips: Tensor) -> Tensor:
        """The output block: ReLU, 1x1, ReLU, 1x1 to the logits (channels in dimension 1)."""
        return self.out(F.relu(self.hidden(F.relu(skips))))

    def forward(self, codes: Tensor, c: Tensor | None = None) -> Tensor:
        """Logits ``(B, levels, L - R + 1)`` for codes ``(B, L)``: output ``j`` predicts the code
        after input ``j + R - 1`` from inputs ``j .. j + R - 1``. ``c (B, condition_dim)``."""
        return self.head(self._run(codes, c)[0])

    def _run(self, codes: Tensor, c: Tensor | None, keep: bool = False) -> tuple[Tensor, list[Tensor], Tensor]:
        """The summed skips ``(B, S, L - R + 1)``; with ``keep``, each layer's last ``d`` inputs
        ``(B, d, C)`` and the last embedding ``(B, C)`` as well (the queues of generation)."""
        n_out = codes.shape[1] - self.receptive_field + 1
        if n_out < 1:
            raise ValueError(f"{codes.shape[1]} codes are fewer than the receptive field {self.receptive_field}")
        e = self.embedding(codes).transpose(1, 2)  # (B, C, L)
        h = self.causal(e)  # (B, C, L - 1)
        skips, kept = 0, []
        for layer in self.layers:
            if keep:
                kept.append(h[:, :, -layer.dilation:].transpose(1, 2).contiguous())
            h, s = layer(h, c)
            skips = s[:, :, -n_out:] + skips  # every layer's skips, aligned on the last n_out steps
        return skips, kept, e[:, :, -1]

    def start(self, history: Tensor, c: Tensor | None = None) -> tuple[Tensor, Queues]:
        """The logits ``(B, levels)`` of the code after ``history`` ``(B, R)`` (at least the receptive
        field), and the queues to continue from it one code at a time."""
        skips, buffers, last = self._run(history[:, -self.receptive_field:], c, keep=True)
        columns = [layer.columns(c) for layer in self.layers]
        return self.head(skips[:, :, -1:])[:, :, 0], Queues(last, buffers, 0, columns)

    def step(self, code: Tensor, state: Queues) -> Tensor:
        """Append ``code (B,)`` to the history of ``state`` (updated in place): the logits ``(B, levels)``
        of the code after it, in one column of work per layer (a few small matrix products)."""
        e = self.embedding(code)  # (B, C)
        w = self.causal.weight
        h = F.linear(state.previous, w[:, :, 0]) + F.linear(e, w[:, :, 1], self.causal.bias)
        state.previous = e
        C = h.shape[1]
        skips = 0
        for layer, buffer, (w_in, b_in, w_out, b_out) in zip(self.layers, state.buffers, state.columns):
            slot = state.t % layer.dilation
            both = torch.cat([buffer[:, slot], h], 1)  # (B, 2C): this layer's input d steps ago, and now
            buffer[:, slot] = h
            f, g = torch.addmm(b_in, both, w_in).chunk(2, 1)
            out = torch.addmm(b_out, torch.tanh(f) * torch.sigmoid(g), w_out)  # (B, C + S)
            h = h + out[:, :C]
            skips = out[:, C:] + skips
        state.t += 1
        return self.head(skips[:, :, None])[:, :, 0]
