"""Attribute manipulation: an example with its class (attribute) changed and everything else kept.

``dgm manipulate RUN --input test:K --to all -o out.png`` writes one row: the example, then the model's
version of it in each class asked for. It works for every model with the ``manipulate`` capability
(:meth:`dgm.models.conditional_vae.ClassConditional.manipulate`): a model that encodes with the
example's own class (the CVAE) gets it from the test label (``test:K``) or ``--source``; one with a
classifier infers it; the CSVAE needs none.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from dgm.apps import App, register_app
from dgm.apps.options import output_path
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, capabilities

#: test examples (rows) of the report's figure
REPORT_EXAMPLES = 8


def class_value(text: str, flag: str, num_classes: int) -> int:
    """The class named by ``text`` on the command line (``flag``), checked against the model's classes."""
    if not text.lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
        raise DgmError(f"{flag} takes a class of this model, 0..{num_classes - 1}, got {text!r}")
    return int(text)


def read_example(model: GenerativeModel, args: argparse.Namespace) -> tuple[Tensor, int | None, str]:
    """The example of ``--input`` as ``(1, *shape)`` values in the model's representation, its class
    when known (a test example's label) and how to name it."""
    spec = model.spec
    text = args.input
    if text.startswith("test:"):  # the K-th test example of the run's own data
        from dgm import run

        config, _ = run.read_config(args.run)
        data = run.load_data(config, "test")
        index = text[5:]
        if not index.isdigit() or int(index) >= len(data):
            raise DgmError(f"--input test:K takes the index of a test example, 0..{len(data) - 1}, got {text!r}")
        k = int(index)
        x = data.present(torch.tensor([k], device=data.device))
        label = None if data.labels is None else int(data.labels[k])
        return x, label, f"test example {k}"
    from dgm.apps.restoration import has_colour, read_picture, to_model_values

    if not spec.is_image or spec.levels is None:
        raise DgmError(f"a picture can only be given to a model of images, and this one was trained on "
                       f"{spec.name!r} {spec.shape}: use --input test:K")
    channels, height, width = spec.shape
    im = read_picture(text)
    if (im.width, im.height) != (width, height):
        raise DgmError(f"{text} is {im.width}x{im.height}, the model makes {width}x{height} images: give a "
                       f"{width}x{height} picture")
    if channels == 1 and has_colour(im):
        raise DgmError(f"{text} has colour, the model makes grey images: convert it to greyscale")
    return to_model_values(im, channels, spec), None, text


def save_rows(model: GenerativeModel, rows: Tensor, columns: int, out: Path) -> None:
    """Write ``rows`` ``(N, *shape)`` (``columns`` per row): a picture grid, or a .npz array."""
    from dgm.data.core import to_unit
    from dgm.io import images

    spec = model.spec
    if out.suffix == ".npz":
        import numpy as np

        np.savez_compressed(out, x=rows.cpu().numpy())
    elif spec.is_image:
        images.save(images.grid(to_unit(rows.cpu(), spec), nrow=columns, scale=max(1, 64 // spec.shape[-1])), out)
    else:
        raise DgmError(f"this model makes {spec.kind} data {spec.shape}, not pictures: write a .npz array (-o out.npz)")


@register_app
class Manipulate(App):
    """``dgm manipulate RUN --input test:K|PICTURE --to CLASS|all``, and the report's grid of test
    examples set to every class, for every model that can ``manipulate``."""

    name = "manipulate"
    description = "change the class (attribute) of an example and keep the rest"
    requires = frozenset({"manipulate"})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        parser.add_argument("--input", default="test:0", help="the example: test:K takes test example K of the "
                            "run's data (default test:0), or a picture of the model's size")
        parser.add_argument("--to", default="all", help="the class to set, or 'all' for each class in turn (default)")
        parser.add_argument("--source", help="the example's own class, for a model that encodes with it (the "
                            "label of a test example by default)")
        parser.add_argument("-o", "--output", default="manipulated.png",
                            help="a .png row: the example, then it in each class (.npz: the arrays)")

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        k = model.num_classes
        out = output_path(args.output)
        targets = list(range(k)) if args.to == "all" else [class_value(args.to, "--to", k)]
        x, label, what = read_example(model, args)
        source = class_value(args.source, "--source", k) if args.source is not None else label
        x = x.to(model.device)
        n = len(targets)
        changed = model.manipulate(x.expand(n, *x.shape[1:]), torch.tensor(targets, device=model.device),
                                   source=None if source is None else torch.full((n,), source, device=model.device))
        save_rows(model, torch.cat([x.float(), changed.float()]), n + 1, out)
        return f"{n} class{'es' if n > 1 else ''} of {what} -> {out}"

    def report_figures(self, model: GenerativeModel, examples: Tensor, *, labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        x, k = examples[:REPORT_EXAMPLES], model.num_classes
        rows = len(x)
        # each example's own class: its test label, else what the model's classifier says; a model that
        # needs it and has neither (a CVAE on unlabelled pictures) draws no figure here
        if labels is not None:
            source = labels[:REPORT_EXAMPLES]
        else:
            source = model.classify(x).argmax(-1) if "classify" in capabilities(model) else None
        try:
            changed = model.manipulate(x.repeat_interleave(k, 0), torch.arange(k, device=x.device).repeat(rows),
                                       source=None if source is None else source.repeat_interleave(k, 0))
        except DgmError:
            return []
        grid = torch.cat([x.float()[:, None], changed.float().unflatten(0, (rows, k))], 1).flatten(0, 1)
        return [("Attribute manipulation", grid, k + 1,
                 "attribute manipulation: each row is one test example (left) with its class set to each class "
                 "in turn, everything else kept")]
