"""The benchmark suite runs: every entry of ``python -m benchmarks`` with its
smallest settings (the module's ``SMOKE`` arguments) prints a timed result.

Numbers are not checked (speed is measured by the benchmarks, never by
tests); what is checked is that each benchmark still builds what it times
from the current code and reports it.
"""

from __future__ import annotations

import ast
import importlib
import json
import math

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def suite(monkeypatch):
    """``benchmarks.__main__`` importable however pytest was started."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("benchmarks.__main__")


def entries() -> list[str]:
    """The benchmark modules, found as the suite finds them (a top-level ``main``)."""
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        tree = ast.parse(path.read_text())
        if not path.name.startswith("_") and any(
                isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.append(path.stem.replace("_", "-"))
    return found


def json_rows(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def timings(row: dict) -> list[float]:
    return [v for k, v in row.items() if k.endswith(("_s", "_ms")) and isinstance(v, (int, float))]


def test_the_listing_names_every_benchmark(suite, capsys):
    assert {"step", "evaluation", "zoo-build", "speed", "episodes", "gpu"} <= set(entries())
    assert suite.main([]) == 0
    listed = capsys.readouterr().out
    for name in entries():
        assert f"  {name} " in listed, name


def test_an_unknown_benchmark_is_one_line_and_status_2(suite, capsys):
    assert suite.main(["nope"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "error: unknown benchmark 'nope' (available: ")


def test_a_bad_option_is_one_line_naming_the_key(suite, capsys):
    assert suite.main(["evaluation", "--set", "meta.inner_stepz=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: meta.inner_stepz: unknown key; maml takes: " + ", ".join(
            importlib.import_module("purer_plugins.learners").MAMLOptions.model_fields))


def test_no_benchmark_defaults_to_a_path_outside_the_repository():
    for path in [*BENCHMARKS.glob("*.py"), *(REPO / "experiments").glob("*.py")]:
        text = path.read_text()
        assert "shared/data" not in text and "../" not in text, path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", entries())
def test_each_benchmark_runs_with_its_smallest_settings(name, suite, capsys):
    module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
    smoke = getattr(module, "SMOKE", None)
    assert smoke is not None, f"benchmarks/{name.replace('-', '_')}.py: define SMOKE, the " \
                              "arguments of its smallest run"
    assert suite.main([name, *smoke]) == 0
    rows = [r for r in json_rows(capsys.readouterr().out) if r.get("benchmark") == name]
    assert rows, f"{name} printed no result"
    timed = [t for row in rows for t in timings(row)]
    assert timed and all(math.isfinite(t) and t >= 0 for t in timed), rows
    assert any(t > 0 for t in timed)
