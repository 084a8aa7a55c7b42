"""Command-line options shared by ``dgm`` and the apps' subcommands: typed counts, files to write,
and the flags of the samplers a model declares (:class:`dgm.models.Sampler`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dgm.errors import DgmError
from dgm.settings import NonNegativeFloat, NonNegativeInt, PositiveInt, coerce, type_hints


def argument_type(hint: Any, name: str = "value"):  # noqa: ANN201
    """An argparse type for a value of the setting type ``hint`` (``PositiveInt``, an option field's
    annotation, ...): converted and range-checked by :func:`dgm.settings.coerce`, the one place for
    those rules, with its message as argparse's one-line error."""
    def parse(text: str):  # noqa: ANN202
        try:
            return coerce(text, hint, name)
        except DgmError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{name} ")) from None

    return parse


POSITIVE = argument_type(PositiveInt)
NON_NEGATIVE = argument_type(NonNegativeInt)
NON_NEGATIVE_FLOAT = argument_type(NonNegativeFloat)


def output_path(path: str) -> Path:
    """A file the user asked us to write: its folder is created if missing (a path through an existing
    file, or a folder we may not write, ends in one line from :func:`main`)."""
    out = Path(path)
    if out.is_dir():
        raise DgmError(f"{out} is a folder: name a file to write, e.g. {out / 'out.png'}")
    for folder in out.parents:
        if folder.exists():
            if not folder.is_dir():
                raise DgmError(f"cannot write {out}: {folder} is a file, not a folder")
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def add_sampler_flags(p: argparse.ArgumentParser, cls, method: str = "sample") -> None:  # noqa: ANN001
    """The flags of the samplers that model class ``cls`` declares (:class:`dgm.models.Sampler`):
    ``--sampler`` when it has several, and one flag per option field, typed and range-checked like
    any setting; only the options ``cls.<method>`` takes."""
    import inspect

    if cls is None or not cls.samplers:
        return
    accepted = inspect.signature(getattr(cls, method)).parameters
    names = [s.name for s in cls.samplers]
    if "sampler" in accepted:
        p.add_argument("--sampler", choices=names, help="; ".join(f"{s.name}: {s.description}" for s in cls.samplers)
                       + " (default: the model's setting)")
    seen: set[str] = set()
    for sampler in cls.samplers:
        hints = type_hints(sampler.options) if sampler.options is not None else {}
        for f in sampler.option_fields():
            if f.name in seen or f.name not in accepted:
                continue
            seen.add(f.name)
            flag = "--" + f.name.replace("_", "-")
            takes = [s.name for s in cls.samplers if f.name in {g.name for g in s.option_fields()}]
            p.add_argument(flag, type=argument_type(hints[f.name], flag),
                           help=f"{f.metadata.get('help', '')} ({', '.join(takes)})")


def sampler_options(model, args: argparse.Namespace, method=None) -> dict:  # noqa: ANN001
    """The options given on the command line for the model's samplers, as keyword arguments of
    ``method`` (default ``model.sample``): ``sampler=`` when one was named, and the option fields
    given. An option that the sampler in use does not take is an error, not silently ignored (the
    sampler in use: the one named, else for ``sample`` the model's default; another method that
    picks its own default checks the options itself)."""
    import inspect

    method = method or model.sample
    declared = {s.name: s for s in type(model).samplers}
    if not declared:
        return {}
    named = getattr(args, "sampler", None)
    name = named or (model.default_sampler if method == model.sample else None)
    accepted = inspect.signature(method).parameters
    options = {"sampler": named} if named else {}
    for f in {f.name: f for s in declared.values() for f in s.option_fields()}.values():
        value = getattr(args, f.name, None)
        if value is None or f.name not in accepted:
            continue
        takes = [s for s, sampler in declared.items() if f.name in {g.name for g in sampler.option_fields()}]
        if name is not None and name not in takes:
            raise DgmError(f"--{f.name.replace('_', '-')} is an option of the {' and '.join(takes)} sampler, and "
                           f"this runs {name}: add --sampler {takes[0]}")
        options[f.name] = value
    return options
