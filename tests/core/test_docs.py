"""Meta-tests that keep the plugin surface tested and documented (after
datasette's tests/test_docs.py): every hookspec has a section in
docs/plugins.md and a test, every interface is documented, the generated
configuration reference is current, and the README's set-up is the two
commands it should be."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

import purer.interfaces
from purer import hookspecs
from purer.interfaces import Component

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from conftest import REPO  # noqa: E402

DOCS = REPO / "docs"
TESTS = REPO / "tests"

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(fn, "purer_spec"))
INTERFACES = sorted(name for name, cls in inspect.getmembers(purer.interfaces, inspect.isclass)
                    if cls.__module__ == purer.interfaces.__name__ and issubclass(cls, Component)
                    and cls is not Component)
HELPERS = sorted(name for name, cls in inspect.getmembers(purer.interfaces, inspect.isclass)
                 if cls.__module__ == purer.interfaces.__name__ and name not in INTERFACES)


def headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines()
            if re.match(r"#{1,6} ", line)]


def test_the_lists_are_not_empty():
    assert "register_curricula" in HOOKS and "register_commands" in HOOKS and len(HOOKS) == 9
    assert {"Inverter", "InversionTerm", "Curriculum", "MetaLearner", "Calibrator", "Initializer",
            "DatasetReader"} == set(INTERFACES)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_plugins_md(hook):
    assert any(hook in heading for heading in headings(DOCS / "plugins.md")), (
        f"docs/plugins.md needs a section (a '### {hook}' heading) for the hook {hook}")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_its_own_test(hook):
    wanted = re.compile(rf"^def test_hook_{hook}\b", re.M)
    tests = [p for p in TESTS.rglob("test_*.py") if p.resolve() != Path(__file__).resolve()]
    assert any(wanted.search(p.read_text()) for p in tests), (
        f"no test under tests/ is named test_hook_{hook}")


@pytest.mark.parametrize("name", INTERFACES)
def test_every_interface_has_a_section_in_interfaces_md(name):
    assert any(re.search(rf"\b{name}\b", h) for h in headings(DOCS / "interfaces.md")), (
        f"docs/interfaces.md needs a '## {name}' section")


@pytest.mark.parametrize("name", HELPERS)
def test_every_helper_class_is_mentioned_in_interfaces_md(name):
    assert re.search(rf"\b{name}\b", (DOCS / "interfaces.md").read_text())


def test_interfaces_md_maps_both_algorithms():
    text = (DOCS / "interfaces.md").read_text()
    assert "Alg. 1" in text and "Alg. 2" in text
    for method in ("adversarial_scale", "observe", "bank", "step", "meta_step", "outer_loss",
                   "adapt", "predict", "initialize", "load"):
        assert f"`{method}(" in text, method


def test_plugins_md_documents_the_fixtures_and_the_switch():
    text = (DOCS / "plugins.md").read_text()
    for word in ("purer.pytest_plugin", "purer_host", "register_plugin", "run_dir",
                 "PURER_DISABLE_PLUGINS", "[project.entry-points.purer]", "class Options",
                 "examples/purer-example-plugin"):
        assert word in text or word.replace("class Options", "Options = ") in text, word


def test_configuration_reference_is_generated_and_current():
    spec = importlib.util.spec_from_file_location("gen_config_reference",
                                                  DOCS / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (DOCS / "configuration.md").read_text()
    assert module.splice(current, module.generate()) == current, (
        "docs/configuration.md is stale: run python docs/gen_config_reference.py --write")


def test_configuration_md_states_the_precedence():
    text = (DOCS / "configuration.md").read_text()
    section = text.split("## Precedence", 1)[1].split("\n## ", 1)[0]
    places = [section.find(word) for word in ("defaults", "--preset", "--config",
                                               "command-line options", "--set")]
    assert -1 not in places and places == sorted(places), places


def fenced_blocks(text: str) -> list[list[str]]:
    return [block.strip("\n").splitlines()
            for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)]


@pytest.mark.parametrize("doc", ["plugins.md", "interfaces.md", "configuration.md"])
def test_python_and_toml_examples_parse(doc):
    text = (DOCS / doc).read_text()
    for i, block in enumerate(re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)):
        compile(block, f"{doc} python block {i}", "exec")
    for block in re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M):
        tomllib.loads(block)


def test_readme_set_up_is_install_then_pytest():
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    commands = [[line.strip().removeprefix("$ ") for line in block
                 if line.strip() and not line.strip().startswith("#")]
                for block in fenced_blocks(readme.read_text())]
    assert ['pip install -e ".[dev]"', "pytest"] in commands, (
        'README.md needs a fenced block with exactly: pip install -e ".[dev]" and pytest')
