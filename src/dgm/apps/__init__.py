"""Apps: the uses of a trained model (restoration, semi-supervised classification, attribute
manipulation; compression and probes next).

An app names the capabilities it needs (:func:`dgm.models.capabilities`), adds its own ``dgm``
subcommand and its own figures to the report, and works for every model that has those
capabilities: the CLI and the report list a run's apps by what its model can do, never by family.
A new use is one file here (or anywhere, e.g. a test) with a class decorated by :func:`register_app`.
"""
from __future__ import annotations

import argparse
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor

from dgm.models.base import GenerativeModel, capabilities


class App:
    """Base class of the apps. Subclasses set ``name`` (the subcommand), ``description`` and
    ``requires``, and implement :meth:`run`; :meth:`add_arguments` and :meth:`report_figures` are
    optional."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()  # capabilities the model must have
    requires_any: ClassVar[frozenset[str]] = frozenset()  # ... and at least one of these (when given)

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        """Flags of ``dgm NAME RUN ...`` beyond RUN, --seed and --quiet; ``model_class`` is the class
        of the run named on the command line (``None`` if none), for flags the model declares."""

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        """Do the app's work for the command line; returns the line to print (what was written where)."""
        raise NotImplementedError

    def report_figures(self, model: GenerativeModel, examples: Tensor, *, labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> list[tuple[str, Tensor | Image.Image, int, str]]:
        """Figures for the run's report: ``(title, images (N, *shape) in the data representation,
        images per row, caption)`` each, or ``(title, chart, 0, caption)`` with a picture drawn by the
        app (a PIL image: a plot), drawn on test ``examples`` (with their ``labels`` (N,) where the data
        has them); none by default."""
        return []

    def supports(self, model: GenerativeModel | type[GenerativeModel]) -> bool:
        have = capabilities(model)
        return self.requires <= have and (not self.requires_any or bool(have & self.requires_any))

    def needs(self) -> str:
        """What a model needs to run this app, in words (``"encode and decode"``, ``"classify or encode"``)."""
        parts = [" and ".join(sorted(self.requires))] if self.requires else []
        if self.requires_any:
            parts.append(" or ".join(sorted(self.requires_any)))
        return ", and ".join(parts) or "nothing"


APPS: dict[str, App] = {}


def register_app(cls: type[App]) -> type[App]:
    """Class decorator: make an app available as ``dgm NAME`` and in the report of every run whose
    model has the capabilities it requires."""
    APPS[cls.name] = cls()
    return cls


def apps_for(model: GenerativeModel | type[GenerativeModel]) -> list[App]:
    """The registered apps that ``model`` can run."""
    return [app for app in iter_apps() if app.supports(model)]


def iter_apps() -> list[App]:
    """Every registered app, the built-in ones included."""
    import dgm.apps.classify, dgm.apps.manipulate, dgm.apps.restoration  # noqa: F401  (registers the built-in apps)
    import dgm.apps.probe  # noqa: F401
    import dgm.apps.compress  # noqa: F401
    import dgm.apps.ood  # noqa: F401

    return list(APPS.values())


__all__ = ["APPS", "App", "apps_for", "iter_apps", "register_app"]
