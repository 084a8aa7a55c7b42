"""The leaderboard: one table of every run's metrics, whatever the families (``dgm compare``).

Columns are ``metric [unit]``; a cell is the run's value, or "–" where the run does not have that
metric (a GAN has no likelihood, a VAE no mode coverage on images; an empty cell in the CSV). Bounds
are marked "≤" (an NLL bound is an upper bound on the true NLL), and the qualifiers behind each
column are listed under the table (and in the titles of the plot), so numbers computed differently
are never silently compared.

``dgm compare --html PAGE`` also writes one self-contained page: the table, the training curves of
the runs overlaid (one plot per quantity their ``metrics.csv`` share), each run's sample grid, and
the charts of the instruments its report drew (the probe's feature distribution, the rate-distortion
chart against PNG, WebP and JPEG), read from the report's figures so nothing is drawn again.
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


# --- the comparison page (``dgm compare --html``) --------------------------------------------------
#: the most metrics whose training curves the page overlays
MAX_CURVES = 12


def shared_curves(logs: list[list[dict[str, float]]]) -> list[str]:
    """The quantities logged in the ``metrics.csv`` of at least two runs (of the one run, when there
    is one), the loss first: the step and epoch counters and learning rates (settings) left out."""
    counts: dict[str, int] = {}
    for rows in logs:
        for name in {k for r in rows for k in r}:
            if name not in ("step", "epoch") and name.split("/")[-1] != "lr":
                counts[name] = counts.get(name, 0) + 1
    needed = min(2, len(logs))
    return sorted((n for n, c in counts.items() if c >= needed), key=lambda n: (n != "loss", n))[:MAX_CURVES]


def overlaid(logs: list[list[dict[str, float]]], labels: list[str], name: str):  # noqa: ANN201 (a PIL image)
    """One plot of ``name`` against the optimiser step, a line per run that logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgm.io.images import figure_to_image

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    for j, (rows, label) in enumerate(zip(logs, labels)):
        points = [(r["step"], r[name]) for r in rows if name in r and "step" in r]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2, color=f"C{j % 10}", label=label,
                    marker="." if len(points) < 20 else None)  # a short run's few points (or one) still show
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_to_image(fig)


def is_instrument_chart(title: str) -> bool:
    """A chart the probe or compress app drew in a report (not the probe's grid of sorted samples)."""
    return title.startswith("Rate-distortion against") or (title.startswith("Probe: ")
                                                              and title.endswith("in samples and in training"))


def report_figures(run: Path, wanted) -> list[dict]:  # noqa: ANN001 (title -> bool)
    """The entries of the run's cached report figures (``RUN/figures/figures.json``) whose title is
    ``wanted`` and that have a picture file; none without a report or with a damaged index."""
    from dgm.report.html import FIGURES_DIR, FIGURES_INDEX

    index = run / FIGURES_DIR / FIGURES_INDEX
    try:
        entries = json.loads(index.read_text()).get("figures", []) if index.exists() else []
        return [e for e in entries if wanted(e.get("title", "")) and e.get("file")
                and (run / FIGURES_DIR / e["file"]).exists()]
    except (ValueError, AttributeError, OSError):  # a damaged index: as if there were no report
        return []


def instrument_charts(run: Path) -> list[tuple[str, str, str]]:
    """``(title, data URI, caption)`` of each instrument chart of the run's report (:func:`is_instrument_chart`)."""
    from PIL import Image

    from dgm.io.images import data_uri
    from dgm.report.html import FIGURES_DIR

    out = []
    for entry in report_figures(run, is_instrument_chart):
        with Image.open(run / FIGURES_DIR / entry["file"]) as im:
            im.load()
            out.append((entry["title"], data_uri(im), entry.get("caption", "")))
    return out


def samples_picture(run: Path) -> tuple[str, str, bool] | None:
    """The run's sample grid as ``(data URI, where it comes from, whether it is an image grid)``: the
    report's samples figure (``RUN/figures``), else the last grid drawn during training
    (``RUN/samples``), else None."""
    from PIL import Image

    from dgm.io.images import data_uri
    from dgm.report.html import FIGURES_DIR

    path, source, pixelated = None, "", True
    entry = next(iter(report_figures(run, lambda t: t == "Samples")), None)
    if entry is not None:
        path, source, pixelated = run / FIGURES_DIR / entry["file"], entry["caption"], entry.get("pixelated", True)
    if path is None:
        grids = sorted((run / "samples").glob("epoch_*.png"))
        if grids:
            path, source = grids[-1], f"drawn during training ({grids[-1].name})"
    if path is None or not path.exists():
        return None
    with Image.open(path) as im:
        im.load()
        return data_uri(im), source, pixelated


def write_html(rows: list[RunRow], path: Path) -> Path:
    """One self-contained page (images inlined) comparing the runs: the leaderboard with the
    qualifiers of each column, the training curves of every quantity the runs share overlaid (one
    plot each, from each run's ``metrics.csv``), each run's sample grid, and the instrument charts
    of the runs whose reports drew them (:func:`instrument_charts`)."""
    from html import escape

    from dgm.io.images import data_uri
    from dgm.report.html import STYLE, _table
    from dgm.train.trainer import read_csv

    header, body, qualifiers = table(rows)
    notes = "".join(f"<li>{escape(name)}: {escape('; '.join(sorted(q)))}</li>" for name, q in qualifiers.items())
    unevaluated = [row.run for row in rows if not row.results]
    if unevaluated:
        notes += f"<li>not evaluated yet (run 'dgm eval RUN'): {escape(', '.join(unevaluated))}</li>"
    parts = [f"<h1>dgm compare: {len(rows)} runs</h1>", "<h2>Leaderboard</h2>",
             _table(body, header, set(range(3, len(header)))), f"<ul class='caption'>{notes}</ul>"]

    labels = [Path(row.run).name for row in rows]
    logs = [read_csv(Path(row.run) / "metrics.csv") for row in rows]
    names = shared_curves(logs)
    parts.append("<h2>Training curves</h2>")
    if not names:
        parts.append("<p class='caption'>no quantity is logged in the metrics.csv of two of these runs</p>")
    for name in names:
        parts.append(f"<figure><img src='{data_uri(overlaid(logs, labels, name))}' alt='{escape(name, quote=True)}'>"
                     f"<figcaption class='caption'>{escape(name)} against the optimiser step, one line per run "
                     f"that logged it, each point an average over the run's train.log_every steps</figcaption></figure>")

    parts.append("<h2>Samples</h2>")
    for row, label in zip(rows, labels):
        parts.append(f"<h3>{escape(label)}: {escape(row.model)} on {escape(row.data)}</h3>")
        found = samples_picture(Path(row.run))
        if found is None:
            parts.append("<p class='caption'>no sample grid: run 'dgm report RUN' to draw one</p>")
            continue
        uri, source, pixelated = found
        cls = " class='pixelated'" if pixelated else ""
        parts.append(f"<figure><img{cls} src='{uri}' alt='samples of {escape(label, quote=True)}'>"
                     f"<figcaption class='caption'>{escape(source)}</figcaption></figure>")
    charts = [(label, instrument_charts(Path(row.run))) for row, label in zip(rows, labels)]
    if any(found for _, found in charts):
        parts.append("<h2>Probes and rate-distortion</h2>")
        for label, found in charts:
            for title, uri, caption in found:
                parts.append(f"<h3>{escape(label)}: {escape(title)}</h3><figure><img src='{uri}' "
                             f"alt='{escape(title, quote=True)}'><figcaption class='caption'>{escape(caption)}"
                             "</figcaption></figure>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>dgm compare: {len(rows)} runs</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
