"""The markdown table the benchmark scripts print: a row per result, a column per number."""
from __future__ import annotations

from collections.abc import Iterable


def markdown_table(rows: list[dict], *, skip: Iterable[str] = (), skip_suffix: str = " qualifier") -> str:
    """Rows of ``{"row": name, key: value, ...}`` as a markdown table: one column per key of any row
    (sorted) except ``row``, the keys in ``skip`` and those ending in ``skip_suffix``; floats to 4
    significant digits, "–" where a row lacks a key."""
    skipped = {"row", *skip}
    keys = sorted({k for r in rows for k in r if k not in skipped and not k.endswith(skip_suffix)})
    lines = ["| row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "–")) for k in keys]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
