"""One-line refusals of data a family cannot use, shared by the families that need them.

A model that reads fixed-size examples (every position real) refuses padded token sequences and
point sets, whose padding it would model as data; a model that indexes every example's label
refuses partly labelled data, whose hidden labels are ``-1`` (:data:`dgm.data.core.UNLABELLED`).
"""
from __future__ import annotations

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError


def refuse_variable_length(model: str, spec: DataSpec, reason: str) -> None:
    """Raise when ``spec`` holds padded ``tokens`` or ``points``, which ``model`` cannot use (``reason``)."""
    if spec.is_variable_length:
        raise DgmError(f"model {model!r} cannot train on {spec.kind} ({spec.name!r}): {reason}; "
                       f"use a model made for {spec.kind}")


def refuse_partial_labels(model: str, batch: Batch, what: str) -> None:
    """Raise when ``batch`` carries only some labels (``data.labelled``) and ``model`` (``what``:
    why it needs them) reads every example's label. Reads no tensor: no host synchronisation."""
    if batch.labelled is not None:
        raise DgmError(f"model {model!r} {what} needs the label of every training example, but the data is "
                       f"partly labelled (data.labelled): train on fully labelled data (drop data.labelled), "
                       f"or use a semi-supervised model")
