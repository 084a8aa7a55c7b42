"""Annealed Langevin dynamics: a stateless loop over a score function ``(x, level) -> grad log p_sigma(x)``.

Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data Distribution",
arXiv:1907.05600, Algorithm 1: for the noise levels sigma_1 > ... > sigma_L in turn, ``steps``
updates of::

    alpha_l = eps sigma_l^2 / sigma_L^2
    x <- x + alpha_l / 2 grad_x log p_sigma_l(x) + sqrt(alpha_l) z,   z ~ N(0, I)

The step shrinks with the noise so that the signal-to-noise ratio of each update is the same at
every level. Used by the autoregressive models' parallel sampler (Jayaram & Thickstun 2021,
:mod:`dgm.models.pixel`), where the score comes from autograd through the smoothed likelihood.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dgm.models.base import randn

Score = Callable[[Tensor, int], Tensor]  # (x, level l in 1..L) -> grad_x log p_sigma_l(x), x's shape


def annealed(score: Score, x: Tensor, sigmas: Sequence[float], *, steps: int, step_size: float,
             generator: torch.Generator | None = None, impose: Callable[[Tensor, float], Tensor] | None = None,
             progress: bool = False) -> Tensor:
    """Run annealed Langevin dynamics from ``x`` over the decreasing ``sigmas``.

    Args:
        score: the gradient of the log-density at level ``l`` (1-based, as the model numbers them).
        steps: updates per level; ``step_size``: eps of Algorithm 1.
        impose: ``(x, sigma) -> x`` applied after every update, e.g. to keep known pixels (plus noise
            of the current level) in place for completion.
        generator: the source of every noise draw.
    """
    levels = list(enumerate(sigmas, start=1))
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="langevin sampling", unit="level", leave=False)
    for level, sigma in levels:
        alpha = step_size * (sigma / sigmas[-1]) ** 2
        for _ in range(steps):
            x = x + 0.5 * alpha * score(x, level) + alpha ** 0.5 * randn(x.shape, like=x, generator=generator)
            if impose is not None:
                x = impose(x, sigma)
    return x
