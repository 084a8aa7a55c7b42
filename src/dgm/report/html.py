"""``RUN/report.html``: one self-contained page (images inlined) per run.

Sections appear for what the model can do: samples for every model, a row of samples per class
where it samples given a class (:attr:`~dgm.models.base.GenerativeModel.num_classes`), each of a few
samples beside its nearest training images in pixel space (image data: does it copy?),
reconstructions where it can reconstruct, a latent interpolation and traversals where it can encode
and decode (images and volumes), restorations where it can restore, the model's own figures (:meth:`~dgm.models.base.GenerativeModel.report_figures`), the
metrics of ``eval.json`` where the run was evaluated. Every figure is captioned by whoever draws it.

The pictures drawn from the model (some are costly: a restoration is a whole RePaint chain) are
kept in ``RUN/figures/`` as PNG files with ``figures.json``, which records the weights they were
drawn from; a later report (``dgm eval``, ``dgm report``) reuses them while the weights are
unchanged and draws them again otherwise, or when asked (``redraw=True``, ``dgm report --redraw``).
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dgm.apps import apps_for
from dgm.data.core import Dataset, to_unit
from dgm.errors import DgmError
from dgm.eval.core import read_results
from dgm.eval.fidelity import squared_distances
from dgm.models.base import GenerativeModel, capabilities
from dgm.data.pictures import decode_tokens, sample_picture, sample_sound
from dgm.io import images
from dgm.train.trainer import read_csv

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } img.pixelated { image-rendering: pixelated; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } .caption { color: #666; font-size: .85em; }
summary { cursor: pointer; color: #444; }
"""

#: the folder of ``RUN`` holding the pictures drawn from the model, and their index
FIGURES_DIR = "figures"
FIGURES_INDEX = "figures.json"

#: samples shown in the report
NUM_SAMPLES = 64
AUDIO_SAMPLES = 16  # of audio clips (each T network steps; a grid of 16 spectrograms)
#: how the samples of each data kind are shown, for the caption
SAMPLES_SHOWN = {
    "image": "",
    "vector": " (blue) over test examples (grey)",
    "tokens": ", one per line: the bytes up to the first padding token (0), decoded as UTF-8",
    "points": ", one small scatter plot per set, its padding points (at the origin) left out",
    "volume": ", each a shaded view of its occupancies (azimuth 30, elevation 25 degrees; nearer is brighter)",
    "audio": (", each the spectrogram of a clip (time across, frequency up to half the sample rate, the top 80 dB "
              "in magma colours); play the first 8, one after another"),
    "strokes": ", each a pen drawing of its real points (the pen lifted where a stroke ends), fitted to its cell",
}


@dataclass
class Figure:
    """One figure of the report: the section it opens, the picture and what it shows."""

    title: str
    picture: Image.Image | None  # None: a text figure
    caption: str
    pixelated: bool = False  # an image grid, shown with sharp pixels (plots are smoothed as usual)
    text: str | None = None  # shown as text instead of the picture (samples of token sequences)
    sound: bytes | None = None  # a WAV file played below the picture (audio samples)

    def to_html(self) -> str:
        cls = " class='pixelated'" if self.pixelated else ""
        body = (f"<pre>{html.escape(self.text)}</pre>" if self.text is not None else
                f"<img{cls} src='{images.data_uri(self.picture)}' alt='{html.escape(self.title, quote=True)}'>")
        if self.sound is not None:
            body += audio_element(self.sound)
        return (f"<h2>{html.escape(self.title)}</h2><figure>{body}<figcaption class='caption'>"
                f"{html.escape(self.caption)}</figcaption></figure>")


def audio_element(wav: bytes) -> str:
    """An inline ``<audio>`` player of a WAV file (the report has no external files)."""
    return f"<br><audio controls src='data:audio/wav;base64,{base64.b64encode(wav).decode('ascii')}'></audio>"


# --- plots of what training logged -----------------------------------------------------------------
def curves(rows: list[dict[str, float]], names: list[str], *, x: str = "step",
           markers: bool = False) -> Image.Image | None:
    """One panel per logged quantity in ``names`` against ``x``; None when there is nothing to plot."""
    names = [n for n in names if any(n in r for r in rows)]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), dpi=80, squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r[x], r[name]) for r in rows if name in r and x in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2, marker="." if markers else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return images.figure_to_image(fig)


def monitor_descriptions(model: GenerativeModel, test: Dataset) -> dict[str, str]:
    """What the run's training monitors logged (``{logged name: what it is}``), as each monitor
    describes it in its ``logs``: the model's own callbacks and those the data called for."""
    from dgm.run import monitors

    described: dict[str, str] = {}
    for callback in monitors(model, test, lambda: test):
        described.update(getattr(callback, "logs", {}) or {})
    return described


def training_plots(run_dir: Path, model: GenerativeModel, test: Dataset) -> list[Callable[[], list[Figure]]]:
    """Drawers of the training curves and of the monitors' diagnostics (cheap: never cached)."""
    logged = read_csv(run_dir / "metrics.csv")
    described = monitor_descriptions(model, test)
    diagnostics = sorted(k for k in described if any(k in r for r in logged))
    losses = sorted({k for r in logged for k in r if k not in ("step", "epoch") and k.split("/")[-1] != "lr"
                     and k not in described},  # the learning rates (lr, PHASE/lr) are settings, not losses
                    key=lambda k: (k != "loss", k))

    def losses_figure() -> list[Figure]:
        picture = curves(logged, losses)
        return [] if picture is None else [Figure(
            "Training curves", picture,
            f"against the optimiser step, each point an average over train.log_every steps: {', '.join(losses)}")]

    def diagnostics_figure() -> list[Figure]:
        picture = curves(logged, diagnostics, x="epoch", markers=True)
        return [] if picture is None else [Figure(
            "Convergence diagnostics", picture, "estimated at the end of epochs during training: "
            + "; ".join(f"{name}: {described[name]}" for name in diagnostics))]

    return [losses_figure, diagnostics_figure]


# --- pictures drawn from the model (cached in RUN/figures) -----------------------------------------
def interpolation(model: GenerativeModel, x: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decodes of codes on straight lines between the codes of pairs of examples (vectors, or grids
    such as a VQ-VAE's quantized z): rows are pairs (x[2i], x[2i+1]), columns go from one end to
    the other. ``(pairs * steps, *shape)``."""
    with torch.inference_mode():
        z = model.encode(x)
        a, b = z[0::2], z[1::2]
        n = min(len(a), len(b))
        t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, *[1] * (z.ndim - 1))
        path = a[:n, None] * (1 - t) + b[:n, None] * t  # (pairs, steps, *code_shape): a vector or a grid
        return model.decode(path.flatten(0, 1))


#: latent traversals: the dimensions shown (those whose test codes spread most), the steps along each,
#: the test codes their ranges are read from, and the quantiles of those codes a traversal spans
TRAVERSAL_DIMS, TRAVERSAL_STEPS, TRAVERSAL_CODES, TRAVERSAL_QUANTILES = 10, 9, 512, (0.02, 0.98)


def traversal(model: GenerativeModel, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Decodes of the code of ``x`` (one example) with one dimension at a time moved along its range:
    rows are the ``TRAVERSAL_DIMS`` dimensions whose ``codes`` (the test codes, ``(N, D)``) vary
    most, each from the 2nd to the 98th percentile of its test codes, the others kept; with the
    dimensions shown. The range is read from the codes, not the prior, so it also serves models
    whose code space is not a standard normal (a BiGAN's encoder, a ladder VAE's layers)."""
    with torch.inference_mode():
        z = model.encode(x[:1])  # (1, D)
        spread = codes.var(0, correction=0)  # (D,); a single test example has no spread, not NaN
        dims = spread.argsort(descending=True)[:TRAVERSAL_DIMS].sort().values.tolist()
        low, high = torch.quantile(codes.float(), torch.tensor(TRAVERSAL_QUANTILES, device=codes.device), dim=0)
        t = torch.linspace(0, 1, TRAVERSAL_STEPS, device=z.device)
        rows = z.repeat(len(dims) * TRAVERSAL_STEPS, 1).view(len(dims), TRAVERSAL_STEPS, -1)
        for row, d in enumerate(dims):
            rows[row, :, d] = low[d] + (high[d] - low[d]) * t
        return model.decode(rows.flatten(0, 1)), dims


#: points per side of the grid on which a 2-D model's density is drawn, and the samples drawn beside it
DENSITY_GRID, DENSITY_SAMPLES = 200, 2000


def density_figure(model: GenerativeModel, test: Dataset, generator: torch.Generator) -> Figure:
    """A 2-D model's density on a grid beside the test points and its samples."""
    data = test.tensors(DENSITY_SAMPLES).x.float()
    low, high = data.min(0).values, data.max(0).values
    margin = 0.1 * (high - low)
    (x0, y0), (x1, y1) = (low - margin).tolist(), (high + margin).tolist()
    xs = torch.linspace(x0, x1, DENSITY_GRID)
    ys = torch.linspace(y0, y1, DENSITY_GRID)
    grid_points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)  # row-major in y
    with torch.inference_mode():
        log_p = torch.cat([model.log_prob(chunk.to(model.device)).cpu()
                           for chunk in grid_points.split(10_000)]).view(DENSITY_GRID, DENSITY_GRID)
        samples = model.preview_sample(DENSITY_SAMPLES, generator=generator)
    picture = images.density_panels(data, log_p, (x0, x1, y0, y1), samples)
    return Figure("Density", picture, f"left: {len(data)} test points; middle: the model's density exp(log p) "
                  f"on a {DENSITY_GRID}x{DENSITY_GRID} grid; right: {DENSITY_SAMPLES} samples")


def inferred_shapes_figure(model: GenerativeModel, test: Dataset, count: int = 4) -> Figure:
    """Test volumes and the model's reconstructions of them, each seen turning (:func:`dgm.data.voxels.turning`)."""
    from dgm.data.voxels import TURN, turning

    x = test.tensors(count).x.to(model.device)  # (count, 1, D, H, W)
    with torch.inference_mode():
        pairs = torch.stack([to_unit(x, model.spec).float(), model.reconstruct(x).float()], 1).flatten(0, 1)
    read = getattr(model, "reconstruction_description", "its reconstruction by the model")
    return Figure("Inferred shapes, turning", images.grid(turning(pairs), nrow=len(TURN)),
                  f"rows in pairs: a test volume, then {read}; each seen from azimuths "
                  f"{', '.join(f'{a:.0f}' for a in TURN)} degrees at elevation 25, shaded (nearer is brighter)",
                  pixelated=True)


#: the class-conditional grid: samples per class (a row each), and the most classes shown
CLASS_GRID_COLUMNS, CLASS_GRID_ROWS = 8, 20


def class_grid(model: GenerativeModel, columns: int = CLASS_GRID_COLUMNS, *,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """``columns`` samples of each class ``y`` (the model's ``condition``), row-major with one row
    per class (at most ``CLASS_GRID_ROWS``): ``((rows * columns, *shape), rows)``."""
    rows = min(model.num_classes, CLASS_GRID_ROWS)
    y = torch.arange(rows, device=model.device).repeat_interleave(columns)  # (rows * columns,): row r is class r
    with torch.inference_mode():
        return model.sample(len(y), condition=y, generator=generator), rows


def class_grid_figure(model: GenerativeModel, grid: Callable[[torch.Tensor, int], Image.Image],
                      generator: torch.Generator) -> Figure:
    pictures, rows = class_grid(model, generator=generator)
    names = model.spec.class_names or [str(c) for c in range(model.num_classes)]
    more = f" (the first {rows} of {model.num_classes})" if rows < model.num_classes else ""
    return Figure("Samples by class", grid(pictures, CLASS_GRID_COLUMNS),
                  f"each row: {CLASS_GRID_COLUMNS} samples given one class as the condition, rows in class "
                  f"order{more}: {', '.join(names[:rows])}", pixelated=True)


#: the memorisation grid: samples shown, training neighbours beside each, training images searched
NN_SAMPLES, NN_NEIGHBOURS, NN_TRAINING = 8, 5, 2000


def nearest_training(samples: torch.Tensor, train: torch.Tensor, k: int = NN_NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training images nearest to each sample in pixel space (Euclidean, float64), nearest
    first: ``(distances (N, k), indices (N, k))`` for ``samples (N, ...)`` and ``train (M, ...)``."""
    q, ref = samples.flatten(1).double().cpu(), train.flatten(1).double().cpu()  # (N, F), (M, F)
    sq = squared_distances(q, ref, ref.mean(0))  # (N, M), centred on the training mean for precision
    index = sq.topk(min(k, len(ref)), dim=1, largest=False).indices  # (N, k), ascending: nearest first
    # the distances of the chosen pairs computed directly: a copy is at 0 exactly, not at a rounding error
    return (q[:, None] - ref[index]).norm(dim=-1), index


def memorisation_figure(model: GenerativeModel, train: torch.Tensor,
                        grid: Callable[[torch.Tensor, int], Image.Image], generator: torch.Generator) -> Figure:
    """Each of ``NN_SAMPLES`` samples beside its nearest training images (``train`` in [0, 1])."""
    samples = to_unit(model.preview_sample(NN_SAMPLES, generator=generator), model.spec).float().cpu()
    d, index = nearest_training(samples, train)
    rows = torch.cat([samples[:, None], train[index]], 1)  # (N, 1 + k, C, H, W): the sample, then its neighbours
    nearest = d[:, 0]
    return Figure("Nearest training images (pixel space)", grid(rows.flatten(0, 1), rows.shape[1]),
                  f"each row: a sample (first column), then its {index.shape[1]} nearest of the first {len(train)} "
                  f"training images by Euclidean distance on pixels in [0, 1], nearest first; distance to the "
                  f"nearest: median {nearest.median():.3g}, least {nearest.min():.3g} (0 would be a copy)",
                  pixelated=True)


def latent_drawers(model: GenerativeModel, test: Dataset, x: torch.Tensor,
                   picture: Callable[[torch.Tensor, int], Image.Image], shown: str = "") -> list[Callable[[], list[Figure]]]:
    """Drawers of the latent interpolation and traversals of a model that encodes and decodes (none
    otherwise), from the test examples ``x``; ``picture(decodes, columns)`` lays the decodes out in
    rows, ``shown`` says how in the captions."""
    if not {"encode", "decode"} <= capabilities(model):
        return []
    drawers: list[Callable[[], list[Figure]]] = []
    if len(x) >= 2:  # a line needs two test examples
        drawers.append(lambda: [Figure("Latent interpolation", picture(interpolation(model, x), 10),
                                       f"each row decodes a straight line between the codes of two test "
                                       f"examples{shown}", pixelated=True)])

    def traversals() -> list[Figure]:
        with torch.inference_mode():
            codes = torch.cat([model.encode(b.x.to(model.device)) for b in test.subset(TRAVERSAL_CODES).batches(256)])
        if codes.ndim != 2:  # a grid of discrete codes (VQ-VAE) has no axis to move along
            return []
        pictures, dims = traversal(model, x, codes)
        factors = ""
        if "factors" in model.spec.extras:
            factors = f"; the data's known factors are {', '.join(model.spec.extras['factors'])}"
        return [Figure("Latent traversals", picture(pictures, TRAVERSAL_STEPS),
                       f"each row moves one dimension of the first test example's code (dimensions "
                       f"{', '.join(map(str, dims))}: those whose test codes vary most) from the "
                       f"{TRAVERSAL_QUANTILES[0]:.0%} to the {TRAVERSAL_QUANTILES[1]:.0%} quantile of "
                       f"{min(len(test), TRAVERSAL_CODES)} test codes, the others kept{factors}{shown}",
                       pixelated=True)]

    return [*drawers, traversals]


def model_drawers(model: GenerativeModel, test: Dataset, seed: int,
                  train: Callable[[], torch.Tensor | None] | None = None) -> list[Callable[[], list[Figure]]]:
    """Drawers of every picture the report asks of the model, in page order, sharing one generator
    (so a redraw gives the same pictures). ``train`` gives up to ``NN_TRAINING`` training images in
    [0, 1] for the memorisation grid (None, or a None from it: no such grid)."""
    have, spec = capabilities(model), model.spec
    generator = torch.Generator(device=model.device).manual_seed(seed)
    drawers: list[Callable[[], list[Figure]]] = []
    scale = max(1, 64 // spec.shape[-1]) if spec.is_image else 1

    def grid(x: torch.Tensor, nrow: int) -> Image.Image:
        return images.grid(to_unit(x, spec), nrow=nrow, scale=scale)

    def own_figures() -> list[Figure]:  # last on the page, for every kind of data
        return [Figure(title, None, caption, text=pictures) if isinstance(pictures, str) else
                Figure(title, grid(pictures, columns), caption, pixelated=True)
                for title, pictures, columns, caption in model.report_figures(generator=generator)]

    if "sample" in have:
        def samples() -> list[Figure]:
            reference = test.tensors(2000).x if not spec.is_image else None
            n = AUDIO_SAMPLES if spec.kind == "audio" else NUM_SAMPLES
            x = model.preview_sample(n, generator=generator)
            shown = SAMPLES_SHOWN["strokes" if spec.extras.get("strokes") else spec.kind]
            caption = f"{n} samples from the model's preview sampler{shown}, seed {seed}"
            text = None
            if spec.kind == "tokens":  # text reads best as text
                text = "\n".join(f"{i + 1:>2}  {line}" for i, line in enumerate(decode_tokens(x)))
            return [Figure("Samples", sample_picture(x, spec, reference), caption, pixelated=spec.is_image,
                           text=text, sound=sample_sound(x, spec))]

        drawers.append(samples)
        # a class-conditional model of images: a row per class, unless it draws its own class grid
        if spec.is_image and model.num_classes and not hasattr(model, "class_grid"):
            drawers.append(lambda: [class_grid_figure(model, grid, generator)])
        if spec.is_image and train is not None:
            def memorisation() -> list[Figure]:
                pictures = train()
                return [] if pictures is None else [memorisation_figure(model, pictures, grid, generator)]

            drawers.append(memorisation)
    if spec.extras.get("strokes"):  # pen strokes: the data beside the samples, drawn alike
        def test_strokes() -> list[Figure]:
            batch = test.tensors(NUM_SAMPLES)
            return [Figure("Test strokes", sample_picture(batch.x, spec, mask=batch.mask),
                           f"the first {len(batch.x)} test sequences{SAMPLES_SHOWN['strokes']}")]

        drawers.append(test_strokes)
    if spec.kind == "audio":  # audio: test clips beside the samples, seen and heard alike
        def test_clips() -> list[Figure]:
            x = test.tensors(16).x
            return [Figure("Test clips", sample_picture(x, spec), f"the first {len(x)} test clips"
                           f"{SAMPLES_SHOWN['audio']}", sound=sample_sound(x, spec))]

        drawers.append(test_clips)
    if spec.shape == (2,) and spec.kind == "vector" and {"log_prob", "sample"} <= have:
        drawers.append(lambda: [density_figure(model, test, generator)])
    if spec.kind == "volume" and "reconstruct" in have:
        drawers.append(lambda: [inferred_shapes_figure(model, test)])
    if spec.kind == "volume":  # volumes move through the latent space as images do, each a shaded view
        drawers += latent_drawers(model, test, test.tensors(16).x.to(model.device),
                                  lambda v, nrow: sample_picture(v, spec, nrow=nrow), " (each a shaded view)")
    if not spec.is_image:
        return [*drawers, own_figures]
    batch = test.tensors(16)
    x = batch.x.to(model.device)  # (16, C, H, W)
    y = None if batch.y is None else batch.y.to(model.device)  # (16,) where the data has labels
    if "reconstruct" in have:
        def reconstructions() -> list[Figure]:
            with torch.inference_mode():
                pair = torch.cat([x, model.reconstruct(x)])
            return [Figure("Reconstructions", grid(pair, 16), "top: 16 test examples; bottom: their reconstructions",
                           pixelated=True)]

        drawers.append(reconstructions)
    drawers += latent_drawers(model, test, x, grid)
    for app in apps_for(model):  # each use of the model draws its own figures
        def app_figures(app=app) -> list[Figure]:  # noqa: ANN001
            with torch.inference_mode():
                drawn = app.report_figures(model, x, labels=y, generator=generator)
            return [Figure(title, pictures, caption) if isinstance(pictures, Image.Image) else  # a chart
                    Figure(title, grid(pictures, columns), caption, pixelated=True)
                    for title, pictures, columns, caption in drawn]

        drawers.append(app_figures)

    drawers.append(own_figures)
    return drawers


def weights_stamp(run_dir: Path, seed: int) -> dict[str, Any] | None:
    """What the cached pictures depend on: the weight files' modification times and sizes, and the
    seed; None when the run has no weights on disk (nothing to cache against)."""
    from dgm.train.checkpoint import EMA_WEIGHTS, WEIGHTS

    files = {name: {"mtime_ns": (run_dir / name).stat().st_mtime_ns, "size": (run_dir / name).stat().st_size}
             for name in (WEIGHTS, EMA_WEIGHTS) if (run_dir / name).exists()}
    return {"seed": seed, "weights": files} if files else None


def read_cached(run_dir: Path, stamp: dict[str, Any] | None) -> list[Figure] | None:
    """The cached pictures drawn from weights with this ``stamp``, or None (stale, missing, damaged)."""
    index = run_dir / FIGURES_DIR / FIGURES_INDEX
    if stamp is None or not index.exists():
        return None
    try:
        stored = json.loads(index.read_text())
        if stored.get("stamp") != stamp:
            return None
        figures = []
        for entry in stored["figures"]:
            picture = None
            if entry["file"] is not None:
                with Image.open(run_dir / FIGURES_DIR / entry["file"]) as im:
                    im.load()
                    picture = im.copy()
            sound = (run_dir / FIGURES_DIR / entry["sound"]).read_bytes() if entry.get("sound") else None
            figures.append(Figure(entry["title"], picture, entry["caption"], entry["pixelated"], entry.get("text"),
                                  sound))
        return figures
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache is drawn again


def write_cached(run_dir: Path, stamp: dict[str, Any] | None, figures: list[Figure]) -> None:
    if stamp is None:
        return
    folder = run_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("figure_*.png"), *folder.glob("figure_*.wav")]:
        old.unlink()
    entries = []
    for i, figure in enumerate(figures):
        name = None  # a text figure has no picture file
        if figure.picture is not None:
            name = f"figure_{i:02d}.png"
            figure.picture.save(folder / name)
        sound = None
        if figure.sound is not None:
            sound = f"figure_{i:02d}.wav"
            (folder / sound).write_bytes(figure.sound)
        entries.append({"file": name, "title": figure.title, "caption": figure.caption,
                        "pixelated": figure.pixelated, "text": figure.text, "sound": sound})
    (folder / FIGURES_INDEX).write_text(json.dumps({"stamp": stamp, "figures": entries}, indent=2))


# --- the page --------------------------------------------------------------------------------------
def _table(rows: list[list[str]], header: list[str], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{html.escape(c)}</td>" if i in numeric else f"<td>{html.escape(c)}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def training_images(run_dir: Path) -> Callable[[], torch.Tensor | None]:
    """A loader of the first ``NN_TRAINING`` training images of the run (its config's data, in
    [0, 1]), called only when the memorisation grid is drawn; None from it where the run's data
    cannot be loaded again (data given in memory, not by a name ``dgm train`` knows)."""
    def load() -> torch.Tensor | None:
        from dgm import run

        try:
            config, _ = run.read_config(run_dir)
            train = run.load_data(config, "train")
        except DgmError:
            return None
        return to_unit(train.tensors(NN_TRAINING).x, train.spec).float().cpu()  # (M, C, H, W)

    return load


def write_report(run_dir: str | Path, model: GenerativeModel, test: Dataset, *, seed: int = 0,
                 redraw: bool = False, progress: bool = False,
                 train: Dataset | None = None) -> Path:
    """Write ``run_dir/report.html`` for the trained ``model`` (with ``test`` examples for
    reconstructions, interpolations and restorations) and return its path.

    Args:
        seed: seeds every picture drawn from the model.
        redraw: draw the model's pictures again even when ``run_dir/figures`` holds pictures of the
            same weights (by default they are reused).
        progress: show a progress bar over the figures.
        train: the training split, for the nearest-training-images grid of image data (default:
            the run's own, loaded from its config).
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    results = read_results(run_dir)
    have = capabilities(model)
    spec = model.spec
    parts = [f"<h1>{html.escape(model.name)} on {html.escape(spec.name)}</h1>",
             f"<p>{html.escape(type(model).description)}. Run directory: <code>{html.escape(str(run_dir))}</code>. "
             f"Capabilities: {html.escape(', '.join(sorted(have)))}. "
             f"Apps: {html.escape(', '.join(f'dgm {app.name}' for app in apps_for(model)) or 'none')}.</p>"]
    if results:
        rows = [[r["metric"], f"{r['value']:.4f}", r["unit"], r["qualifier"], r["split"]] for r in results]
        parts += ["<h2>Metrics</h2>", _table(rows, ["metric", "value", "unit", "qualifier", "split"], {1})]

    stamp = weights_stamp(run_dir, seed)
    cached = None if redraw else read_cached(run_dir, stamp)
    plots = training_plots(run_dir, model, test)
    nearest = (training_images(run_dir) if train is None else
               lambda: to_unit(train.tensors(NN_TRAINING).x, train.spec).float().cpu())
    drawers = plots + ([] if cached is not None else model_drawers(model, test, seed, nearest))
    from dgm.eval.core import progress_bar

    drawn: list[list[Figure]] = [drawer() for drawer in progress_bar(
        drawers, enabled=progress, total=len(drawers), desc="report figures", unit="figure")]
    plotted, from_model = drawn[:len(plots)], [f for figures in drawn[len(plots):] for f in figures]
    if cached is None:
        write_cached(run_dir, stamp, from_model)
    figures = [f for figures in plotted for f in figures] + (cached if cached is not None else from_model)
    parts += [f.to_html() for f in figures]
    neighbours = next((r for r in results if "figure" in r.get("details", {})), None)
    if neighbours is not None:  # drawn by the memorization metric, kept in eval.json
        parts.append(f"<h2>Nearest training neighbours</h2><figure><img class='pixelated' "
                     f"src='{neighbours['details']['figure']}' alt='nearest training neighbours'><figcaption "
                     f"class='caption'>top: samples; bottom: their nearest training images "
                     f"({html.escape(neighbours['qualifier'])})</figcaption></figure>")
    grids = sorted((run_dir / "samples").glob("epoch_*.png"))
    if grids:
        chosen = grids if len(grids) <= 4 else [grids[0], grids[len(grids) // 3], grids[2 * len(grids) // 3], grids[-1]]
        parts.append("<h2>Samples during training</h2>")
        for path in chosen:
            epoch = int(path.stem.split("_")[-1]) if path.stem.split("_")[-1].isdigit() else path.stem
            with Image.open(path) as im:
                im.load()
                uri = images.data_uri(im)
            cls = " class='pixelated'" if spec.is_image else ""
            heard = audio_element(path.with_suffix(".wav").read_bytes()) if path.with_suffix(".wav").exists() else ""
            parts.append(f"<figure><img{cls} src='{uri}' alt='{html.escape(path.stem, quote=True)}'>{heard}<figcaption "
                         f"class='caption'>samples drawn at the end of epoch {epoch} "
                         f"(the preview sampler, seed {config.get('train', {}).get('seed', 0)})</figcaption></figure>")
    lines = json.dumps(config, indent=2)
    parts += ["<h2>Configuration</h2>",
              f"<details><summary>config.json ({lines.count(chr(10)) + 1} lines)</summary>"
              f"<pre>{html.escape(lines)}</pre></details>"]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>dgm: {html.escape(model.name)} on "
            f"{html.escape(spec.name)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
