"""``RUN/report.html``: one self-contained page (images inlined) per run.

Sections appear for what the model can do: samples for every model, reconstructions where it can
reconstruct, a latent interpolation where it can encode and decode, the metrics of ``eval.json``
where the run was evaluated.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from dgm.data.core import Dataset, to_unit
from dgm.models.base import GenerativeModel, capabilities
from dgm.report import images
from dgm.train.trainer import read_csv

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; max-width: 100%; } pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
.caption { color: #666; font-size: .85em; }
"""


#: prefixes of the diagnostics logged by monitors (duality gaps, mode coverage), plotted per epoch
DIAGNOSTICS = ("dg/", "modes/")


def loss_curves(rows: list[dict[str, float]], *, diagnostics: bool = False,
                x: str = "step"):  # noqa: ANN201 (PIL image or None)
    """One panel per logged quantity against ``x``: the training losses, or (``diagnostics``) the
    quantities logged by monitors."""
    names = sorted({k for r in rows for k in r if k not in ("step", "epoch", "lr")
                    and k.startswith(DIAGNOSTICS) == diagnostics}, key=lambda k: (k != "loss", k))
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), dpi=80, squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r[x], r[name]) for r in rows if name in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2, marker="." if diagnostics else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return images.figure_to_image(fig)


@torch.no_grad()
def interpolation(model: GenerativeModel, x: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decodes of codes on straight lines between the codes of pairs of examples: rows are
    pairs (x[2i], x[2i+1]), columns go from one end to the other. ``(pairs * steps, *shape)``."""
    z = model.encode(x)
    a, b = z[0::2], z[1::2]
    n = min(len(a), len(b))
    t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
    path = a[:n, None] * (1 - t) + b[:n, None] * t  # (pairs, steps, latent_dim)
    return model.decode(path.reshape(n * steps, -1))


def _table(rows: list[list[str]], header: list[str], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{html.escape(c)}</td>" if i in numeric else f"<td>{html.escape(c)}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(picture, caption: str) -> str:  # noqa: ANN001
    return f"<figure><img src='{images.data_uri(picture)}'><figcaption class='caption'>{html.escape(caption)}</figcaption></figure>"


def write_report(run_dir: str | Path, model: GenerativeModel, test: Dataset, *, seed: int = 0) -> Path:
    """Write ``run_dir/report.html`` for the trained ``model`` (with ``test`` examples for
    reconstructions and interpolations) and return its path."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else []
    have = capabilities(model)
    spec = model.spec
    parts = [f"<h1>{html.escape(model.name)} on {html.escape(spec.name)}</h1>",
             f"<p>{html.escape(type(model).description)}. Run directory: <code>{html.escape(str(run_dir))}</code>. "
             f"Capabilities: {html.escape(', '.join(sorted(have)))}.</p>"]

    if results:
        rows = [[r["metric"], f"{r['value']:.4f}", r["unit"], r["qualifier"], r["split"]] for r in results]
        parts += ["<h2>Metrics</h2>", _table(rows, ["metric", "value", "unit", "qualifier", "split"], {1})]

    logged = read_csv(run_dir / "metrics.csv")
    curves = loss_curves(logged)
    if curves is not None:
        parts += ["<h2>Training curves</h2>", _figure(curves, "logged every train.log_every steps (averages)")]
    diagnostics = loss_curves(logged, diagnostics=True, x="epoch")
    if diagnostics is not None:
        parts += ["<h2>Convergence diagnostics</h2>",
                  _figure(diagnostics, "estimated at the end of epochs during training: dg/plain and dg/proximal are "
                          "the duality gap and the proximal duality gap (0 at an equilibrium); modes/ is mode "
                          "coverage of 2500 samples")]

    generator = torch.Generator(device=model.device).manual_seed(seed)
    if "sample" in have:
        reference = test.tensors(2000).x if not spec.is_image else None
        samples = model.sample(64, generator=generator)
        parts += ["<h2>Samples</h2>", _figure(images.sample_picture(samples, spec, reference), "64 samples, seed 0")]
    if spec.is_image:
        x = test.tensors(16).x.to(model.device)
        scale = max(1, 64 // spec.shape[-1])
        if "reconstruct" in have:
            pair = torch.cat([to_unit(x, spec), to_unit(model.reconstruct(x), spec)])
            parts += ["<h2>Reconstructions</h2>",
                      _figure(images.grid(pair, nrow=16, scale=scale), "top: test examples; bottom: reconstructions")]
        if {"encode", "decode"} <= have:
            path = to_unit(interpolation(model, x), spec)
            parts += ["<h2>Latent interpolation</h2>",
                      _figure(images.grid(path, nrow=10, scale=scale),
                              "each row decodes a straight line between the codes of two test examples")]
        if "restore" in have and spec.levels is not None:
            from dgm.restoration import examples, shown

            for title, view in examples(x[:8], spec):
                rows = torch.cat([shown(view, spec.shape[0]), model.restore(view, generator=generator), x[:8]])
                parts += [f"<h2>Restoration: {html.escape(title)}</h2>",
                          _figure(images.grid(to_unit(rows, spec), nrow=8, scale=scale),
                                  "top: what is known; middle: the model's restoration; bottom: the test image")]
        for title, images_, columns in model.report_figures(generator=generator):
            parts += [f"<h2>{html.escape(title)}</h2>",
                      _figure(images.grid(to_unit(images_, spec), nrow=columns, scale=scale),
                              "each row keeps the other latent variables fixed")]
    for r in results:
        if "figure" in r.get("details", {}):
            parts += ["<h2>Nearest training neighbours</h2>",
                      f"<figure><img src='{r['details']['figure']}'><figcaption class='caption'>top: samples; "
                      f"bottom: their nearest training images ({html.escape(r['qualifier'])})</figcaption></figure>"]
            break
    grids = sorted((run_dir / "samples").glob("epoch_*.png"))
    if grids:
        from PIL import Image

        chosen = grids if len(grids) <= 4 else [grids[0], grids[len(grids) // 3], grids[2 * len(grids) // 3], grids[-1]]
        parts.append("<h2>Samples during training</h2>")
        parts += [_figure(Image.open(g), g.stem.replace("_", " ")) for g in chosen]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>dgm: {html.escape(model.name)} on "
            f"{html.escape(spec.name)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
