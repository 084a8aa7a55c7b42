"""Mode coverage on 2-D Gaussian mixtures: the VEEGAN / PacGAN protocol.

The two standard mixtures (Srivastava et al. 2017, VEEGAN, arXiv:1705.07761, sec. 5.1; Lin et al.
2018, PacGAN, arXiv:1712.04086, sec. 4.1), as a dataset's ``spec.extras`` gives them
(``{"modes": [[x, y], ...], "mode_std": sd}``):

* ring8: 8 modes at ``(cos 2 pi k / 8, sin 2 pi k / 8)``, standard deviation 0.01;
* grid25: 25 modes at ``{-4, -2, 0, 2, 4}^2``, standard deviation 0.05.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from dgm.errors import DgmError
from dgm.eval.fidelity import ArrayLike, as_features
from dgm.eval.core import register_monitor

#: a sample is high quality when it lies within this many standard deviations of its nearest mode
HIGH_QUALITY_STDS = 3.0


def mode_coverage(samples: ArrayLike, modes: ArrayLike, std: float) -> dict[str, Any]:
    """How many modes of an isotropic Gaussian mixture the samples cover, and how evenly.

    Each sample is assigned to its nearest mode (Euclidean); it is *high quality* when that distance
    is below ``3 * std`` (PacGAN's ``min_dis < dis_thre`` with ``dis_thre = 3`` in units of std).

    Returns a dict with:
        ``modes_captured``: the number of modes that are the nearest mode of at least one
            high-quality sample (int);
        ``high_quality``: the fraction of samples that are high quality;
        ``reverse_kl``: ``KL(q || uniform over the M modes) = sum_m q_m log(M q_m)`` (``0 log 0 = 0``),
            where ``q`` is the histogram of nearest-mode assignments of the **high-quality samples
            only**; 0 for perfectly balanced coverage, ``log M`` for a single mode; NaN when there is
            no high-quality sample (``q`` is undefined; ``modes_captured`` = 0 says it all);
        ``counts``: the number of high-quality samples per mode (the histogram ``q`` is made of).

    Choice of ``q``: the PacGAN reference code (github.com/fjxmlzn/PacGAN,
    ``synthetic_data_experiments/PacGAN/pacgan/extensions.py``, ``MetricLogger``) builds its
    per-mode histogram ``detail_of_coverage`` by incrementing a mode's count only when the sample's
    distance to it is below the threshold, then normalises by the total of that histogram (not by
    the number of samples) for its entropy and JSD; so off-mode samples do not enter ``q``, and
    quality is reported separately by ``high_quality``.

    Raises:
        DgmError: on non-positive ``std``, no modes, or samples and modes of different dimension.
    """
    x = as_features(samples, "samples")
    mu = as_features(modes, "modes")
    if not std > 0:
        raise DgmError(f"mode_std must be positive, got {std}")
    if len(mu) == 0:
        raise DgmError("no modes given: pass the mixture's means, e.g. spec.extras['modes']")
    if x.shape[1] != mu.shape[1]:
        raise DgmError(f"samples are {x.shape[1]}-d but modes are {mu.shape[1]}-d: evaluate samples of the "
                       "mixture the modes describe")
    if len(x) == 0:
        raise DgmError("no samples given: mode coverage needs samples from the model")
    m = len(mu)
    dist = torch.cdist(x, mu)  # (N, M); M is tiny, so the exact (non-matmul) distances are cheap
    nearest_dist, nearest = dist.min(1)
    good = nearest_dist < HIGH_QUALITY_STDS * std
    counts = torch.bincount(nearest[good], minlength=m)
    total = int(counts.sum())
    if total:
        q = counts.double() / total
        reverse_kl = float(torch.special.xlogy(q, q * m).sum().clamp_min(0.0))
    else:
        reverse_kl = math.nan
    return {
        "modes_captured": int((counts > 0).sum()),
        "high_quality": float(good.double().mean()),
        "reverse_kl": reverse_kl,
        "counts": counts.tolist(),
    }


@register_monitor("mode_coverage")
class ModeCoverageMonitor:
    """Trainer callback: mode coverage of 2500 samples (the protocol's number) every ``every``
    epochs, logged as ``modes/captured``, ``modes/high_quality`` (%) and ``modes/reverse_kl``."""

    def __init__(self, *, every: int = 1, num_samples: int = 2500, seed: int = 0) -> None:
        self.every, self.num_samples, self.seed = every, num_samples, seed

    @property
    def logs(self) -> dict[str, str]:
        """What the monitor logs, for the report's caption."""
        return {"modes/captured": f"modes captured by {self.num_samples} samples",
                "modes/high_quality": f"% of samples within {HIGH_QUALITY_STDS:g} standard deviations of a mode",
                "modes/reverse_kl": "KL(sample mode histogram || uniform), 0 for even coverage"}

    def on_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        if (epoch + 1) % self.every:
            return None
        extras = trainer.data.spec.extras
        x = trainer.evaluation_samples(self.num_samples, seed=self.seed)
        out = mode_coverage(x.float(), torch.tensor(extras["modes"]), extras["mode_std"])
        return {"modes/captured": out["modes_captured"], "modes/high_quality": 100 * out["high_quality"],
                "modes/reverse_kl": out["reverse_kl"]}
