"""Probes of inductive bias: which values of a controlled feature a model generates.

Zhao, Ren, Yuan, Song, Goodman & Ermon 2018, "Bias and Generalization in Deep Generative Models:
An Empirical Study" (NeurIPS, arXiv:1811.03259): train on images whose one feature is controlled
(exactly 3 dots, half the area red, ...), then compare the distribution of that feature over
samples, ``p_gen(f = k) = E_{x ~ p_model} 1{f(x) = k}`` (their eq. for the generalisation plots;
eq. 1 of :mod:`dgm.data.probes`), with its distribution over the training images, ``p_train(f = k)``.
A model that memorised the feature puts all its mass on the trained values; the paper finds a
spread around them (3 dots in training: 2, 3 and 4 come out).

``dgm probe RUN [--num-samples N] [-o probe.png]`` works for every model that can ``sample`` a run
whose data is a probe dataset (``dots3``, ``dots2or4``, ``colours``, ``combos``): it writes the two histograms
as a bar plot and as JSON (``probe.json`` next to the plot). The report of such a run shows
samples sorted by their measured feature and the same bar plot for its preview samples.
"""
from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE, add_sampler_flags, output_path, sampler_options
from dgm.data.core import DataSpec, to_unit
from dgm.data.probes import Probe, histogram, probe_of
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel

SAMPLE_BATCH = 250  # samples drawn at once (bounds the memory of an iterative sampler)
REPORT_SAMPLES = 32  # samples of the report's figure
REPORT_HISTOGRAM = 256  # preview samples of the report's bar plot (the figure shows the first REPORT_SAMPLES)
PROBE_DATA = "dots3, dots2or4, colours or combos"  # the probe datasets of dgm.data


def probe_for(spec: DataSpec) -> Probe:
    """The probe of the data a model was trained on; DgmError when it is not a probe dataset."""
    probe = probe_of(spec.extras)
    if probe is None:
        raise DgmError(f"the run's data {spec.name!r} is not a probe dataset: train on {PROBE_DATA} to probe "
                       f"a model")
    return probe


def measure(probe: Probe, x: Tensor, spec: DataSpec) -> np.ndarray:
    """The feature ``(N,)`` of examples ``x`` ``(N, *shape)`` in the representation of ``spec``."""
    return probe.measure(to_unit(x.detach(), spec).cpu().numpy())


def draw_samples(model: GenerativeModel, n: int, *, generator: torch.Generator, **options: Any) -> Tensor:
    """``n`` samples ``(n, *shape)`` from ``model.sample``, ``SAMPLE_BATCH`` at a time."""
    parts = [model.sample(min(SAMPLE_BATCH, n - i), generator=generator, **options) for i in range(0, n, SAMPLE_BATCH)]
    return torch.cat(parts)


@dataclass
class ProbeResult:
    """The probe of one model: the share of each feature value in training and in samples (eq. 1)."""

    dataset: str
    model: str
    feature: str  # what is measured, in words ("number of dots")
    values: list[int]  # the feature values shown, increasing (the last may be the overflow bin)
    labels: list[str]  # how each value is named on the plot
    train: list[float]  # p_train(f = values[i])
    samples: list[float]  # p_gen(f = values[i])
    num_train: int
    num_samples: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_result(model: GenerativeModel, train: Tensor, *, num_samples: int, seed: int = 0,
                 **options: Any) -> ProbeResult:
    """The probe of ``model``: the feature's histogram over ``num_samples`` samples against that over the
    training examples ``train`` ``(N, *shape)`` (in the model's representation)."""
    probe = probe_for(model.spec)
    samples = draw_samples(model, num_samples, generator=torch.Generator().manual_seed(seed), **options)
    return compare(model, probe, measure(probe, samples, model.spec), measure(probe, train, model.spec), seed)


def compare(model: GenerativeModel, probe: Probe, generated: np.ndarray, train: np.ndarray, seed: int) -> ProbeResult:
    """The :class:`ProbeResult` of the measured features of samples ``generated (M,)`` and of training
    examples ``train (N,)``."""
    p_gen, p_train = histogram(generated, probe), histogram(train, probe)
    values = sorted(set(p_gen) | set(p_train))
    return ProbeResult(model.spec.name, model.name, probe.feature, values, [probe.label(k) for k in values],
                       [p_train.get(k, 0.0) for k in values], [p_gen.get(k, 0.0) for k in values], len(train),
                       len(generated), seed)


def probe_plot(result: ProbeResult):  # noqa: ANN201 (a PIL image)
    """Bar plot of the feature's share in the training images and in the samples (the paper's
    generalisation plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgm.io.images import figure_to_image

    k = np.arange(len(result.values))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(k) + 1.5), 3.0), dpi=100)
    ax.bar(k - 0.2, result.train, width=0.4, label=f"training (n={result.num_train})", color="0.6")
    ax.bar(k + 0.2, result.samples, width=0.4, label=f"samples (n={result.num_samples})", color="tab:blue")
    ax.set_xticks(k, result.labels, fontsize=8)
    ax.set_xlabel(result.feature)
    ax.set_ylabel("share of images")
    ax.set_title(f"{result.model} on {result.dataset}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_to_image(fig)


def summary(result: ProbeResult) -> str:
    """The sample histogram in words: ``'3: 61.0%, 2: 20.1%, 4: 15.2%'`` (largest shares first, top 4)."""
    shares = sorted(zip(result.samples, result.labels), reverse=True)[:4]
    return ", ".join(f"{label}: {100 * share:.1f}%" for share, label in shares if share > 0)


@register_app
class ProbeApp(App):
    """``dgm probe RUN``: the distribution of the controlled feature in samples against training."""

    name = "probe"
    description = "bias and generalisation (Zhao et al. 2018): the controlled feature of probe data in samples"
    requires = frozenset({"sample"})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        parser.add_argument("--num-samples", type=POSITIVE, default=1000, help="samples to measure (default 1000)")
        parser.add_argument("-o", "--output", default="probe.png",
                            help="the bar plot (.png); the histograms go to the same name with .json")
        add_sampler_flags(parser, model_class)

    def supports(self, model: GenerativeModel | type[GenerativeModel]) -> bool:
        # a trained model only on probe data: the report lists (and draws) the app for those runs alone
        return super().supports(model) and (isinstance(model, type) or probe_of(model.spec.extras) is not None)

    def needs(self) -> str:
        return f"{super().needs()}, and a run on probe data ({PROBE_DATA})"

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        from dgm import run

        probe_for(model.spec)  # refuse other data before loading or sampling anything
        out = output_path(args.output)
        if out.suffix.lower() != ".png":
            raise DgmError(f"the probe plot is a picture: name a .png file, not {out.name}")
        config, _ = run.read_config(args.run)
        train = run.load_data(config, "train")
        options = sampler_options(model, args)
        if "progress" in inspect.signature(model.sample).parameters:  # iterative samplers show their steps
            options["progress"] = not args.quiet
        result = probe_result(model, train.tensors().x, num_samples=args.num_samples, seed=args.seed, **options)
        from dgm.io.images import save

        save(probe_plot(result), out)
        table = out.with_suffix(".json")
        table.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
        return f"{result.feature} in {args.num_samples} samples: {summary(result)} -> {out}, {table.name}"

    def report_figures(self, model: GenerativeModel, examples: Tensor, *, labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> list[tuple[str, Any, int, str]]:
        from dgm.data import load

        probe = probe_of(model.spec.extras)
        if probe is None:  # the figure is for runs on probe data only
            return []
        drawn = torch.cat([model.preview_sample(min(SAMPLE_BATCH, REPORT_HISTOGRAM - i), generator=generator)
                           for i in range(0, REPORT_HISTOGRAM, SAMPLE_BATCH)])
        measured = measure(probe, drawn, model.spec)
        x, values = drawn[:REPORT_SAMPLES], measured[:REPORT_SAMPLES]
        order = np.argsort(values, kind="stable")
        shares = histogram(values, probe)
        counts = ", ".join(f"{probe.label(k)}: {round(share * len(values))}" for k, share in shares.items() if share)
        train = load(model.spec.name, "train")  # probe data is generated: the run's training images, in its own values
        result = compare(model, probe, measured, measure(probe, train.tensors().x, train.spec), 0)
        return [(f"Probe: {probe.feature}", x[torch.from_numpy(order).to(x.device)], 8,
                 f"{REPORT_SAMPLES} samples sorted by their {probe.feature} as measured (Zhao et al. 2018): {counts}"),
                (f"Probe: {probe.feature} in samples and in training", probe_plot(result), 0,
                 f"the share of each {probe.feature} in {REPORT_HISTOGRAM} samples of the preview sampler against the "
                 f"{len(train)} training images: {summary(result)}; dgm probe RUN measures it with the full sampler")]
