"""Exponential moving average of a model's weights (Polyak averaging)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """Keeps ``shadow <- d * shadow + (1 - d) * param`` for every floating tensor of a model.

    The decay warms up, ``d = min(decay, (1 + step) / (10 + step))`` at optimiser step ``step`` (as
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``): without it the average of a short
    run is dominated by the random initial weights (0.999^1000 = 37% of them after 1000 steps).
    Buffers are averaged too (and integer buffers copied), so the EMA weights form a complete
    ``state_dict`` that can be saved and loaded like the model's own.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in the weights after optimiser step ``step`` (0-based, the trainer's round count)."""
        weight = 1.0 - self.decay_at(step)
        state = model.state_dict()
        floats = [key for key, value in state.items() if value.is_floating_point()]
        # one fused call over all the tensors (a handful of kernels on a GPU, not one per tensor)
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k] for k in floats], weight)
        for key, value in state.items():
            if not value.is_floating_point():
                self.shadow[key].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block, ``model`` carries the EMA weights; its own are restored after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)
