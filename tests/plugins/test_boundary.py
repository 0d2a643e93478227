"""The wall between core and plugins, checked on the source.

* A module under ``plugins/`` imports nothing of purer's but :mod:`purer.api`
  (and ``purer`` itself), so a third-party plugin can do whatever a built-in
  does.
* Core code never decides by a plugin's name: no registered name of a
  built-in component is compared against, kept in a set, or imported by
  name. What core needs to know about a component is an attribute of its
  interface (``Initializer.needs_teachers``, ``Calibrator.passthrough``, ...).
  Configuration defaults may name the built-ins: that is data, not logic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

from purer.plugins import PluginHost

CORE = REPO / "purer"
PLUGINS = REPO / "plugins"
PUBLIC = {"purer", "purer.api"}


def sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def purer_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "purer" or n.startswith("purer.")]
    return found


@pytest.mark.parametrize("path", sources(PLUGINS), ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_only_the_public_api(path):
    outside = [f"line {line}: {name}" for line, name in purer_imports(path) if name not in PUBLIC]
    assert not outside, f"{path.relative_to(REPO)} reaches past purer.api: {outside}"


def builtin_names() -> set[str]:
    host = PluginHost()
    host.load_entry_points(disabled=set())
    return {name for registry in host.registries.values() for name, entry in registry.items()
            if entry.distribution == "purer"}


def decisions_by_name(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """String constants that are plugin names where logic is decided: compared
    against, members of a set literal, or a module path into the plugins."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Constant) and operand.value in names:
                    found.append((node.lineno, f"compares with {operand.value!r}"))
        elif isinstance(node, ast.Set):
            found += [(node.lineno, f"set holds {e.value!r}") for e in node.elts
                      if isinstance(e, ast.Constant) and e.value in names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("purer_plugins"):
            found.append((node.lineno, f"names the module {node.value!r}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and module.startswith("purer_plugins"):
                found.append((node.lineno, f"imports {module}"))
    return found


def test_the_check_finds_what_it_looks_for():
    tree = ast.parse('if name == "maml": pass\nFREE = {"random"}\n'
                     'import importlib\nimportlib.import_module("purer_plugins.x")\n')
    assert [line for line, _ in decisions_by_name(tree, {"maml", "random"})] == [1, 2, 4]


@pytest.mark.parametrize("path", sources(CORE), ids=lambda p: str(p.relative_to(REPO)))
def test_core_never_decides_by_a_plugin_name(path):
    found = decisions_by_name(ast.parse(path.read_text()), builtin_names())
    assert not found, f"{path.relative_to(REPO)}: {found}"
