"""Imports go one way (docs/architecture.md): a module imports only from its own layer or the
layers below it, whether at the top of the file or inside a function, so a cycle fails here."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dgm"

#: the layers, bottom first; a module's layer is that of its longest matching prefix
LAYERS = [
    ["dgm.errors", "dgm.settings", "dgm.io", "dgm.__version__"],
    ["dgm.data", "dgm.nn"],
    ["dgm.models"],
    ["dgm.train"],
    ["dgm.eval"],
    ["dgm.run"],
    ["dgm.apps"],
    ["dgm.report"],
    ["dgm.cli"],
    ["dgm"],  # the package itself: the public facade over everything
]


def layer(module: str) -> int:
    best, rank = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """``(imported dgm module, line)`` of every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "dgm"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dgm":
            if node.module == "dgm":  # from dgm import run / __version__: each name is a module of dgm
                found += [(f"dgm.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def test_every_module_is_in_a_layer():
    for path in SRC.rglob("*.py"):
        layer(module_name(path))


def test_imports_only_go_down():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        source = module_name(path)
        for target, line in imports(path):
            if layer(target) > layer(source):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} {source} imports {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)
