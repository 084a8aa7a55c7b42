"""The leaderboard: one table of every run's metrics, whatever the families (``dgm compare``).

Columns are ``metric [unit]``; a cell is the run's value, or "–" where the run does not have that
metric (a GAN has no likelihood, a VAE no mode coverage on images). Bounds are marked "≤" (an NLL
bound is an upper bound on the true NLL), and the qualifiers behind each column are listed under the
table, so numbers computed differently are never silently compared.
"""
from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from dgm.errors import DgmError

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
        results_file = run / "eval.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else []
        rows.append(RunRow(str(run), config.get("model", "?"), config.get("data", {}).get("name", "?"), results))
    return rows


def column(result: dict) -> str:
    return f"{result['metric']} [{result['unit']}]" if result["unit"] else result["metric"]


def table(rows: list[RunRow]) -> tuple[list[str], list[list[str]], dict[str, set[str]]]:
    """Header, body and the qualifiers seen in each metric column."""
    columns: list[str] = []
    qualifiers: dict[str, set[str]] = {}
    for row in rows:
        for r in row.results:
            name = column(r)
            if name not in columns:
                columns.append(name)
            qualifiers.setdefault(name, set()).add(r["qualifier"])
    body = []
    for row in rows:
        values = {column(r): r for r in row.results}
        cells = []
        for name in columns:
            r = values.get(name)
            if r is None:
                cells.append(MISSING)
            else:
                mark = "≤ " if r["qualifier"].startswith("bound") else ""
                cells.append(f"{mark}{r['value']:.4g}")
        body.append([row.run, row.model, row.data, *cells])
    return ["run", "model", "data", *columns], body, qualifiers


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
    header, body, _ = table(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([[c.replace("≤ ", "") for c in cells] for cells in body])
    return buffer.getvalue()


def plot(rows: list[RunRow], path: Path) -> Path:
    """One bar chart per metric column, runs side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, body, _ = table(rows)
    metrics = header[3:]
    if not metrics:
        raise DgmError("no run has metrics to plot: run 'dgm eval RUN' first")
    cols = min(3, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3 * nrows), dpi=90, squeeze=False)
    labels = [Path(cells[0]).name for cells in body]
    for ax, (i, name) in zip(axes.flat, enumerate(metrics)):
        values = [float(cells[3 + i].replace("≤ ", "")) if cells[3 + i] != MISSING else float("nan") for cells in body]
        ax.bar(range(len(values)), values, color=[f"C{j % 10}" for j in range(len(values))])
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
