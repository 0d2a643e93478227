"""purer's layers, checked on the import graph (docs/layout.md).

Each module of ``purer/`` belongs to one layer; a module may use its own
layer and those below it, never one above:

    foundation < contract < data, zoo, api < evaluation < engine < pipeline < front

Every import counts: at the top of a module, inside a function, under
``TYPE_CHECKING``, and the lazy ones named as strings (``purer.api``'s table,
``importlib.import_module("purer.x")``). A new module must be given a layer
here, so the rule is decided when the module is written, not found out later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "purer"

# layer -> module names or packages (a package covers its submodules)
LAYERS: dict[str, list[str]] = {
    # plain tensor code and process-wide helpers: nothing of purer's above them
    "foundation": ["purer", "purer.errors", "purer.hookspecs", "purer.types", "purer.kernels",
                   "purer.parallel", "purer.runtime", "purer.progress", "purer.cache",
                   "purer.pictures", "purer.distributed"],
    # what components are and how they are configured, found and built
    "contract": ["purer.interfaces", "purer.inversion", "purer.config", "purer.plugins",
                 "purer.models", "purer.rundir", "purer.presets"],
    # inputs: datasets and episodes, teacher zoos; the public plugin API above them
    "inputs": ["purer.data", "purer.zoo", "purer.api"],
    "evaluation": ["purer.evaluation"],
    "engine": ["purer.engine"],
    "pipeline": ["purer.pipeline"],
    # what users and tests touch: the command line and the testing helpers
    "front": ["purer.cli", "purer.testing", "purer.pytest_plugin", "purer.__main__"],
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer_of(module: str) -> str | None:
    """The layer of ``module``: that of the longest listed name covering it."""
    best, found = -1, None
    for layer, names in LAYERS.items():
        for name in names:
            covers = module == name or (module.startswith(name + ".") and name != "purer")
            if covers and len(name) > best:
                best, found = len(name), layer
    return found


def references(source: str, importer: str) -> list[tuple[int, str]]:
    """(line, purer module) of everything ``source`` imports or names for a lazy import."""
    found = []
    package = importer if MODULES.get(importer, Path()).name == "__init__.py" else \
        importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:  # `from purer import hookspecs` imports purer.hookspecs
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else module))
        elif isinstance(node, ast.Constant) and node.value in MODULES:  # a lazy import by name
            found.append((node.lineno, node.value))
    return sorted((line, m) for line, m in found if m == "purer" or m.startswith("purer."))


def upward(importer: str, source: str) -> list[str]:
    mine = RANK[layer_of(importer)]
    return [f"line {line}: {target} ({layer_of(target)})"
            for line, target in references(source, importer)
            if layer_of(target) is not None and RANK[layer_of(target)] > mine]


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"give these modules a layer in tests/core/test_layering.py: {missing}"


def test_the_check_sees_every_kind_of_import():
    source = ("import purer.engine.trainer\n"
              "def later():\n    from purer.pipeline import build\n"
              "from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from purer.cli import main\n"
              "LAZY = {'x': 'purer.zoo.load'}\n"
              "from purer.types import Teacher\n")
    assert upward("purer.data.episodes", source) == [
        "line 1: purer.engine.trainer (engine)", "line 3: purer.pipeline.build (pipeline)",
        "line 6: purer.cli.main (front)"]
    assert [m for _, m in references(source, "purer.data.episodes")][3:] == [
        "purer.zoo.load", "purer.types"]
    assert references("from . import checkpoint\n", "purer.engine.trainer") == [
        (1, "purer.engine.checkpoint")]
    assert layer_of("purer.kernels.losses") == "foundation" and layer_of("purer.api") == "inputs"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    found = upward(module, MODULES[module].read_text())
    assert not found, f"{module} ({layer_of(module)}) imports from a higher layer: {found}"
