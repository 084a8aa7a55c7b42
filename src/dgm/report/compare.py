"""The leaderboard: one table of every run's metrics, whatever the families (``dgm compare``).

Columns are ``metric [unit]``; a cell is the run's value, or "–" where the run does not have that
metric (a GAN has no likelihood, a VAE no mode coverage on images; an empty cell in the CSV). Bounds
are marked "≤" (an NLL bound is an upper bound on the true NLL), and the qualifiers behind each
column are listed under the table (and in the titles of the plot), so numbers computed differently
are never silently compared.
"""
from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from dgm.errors import DgmError
from dgm.eval.core import read_results

MISSING = "–"


@dataclass
class RunRow:
    run: str
    model: str
    data: str
    results: list[dict] = field(default_factory=list)  # eval.json entries


def expand(patterns: list[str]) -> list[Path]:
    """Run directories from paths or glob patterns (quoted globs work on every shell)."""
    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [Path(pattern)]
        runs += [m for m in matches if (m / "config.json").exists()]
        if not matches or not any((m / "config.json").exists() for m in matches):
            raise DgmError(f"{pattern} names no dgm run directory (a folder with config.json written by 'dgm train')")
    return runs


def collect(run_dirs: list[Path]) -> list[RunRow]:
    rows = []
    for run in run_dirs:
        config = json.loads((run / "config.json").read_text())
        rows.append(RunRow(str(run), config.get("model", "?"), config.get("data", {}).get("name", "?"),
                           read_results(run)))
    return rows


def column(result: dict) -> str:
    return f"{result['metric']} [{result['unit']}]" if result["unit"] else result["metric"]


def present(value: float | None) -> bool:
    return value is not None and value == value  # NaN (an undefined metric) counts as missing


def columns(rows: list[RunRow]) -> tuple[list[str], dict[str, set[str]]]:
    """The metric columns in the order first seen, and the qualifiers seen in each."""
    names: list[str] = []
    qualifiers: dict[str, set[str]] = {}
    for row in rows:
        for r in row.results:
            name = column(r)
            if name not in names:
                names.append(name)
            qualifiers.setdefault(name, set()).add(r["qualifier"])
    return names, qualifiers


def cell(row: RunRow, name: str) -> dict | None:
    """The run's result of column ``name``, or None."""
    return next((r for r in row.results if column(r) == name and present(r.get("value"))), None)


def is_bound(result: dict) -> bool:
    return result["qualifier"].startswith("bound")


def table(rows: list[RunRow]) -> tuple[list[str], list[list[str]], dict[str, set[str]]]:
    """Header, body (values as text, bounds marked "≤ ", missing values "–") and the qualifiers seen
    in each metric column."""
    names, qualifiers = columns(rows)
    body = []
    for row in rows:
        cells = []
        for name in names:
            r = cell(row, name)
            cells.append(MISSING if r is None else f"{'≤ ' if is_bound(r) else ''}{r['value']:.4g}")
        body.append([row.run, row.model, row.data, *cells])
    return ["run", "model", "data", *names], body, qualifiers


def markdown(rows: list[RunRow]) -> str:
    header, body, qualifiers = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    notes = [f"- {name}: {'; '.join(sorted(q))}" for name, q in qualifiers.items()]
    unevaluated = [row.run for row in rows if not row.results]
    if unevaluated:
        notes.append(f"- not evaluated yet (run 'dgm eval RUN'): {', '.join(unevaluated)}")
    return "\n".join(lines + ([""] + notes if notes else []))


def to_csv(rows: list[RunRow]) -> str:
    """The table as CSV: full-precision numbers, an empty cell where a run lacks the metric."""
    names, _ = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "model", "data", *names])
    for row in rows:
        values = [cell(row, name) for name in names]
        writer.writerow([row.run, row.model, row.data, *("" if r is None else repr(float(r["value"])) for r in values)])
    return buffer.getvalue()


def examples(result: dict) -> str:
    """``"n=360"`` from a result's split (``"test, n=360"``), or ``""``."""
    return next((part.strip() for part in result.get("split", "").split(",") if part.strip().startswith("n=")), "")


def plot(rows: list[RunRow], path: Path) -> Path:
    """One bar chart per metric column, runs side by side in the colours of the legend; every bar
    is labelled with its value (so a 0 is seen), its run's number of evaluated examples under it,
    the column's qualifiers (the bound of an NLL) in its title; a run without the metric gets "–"."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names, qualifiers = columns(rows)
    if not names:
        raise DgmError("no run has metrics to plot: run 'dgm eval RUN' first")
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.4 * nrows + 0.6), dpi=90, squeeze=False)
    labels = [Path(row.run).name for row in rows]
    colours = [f"C{j % 10}" for j in range(len(rows))]
    for ax, name in zip(axes.flat, names):
        results = [cell(row, name) for row in rows]
        heights = [0.0 if r is None else float(r["value"]) for r in results]
        edges = ["none" if r is None else c for r, c in zip(results, colours)]  # a 0 still shows a line
        bars = ax.bar(range(len(rows)), heights, color=colours, edgecolor=edges, linewidth=1.5)
        texts = [MISSING if r is None else f"{'≤ ' if is_bound(r) else ''}{r['value']:.4g}" for r in results]
        ax.bar_label(bars, texts, fontsize=7, padding=2)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.margins(y=0.2)
        ax.set_xticks(range(len(rows)), [examples(r) if r is not None else "" for r in results], fontsize=7)
        ax.set_title(name + "\n" + textwrap.shorten("; ".join(sorted(qualifiers[name])), 70), fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(handles=[Patch(color=c, label=label) for c, label in zip(colours, labels)], loc="lower center",
               ncol=min(len(rows), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (3.4 * nrows + 0.6) + 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
