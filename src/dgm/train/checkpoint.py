"""Checkpoints: safetensors for tensors, JSON for everything else. Nothing is ever unpickled.

A run directory holds

* ``config.json`` — what to build (model name and config, data, trainer settings, the data spec);
* ``weights.safetensors`` — the model's ``state_dict``; ``ema.safetensors`` — EMA weights if kept;
* ``trainer.safetensors`` + ``trainer.json`` — the optimiser states of the stage being trained, RNG
  states and the position in the run (epoch, batch, stage), so an interrupted run resumes on the
  same loss curve, in the same stage.

Files are written to a temporary name and renamed, so a crash mid-write never replaces the last good
checkpoint with a broken one; the files of one checkpoint are replaced together
(:func:`save_checkpoint`), so a crash between two of them never pairs new weights with an old
position.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from dgm.errors import DgmError

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
EMA_WEIGHTS = "ema.safetensors"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_STATE = "trainer.json"
PENDING = "checkpoint.pending"  # present only while the files of a checkpoint are being swapped in


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies
    plain = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp)))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    if not path.exists():
        raise DgmError(f"{path} is missing: the run has no saved weights yet (was it trained?)")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise DgmError(f"cannot read {path}: the file is corrupt or not a safetensors file ({e})") from None


def save_checkpoint(run_dir: Path, tensor_files: dict[str, dict[str, Tensor]], state: Any) -> None:
    """Replace the checkpoint in ``run_dir`` (the safetensors files ``tensor_files`` and the JSON
    ``state`` in ``trainer.json``) as one: every file is first written in full under a temporary
    name, then :data:`PENDING` lists them, then they are renamed into place and the list removed. A
    crash before the list leaves the old checkpoint untouched; a crash after it is finished by
    :func:`complete_pending` on the next resume."""
    names = [*tensor_files, TRAINER_STATE]
    for name, tensors in tensor_files.items():
        plain = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
        save_file(plain, str(_staged(run_dir / name)))
    _staged(run_dir / TRAINER_STATE).write_text(json.dumps(state, indent=2, default=str))
    atomic_write(run_dir / PENDING, lambda tmp: tmp.write_text(json.dumps(names)))
    complete_pending(run_dir)


def complete_pending(run_dir: Path) -> None:
    """Finish swapping in a checkpoint that :func:`save_checkpoint` had fully written when the
    process stopped (a no-op when none is pending)."""
    pending = run_dir / PENDING
    if not pending.exists():
        return
    for name in json.loads(pending.read_text()):
        staged = _staged(run_dir / name)
        if staged.exists():  # not yet renamed when the process stopped
            os.replace(staged, run_dir / name)
    pending.unlink()


def _staged(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def save_json(obj: Any, path: Path) -> None:
    text = json.dumps(obj, indent=2, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_json(path: Path) -> Any:
    if not path.exists():
        raise DgmError(f"{path.parent} is not a dgm run directory (no {path.name}): "
                       f"pass the folder that 'dgm train' wrote")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DgmError(f"cannot read {path}: not valid JSON ({e}); the run directory is damaged") from None


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """``load_state_dict`` with one clear error when the weights belong to another model."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            parts.append(f"shape of {wrong[:3]}")
        raise DgmError(f"the weights in {source} do not fit the model its config.json describes "
                       f"({'; '.join(parts)}): the checkpoint is foreign or the config was edited")
    module.load_state_dict(state)


# --- optimiser state <-> (tensors, json) -----------------------------------------------------------
def flatten_optimizer(name: str, state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and JSON-able scalars."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{name}/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(name: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[field] = value
    for key, value in meta["scalars"].items():
        index, field = key.split("/", 1)
        state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}
