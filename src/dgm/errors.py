"""User-facing errors: one clear line that says what to do.

Anything raised as a :class:`DgmError` is printed by the CLI as a single line (no traceback) and
exits with a non-zero code. Library users catch it like any exception.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class DgmError(Exception):
    """An error caused by the user's input (names, files, flags, shapes), with a fix in its message."""

    exit_code = 2  # the status the CLI exits with
    # raised alike in every process of a data-parallel run (the same check on the same settings): the
    # CLI prints it once, from rank 0; other errors are printed by the process they happen in
    every_process = False


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> DgmError:
    """An error for an unknown ``name`` of ``kind`` that suggests the nearest valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return DgmError(f"unknown {kind} {name!r}: {hint}choose from {', '.join(choices)}")
