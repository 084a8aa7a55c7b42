"""Partial labels: which examples of a split keep their label (semi-supervised learning).

The labelled subset is class-balanced and drawn with a fixed seed, so every run with the same
settings sees the same labels: ``n // K`` examples of each of the ``K`` classes, and one more for
each of the first ``n mod K`` classes (in class order). Within a class the examples are the first
of a permutation drawn from ``torch.Generator().manual_seed(seed)``, one permutation per class, in
class order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dgm.errors import DgmError


def per_class(n: int, num_classes: int) -> list[int]:
    """How many labelled examples each class gets: ``n // K``, plus one for the first ``n mod K``."""
    return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]


def balanced_labelled(labels: Tensor | None, known: Tensor | None, n: int, seed: int, *,
                      num_classes: int | None = None, class_names: list[str] | None = None,
                      name: str = "data") -> Tensor:
    """The ``(N,)`` bool mask of the ``n`` examples that keep their label (module docstring).

    Args:
        labels: ``(N,)`` int64 labels.
        known: ``(N,)`` bool, the labels known already (``None``: all); only those can be kept.
        n: how many labels to keep.
        seed: the seed of the draw.
        num_classes: ``K``; by default one more than the largest label.
        class_names: names of the classes, for error messages.
        name: the dataset's name, for error messages.

    Raises:
        DgmError: no labels, ``n`` above the number of known labels, or a class with too few.
    """
    if labels is None:
        raise DgmError(f"dataset {name!r} has no labels to keep: drop --labels (data.labelled), or use a "
                       f"labelled dataset")
    if n < 1:
        raise DgmError(f"data.labelled must be at least 1, got {n}")
    cpu_labels = labels.cpu()
    cpu_known = torch.ones_like(cpu_labels, dtype=torch.bool) if known is None else known.cpu()
    available = int(cpu_known.sum())
    if n > available:
        raise DgmError(f"--labels {n} (data.labelled) is more than the {available} labelled "
                       f"examples of {name!r}: pass at most {available}")
    k = num_classes if num_classes is not None else int(cpu_labels[cpu_known].max()) + 1
    if n < k:  # a class without one labelled example could never be told from the others by its label
        raise DgmError(f"--labels {n} (data.labelled) leaves {k - n} of the {k} classes of {name!r} without a "
                       f"labelled example: pass at least {k}, one per class")
    g = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.zeros_like(cpu_known)
    for c, need in enumerate(per_class(n, k)):
        candidates = torch.nonzero(cpu_known & (cpu_labels == c)).flatten()
        if len(candidates) < need:
            label = f"{c} ({class_names[c]!r})" if class_names and c < len(class_names) else str(c)
            raise DgmError(f"data.labelled={n} needs {need} labelled examples of class {label} in {name!r}, "
                           f"which has {len(candidates)}: pass a smaller data.labelled")
        keep[candidates[torch.randperm(len(candidates), generator=g)[:need]]] = True
    return keep.to(labels.device)
