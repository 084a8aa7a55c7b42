"""One-line refusals of data a family cannot use, shared by the families that need them.

A model that reads fixed-size examples (every position real) refuses padded token sequences and
point sets, whose padding it would model as data; a model that indexes every example's label
refuses partly labelled data, whose hidden labels are ``-1`` (:data:`dgm.data.core.UNLABELLED`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError


def refuse_variable_length(model: str, spec: DataSpec, reason: str) -> None:
    """Raise when ``spec`` holds padded ``tokens`` or ``points``, which ``model`` cannot use (``reason``)."""
    if spec.is_variable_length:
        raise DgmError(f"model {model!r} cannot train on {spec.kind} ({spec.name!r}): {reason}; "
                       f"use a model made for {spec.kind}")


def refuse_all_but_images(model: str, spec: DataSpec, reason: str, does: str,
                          advice: str = "image data such as fashion-mnist") -> None:
    """Raise unless ``spec`` holds fixed-size images: padded data for ``reason`` (as
    :func:`refuse_variable_length`), anything else because ``model`` ``does`` something only images allow."""
    refuse_variable_length(model, spec, reason)
    if not spec.is_image:
        raise DgmError(f"model {model!r} {does}, but {spec.name!r} holds {spec.kind}s of shape {spec.shape}: "
                       f"use {advice}")


def refuse_all_but_points(model: str, spec: DataSpec) -> None:
    """Raise unless ``spec`` holds point sets of at least two coordinates, which ``model`` needs."""
    if spec.kind != "points":
        raise DgmError(f"model {model!r} models sets of points, but {spec.name!r} holds {spec.kind} data: "
                       f"use point-set data such as --data shapes2d")
    if spec.shape[-1] < 2:
        raise DgmError(f"model {model!r} needs points of at least 2 coordinates (a coupling maps one from the "
                       f"others), but {spec.name!r} has {spec.shape[-1]}: use points in 2-D or more")


def refuse_unlabelled(model: str, spec: DataSpec) -> None:
    """Raise when ``spec`` has no class labels, which ``model`` learns from."""
    if not spec.num_classes:
        raise DgmError(f"model {model!r} learns from class labels, and {spec.name!r} has none: use a labelled "
                       f"dataset such as fashion-mnist or digits")


def refuse_partial_labels(model: str, batch: Batch, what: str) -> None:
    """Raise when ``batch`` carries only some labels (``data.labelled``) and ``model`` (``what``:
    why it needs them) reads every example's label. Reads no tensor: no host synchronisation."""
    if batch.labelled is not None:
        raise DgmError(f"model {model!r} {what} needs the label of every training example, but the data is "
                       f"partly labelled (data.labelled): train on fully labelled data (drop data.labelled), "
                       f"or use a semi-supervised model")


def class_labels(model: str, condition: Tensor | int | None, n: int, num_classes: int | None,
                 device: torch.device) -> Tensor | None:
    """The ``(n,)`` int64 class labels of ``n`` samples from ``condition`` (one label for all, or
    ``n`` labels), checked against the ``num_classes`` the model was trained with (``None``:
    unconditional, where a condition is refused); ``None`` when no condition is given."""
    if condition is None:
        return None
    if not num_classes:
        raise DgmError(f"model {model!r} is unconditional: drop the condition (--class), or train a "
                       f"class-conditional one with --set model.conditional=true")
    labels = torch.as_tensor(condition, device=device).long().reshape(-1)
    if len(labels) == 1:
        labels = labels.expand(n)
    if len(labels) != n:
        raise DgmError(f"give one class label or {n} of them, got {len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = sorted({v for v in labels.tolist() if not 0 <= v < num_classes})
        raise DgmError(f"this model was trained with classes 0..{num_classes - 1}, and class {bad[0]} is not one "
                       f"of them: use --class in 0..{num_classes - 1}")
    return labels


def refuse_all_but_discrete_images(model: str, spec: DataSpec, what: str, reason: str) -> None:
    """Raise unless ``spec`` holds images of discrete levels, which ``model`` (``what`` it does with
    them) needs; padded sequences and sets are refused with ``reason``."""
    refuse_variable_length(model, spec, reason)
    if spec.levels is None or not spec.is_image:
        raise DgmError(f"model {model!r} {what}, but {spec.name!r} is "
                       f"{'continuous' if spec.levels is None else f'not images (shape {spec.shape})'}: "
                       f"use image data such as --data digits or fashion-mnist")
