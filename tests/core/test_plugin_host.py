"""The plugin host (purer/plugins.py): discovery through real entry points,
registration of every hook, duplicate and disabled plugins, the one-line
errors of broken plugins, ``purer plugins --json`` and the example plugin."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

import purer
from purer.cli.main import build_cli
from purer.config import build_config
from purer.errors import ConfigError, PluginError
from purer.interfaces import (
    Calibrator,
    Curriculum,
    DatasetReader,
    Initializer,
    InversionContext,
    InversionTerm,
    Inverter,
    MetaLearner,
)
from purer.plugins import DISABLE_ENV, KINDS, PluginHost, get_host
from purer.pytest_plugin import unregister_plugin
from purer.types import InputSpace, Teacher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from conftest import REPO  # noqa: E402

EXAMPLE = REPO / "examples" / "purer-example-plugin"

# What the built-in plugins must provide, by kind.
BUILTIN_COMPONENTS = {
    "meta_learner": ["maml"],
    "inverter": ["deepinv"],
    "curriculum": ["gradient-switch", "none"],
    "calibrator": ["none"],
    "initializer": ["random", "average"],
}

# One row per hookspec that fills a registry: (hook, kind, base class).
REGISTRY_HOOKS = [
    ("register_inverters", "inverter", Inverter),
    ("register_inversion_terms", "inversion_term", InversionTerm),
    ("register_curricula", "curriculum", Curriculum),
    ("register_meta_learners", "meta_learner", MetaLearner),
    ("register_calibrators", "calibrator", Calibrator),
    ("register_datasets", "dataset", DatasetReader),
    ("register_initializers", "initializer", Initializer),
]


def builtin_entry_points() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["purer"]


def plugin_module(hook: str, body: Callable[..., Any], name: str = "fake_plugin") -> types.ModuleType:
    """A module-shaped inline plugin whose one hookimpl is ``body``."""
    module = types.ModuleType(name)
    body.__name__ = hook
    setattr(module, hook, purer.hookimpl(body))
    return module


def registering(hook: str, *pairs: tuple[str, Any]) -> types.ModuleType:
    def body(register):
        for name, obj in pairs:
            register(name, obj)
    return plugin_module(hook, body)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


class Never(Curriculum):
    def adversarial_scale(self, step: int) -> float:
        return 0.0

    def observe(self, step: int, accuracy: float) -> None:
        return None


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """Make installed distributions without pip: a ``*.dist-info`` folder with
    an ``entry_points.txt`` in a directory on ``sys.path``, which is all
    ``importlib.metadata`` looks at."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> None:
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[purer]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        for name, source in (modules or {}).items():
            (site / f"{name}.py").write_text(textwrap.dedent(source))
            created.append(name)
        importlib.invalidate_caches()

    yield make
    for name in created:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------- discovery
def test_builtins_are_discovered_through_entry_points(purer_host):
    declared = builtin_entry_points()
    for name, module in declared.items():
        info = purer_host.plugins[name]
        assert (info.distribution, info.version, info.module) == ("purer", purer.__version__, module)
        assert module.startswith("purer_plugins."), "built-ins must not install a top-level `plugins`"
    for kind, names in BUILTIN_COMPONENTS.items():
        for name in names:
            entry = purer_host.registries[kind][name]
            assert entry.distribution == "purer"
            assert purer_host.get(kind, name).name == name  # the host tells each class its name


def test_every_registry_has_a_hook_and_a_row_here():
    assert {kind for _, kind, _ in REGISTRY_HOOKS} | {"architecture"} == set(KINDS)
    for hook, kind, base in REGISTRY_HOOKS:
        assert (KINDS[kind].hook, KINDS[kind].base) == (hook, base)
    assert KINDS["architecture"].hook == "register_architectures"


@pytest.mark.parametrize("hook, kind, base", REGISTRY_HOOKS, ids=[h for h, _, _ in REGISTRY_HOOKS])
def test_each_registry_hook_registers_subclasses_only(hook, kind, base):
    subclass = type("Fake", (base,), {})
    host = PluginHost()
    host.register_plugin(registering(hook, ("fake", subclass)), "good", "good-dist", "1.0")
    assert host.get(kind, "fake") is subclass
    assert host.plugins["good"].registers == {kind: ["fake"]}

    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(registering(hook, ("bad", object)), "bad", "bad-dist")
    assert one_line(exc) == (f"plugin 'bad' (bad-dist): {kind.replace('_', ' ')} 'bad' must be a "
                             f"subclass of purer.api.{base.__name__}, got <class 'object'>")


def test_register_architectures_takes_any_callable(purer_host):
    def tiny(pretrained: bool = False, **kwargs):
        return torch.nn.Linear(2, 2)

    host = PluginHost()
    host.register_plugin(registering("register_architectures", ("tiny", tiny)), "archs")
    assert host.get("architecture", "tiny") is tiny
    with pytest.raises(PluginError, match=r"architecture 'three' must be callable, got 3"):
        PluginHost().register_plugin(registering("register_architectures", ("three", 3)), "bad")
    assert {"conv4", "cifar_resnet10", "cifar_resnet18"} <= set(purer_host.names("architecture"))


def test_register_commands_adds_sub_commands():
    def register_commands(cli):
        @cli.command("hello")
        def hello() -> None:
            click.echo("hello from a plugin")

    host = PluginHost()
    host.register_plugin(plugin_module("register_commands", register_commands), "greeter")

    @click.group()
    def root() -> None:
        pass

    host.add_commands(root)
    result = CliRunner().invoke(root, ["hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


def test_unknown_component_lists_the_installed_ones(purer_host):
    host = PluginHost()
    host.register_plugin(registering("register_curricula", ("b", Never), ("a", Never)), "ab")
    with pytest.raises(PluginError) as exc:
        host.get("curriculum", "nope")
    assert one_line(exc) == "unknown curriculum 'nope' (installed: a, b)"
    with pytest.raises(PluginError) as exc:
        purer_host.get("curriculum", "nope")
    assert one_line(exc).startswith("unknown curriculum 'nope' (installed: gradient-switch, ")


# --------------------------------------------------------------------- duplicates
def test_duplicate_component_names_both_plugins():
    host = PluginHost()
    host.register_plugin(registering("register_curricula", ("twin", Never)), "first", "dist-a")
    with pytest.raises(PluginError) as exc:
        host.register_plugin(registering("register_curricula", ("twin", Never)), "second", "dist-b")
    assert one_line(exc) == ("curriculum 'twin' is registered twice: by plugin 'first' (dist-a) "
                             "and by plugin 'second' (dist-b)")


def test_duplicate_of_a_builtin_names_the_builtin(register_plugin):
    with pytest.raises(PluginError) as exc:
        register_plugin(registering("register_curricula", ("gradient-switch", Never)), "mine")
    message = one_line(exc)
    assert "plugin 'curricula' (purer)" in message and "plugin 'mine' ((inline))" in message


def test_duplicate_plugin_name_is_an_error():
    host = PluginHost()
    host.register_plugin(types.ModuleType("a"), "same", "dist-a")
    with pytest.raises(PluginError) as exc:
        host.register_plugin(types.ModuleType("b"), "same", "dist-b")
    assert one_line(exc) == ("plugin 'same' (dist-b): a plugin of that name is already loaded "
                             "from dist-a")


def test_duplicates_across_installed_distributions(fake_site):
    source = """
        import purer
        from purer.interfaces import Curriculum

        class Twin(Curriculum):
            def adversarial_scale(self, step): return 0.0
            def observe(self, step, accuracy): pass

        @purer.hookimpl
        def register_curricula(register):
            register("twin", Twin)
    """
    fake_site("twin-a", {"twin_a": "twin_a_mod"}, {"twin_a_mod": source})
    fake_site("twin-b", {"twin_b": "twin_b_mod"}, {"twin_b_mod": source})
    with pytest.raises(PluginError) as exc:
        PluginHost().load_entry_points(disabled=set())
    assert one_line(exc) == ("curriculum 'twin' is registered twice: by plugin 'twin_a' (twin-a) "
                             "and by plugin 'twin_b' (twin-b)")


# --------------------------------------------------------------------- disabling
def test_disable_by_entry_point_name_from_the_environment(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, " learners , curricula")
    host = PluginHost()
    host.load_entry_points()
    assert "learners" not in host.plugins and "curricula" not in host.plugins
    assert host.names("meta_learner") == [] and host.names("curriculum") == []
    assert "inversion" in host.plugins
    with pytest.raises(PluginError, match=r"unknown meta learner 'maml' \(installed: none installed\)"):
        host.get("meta_learner", "maml")


def test_get_host_honours_the_environment(monkeypatch, purer_host):
    monkeypatch.setenv(DISABLE_ENV, "learners")
    get_host.cache_clear()
    assert "learners" not in get_host().plugins
    assert "learners" in purer_host.plugins  # built before the variable was set


def test_disable_a_broken_distribution_by_name(fake_site):
    fake_site("broken-dist", {"broken": "broken_mod"}, {"broken_mod": "raise RuntimeError('boom')"})
    with pytest.raises(PluginError):
        PluginHost().load_entry_points(disabled=set())
    for disabled in ({"broken-dist"}, {"broken"}):
        host = PluginHost()
        host.load_entry_points(disabled=disabled)
        assert "broken" not in host.plugins and "learners" in host.plugins


def test_suite_disables_third_party_distributions_only(fake_site):
    import conftest

    fake_site("third-party", {"builtin_lookalike": "lookalike_mod"})
    found = conftest.third_party_distributions()
    assert "third-party" in found and "purer" not in found


@pytest.mark.installed_plugins
def test_installed_plugins_marker_restores_the_users_setting():
    import conftest

    assert os.environ.get(DISABLE_ENV) == conftest._USER_DISABLED


# --------------------------------------------------------------------- broken plugins
def test_import_error_names_plugin_distribution_and_fault(fake_site):
    fake_site("broken-dist", {"broken": "broken_mod"},
              {"broken_mod": "raise RuntimeError('boom at import')"})
    with pytest.raises(PluginError) as exc:
        PluginHost().load_entry_points(disabled=set())
    assert one_line(exc) == ("plugin 'broken' (broken-dist): cannot import broken_mod: "
                             "RuntimeError: boom at import")


def test_missing_module_names_plugin_and_module(fake_site):
    fake_site("ghost-dist", {"ghost": "no_such_module_for_purer"})
    with pytest.raises(PluginError) as exc:
        PluginHost().load_entry_points(disabled=set())
    assert one_line(exc) == ("plugin 'ghost' (ghost-dist): cannot import no_such_module_for_purer: "
                             "ModuleNotFoundError: No module named 'no_such_module_for_purer'")


def test_broken_plugin_fails_the_cli_with_one_line(fake_site, purer_host, capsys):
    from purer.cli.main import main

    fake_site("broken-dist", {"broken": "broken_mod"}, {"broken_mod": "raise ImportError('x')"})
    get_host.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: plugin 'broken' (broken-dist): cannot import "
                                       "broken_mod: ImportError: x\n")


def test_misspelt_hook_is_caught_by_check_pending():
    module = plugin_module("register_curriculum", lambda register: None)  # missing an "a"
    host = PluginHost()
    with pytest.raises(PluginError) as exc:
        host.register_plugin(module, "typo", "typo-dist")
    message = one_line(exc)
    assert message.startswith("plugin 'typo' (typo-dist): invalid hook implementation: ")
    assert "unknown hook 'register_curriculum'" in message
    assert host.pm.get_plugin("typo") is None and "typo" not in host.plugins


def test_unknown_hookimpl_argument_names_the_argument():
    module = plugin_module("register_curricula", lambda register, extra: None)
    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(module, "args", "args-dist")
    message = one_line(exc)
    assert message.startswith("plugin 'args' (args-dist): invalid hook implementation:")
    assert "register_curricula" in message and "extra" in message


def test_unknown_hookimpl_argument_is_rejected():
    module = plugin_module("register_curricula", lambda register, extra: None)
    host = PluginHost()
    with pytest.raises(PluginError) as exc:
        host.register_plugin(module, "args", "args-dist")
    assert one_line(exc).startswith("plugin 'args' (args-dist): invalid hook implementation: ")
    assert host.pm.get_plugin("args") is None


def test_returning_a_value_instead_of_registering():
    module = plugin_module("register_curricula", lambda register: [("never", Never)])
    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(module, "returns", "returns-dist")
    assert one_line(exc) == ("plugin 'returns' (returns-dist): register_curricula must call "
                             "register(name, obj) and return None, not list")


def test_registering_an_instance_instead_of_a_class():
    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(registering("register_curricula", ("never", Never())), "inst")
    assert one_line(exc).startswith("plugin 'inst' ((inline)): curriculum 'never' must be a "
                                    "subclass of purer.api.Curriculum, got <")


def test_registering_without_a_name():
    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(registering("register_curricula", ("", Never)), "anon")
    assert one_line(exc) == ("plugin 'anon' ((inline)): register_curricula registered a "
                             "curriculum without a name")


def test_hook_that_raises_names_plugin_hook_and_error():
    def body(register):
        raise ValueError("cannot find my weights")

    with pytest.raises(PluginError) as exc:
        PluginHost().register_plugin(plugin_module("register_curricula", body), "raiser", "r-dist")
    assert one_line(exc) == ("plugin 'raiser' (r-dist): register_curricula failed: "
                             "ValueError: cannot find my weights")


# --------------------------------------------------------------------- purer plugins
def test_plugins_json_lists_builtins(purer_host):
    result = CliRunner().invoke(build_cli(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["plugin"]: row for row in json.loads(result.output)}
    assert set(builtin_entry_points()) <= set(rows)
    assert rows["learners"]["module"] == "purer_plugins.learners"
    assert (rows["learners"]["distribution"], rows["learners"]["version"]) == ("purer", purer.__version__)
    assert "maml" in rows["learners"]["registers"]["meta_learner"]
    registered = {(kind, name) for row in rows.values() if row["distribution"] == "purer"
                  for kind, names in row["registers"].items() for name in names}
    assert {(kind, name) for kind, names in BUILTIN_COMPONENTS.items() for name in names} <= registered
    assert "deepinv" in rows["inversion"]["registers"]["inverter"]


def test_plugins_table_lists_builtins(purer_host):
    result = CliRunner().invoke(build_cli(), ["plugins"])
    assert result.exit_code == 0, result.output
    for name in ("maml", "deepinv", "curricula", "gradient-switch", "purer"):
        assert name in result.output


def test_inline_plugin_shows_in_plugins_json(purer_host, register_plugin):
    register_plugin(registering("register_curricula", ("never", Never)), "inline-never")
    rows = json.loads(CliRunner().invoke(build_cli(), ["plugins", "--json"]).output)
    assert {"plugin": "inline-never", "distribution": "(inline)", "version": "",
            "module": "fake_plugin", "registers": {"curriculum": ["never"]}} in rows


# --------------------------------------------------------------------- purer.pytest_plugin
def test_register_plugin_fixture(register_plugin):
    class Plugin:
        @purer.hookimpl
        def register_curricula(self, register):
            register("never", Never)

    info = register_plugin(Plugin())
    assert info.registers == {"curriculum": ["never"]}
    assert get_host().create("curriculum", "never").adversarial_scale(3) == 0.0


def test_unregister_plugin_restores_the_host():
    host = PluginHost()
    host.register_plugin(registering("register_curricula", ("keep", Never)), "keeper")
    before = {k: dict(v) for k, v in host.registries.items()}
    host.register_plugin(registering("register_curricula", ("drop", Never)), "dropper")
    unregister_plugin(host, "dropper")
    assert host.registries == before and list(host.plugins) == ["keeper"]
    assert host.pm.get_plugin("dropper") is None


def test_fixtures_isolate_tests_from_each_other(pytester):
    pytester.makeconftest('pytest_plugins = ["purer.pytest_plugin"]')
    pytester.makepyfile(textwrap.dedent("""
        import purer
        from purer.config import RunConfig
        from purer.interfaces import Curriculum
        from purer.plugins import get_host

        class Never(Curriculum):
            def adversarial_scale(self, step): return 0.0
            def observe(self, step, accuracy): pass

        class Plugin:
            @purer.hookimpl
            def register_curricula(self, register):
                register("never", Never)

        SEEN = []

        def test_1_register(register_plugin):
            register_plugin(Plugin())
            assert "never" in get_host().names("curriculum")

        def test_2_gone_again():
            assert "never" not in get_host().names("curriculum")
            assert "inline" not in get_host().plugins

        def test_3_fresh_host(purer_host):
            assert purer_host is get_host()
            SEEN.append(purer_host)
            purer_host.registries["curriculum"].clear()

        def test_4_host_rebuilt(purer_host):
            assert purer_host is not SEEN[0]
            assert "gradient-switch" in get_host().names("curriculum")

        def test_5_run_dir(run_dir, tmp_path):
            assert run_dir.path == tmp_path / "run"
            assert (run_dir.path / "config.toml").is_file()
            assert run_dir.load_config() == RunConfig(out=str(tmp_path), name="run")
    """))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


# --------------------------------------------------------------------- the example plugin
def example_env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    disabled = [n for n in env.get(DISABLE_ENV, "").split(",")
                if n.strip() and n.strip() not in ("example", "purer-example-plugin")]
    env[DISABLE_ENV] = ",".join(disabled)
    return env


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The example plugin installed for real by pip into a throw-away folder
    (from a copy, so the build leaves nothing in the repository)."""
    root = tmp_path_factory.mktemp("example")
    source, site = root / "src", root / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return site


@pytest.fixture
def example_host(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    monkeypatch.setenv(DISABLE_ENV, example_env(example_site)[DISABLE_ENV])
    get_host.cache_clear()
    yield get_host()
    get_host.cache_clear()
    sys.modules.pop("purer_example_plugin", None)


def test_example_plugin_metadata():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "purer-example-plugin"
    assert project["entry-points"]["purer"] == {"example": "purer_example_plugin"}
    assert "purer" in project["dependencies"]
    assert (EXAMPLE / "purer_example_plugin.py").is_file() and (EXAMPLE / "README.md").is_file()


@pytest.mark.slow  # a fresh interpreter imports torch and timm: 5-15 s
def test_example_plugin_is_listed_by_the_cli(example_site):
    done = subprocess.run([sys.executable, "-m", "purer.cli.main", "plugins", "--json"],
                          capture_output=True, text=True, env=example_env(example_site),
                          cwd=example_site, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {row["plugin"]: row for row in json.loads(done.stdout)}
    assert rows["example"] == {
        "plugin": "example", "distribution": "purer-example-plugin", "version": "0.1.0",
        "module": "purer_example_plugin",
        "registers": {"inversion_term": ["saturation"], "curriculum": ["every-k"]},
    }
    assert rows["learners"]["distribution"] == "purer"


def test_example_curriculum_through_the_host(example_host):
    assert example_host.plugins["example"].distribution == "purer-example-plugin"
    curriculum = example_host.create("curriculum", "every-k", {"k": 3})
    assert [curriculum.adversarial_scale(s) for s in range(7)] == [0, 0, 0, 10.0, 0, 0, 10.0]
    assert example_host.create("curriculum", "every-k").options.k == 100

    config = build_config({"curriculum": {"name": "every-k", "k": 5, "scale": 2.0}},
                          host=example_host)
    assert config.curriculum.option_dict() == {"k": 5, "scale": 2.0}
    with pytest.raises(ConfigError) as exc:
        build_config({"curriculum": {"name": "every-k", "kk": 5}}, host=example_host)
    assert one_line(exc) == "curriculum.kk: unknown key; every-k takes: k, scale"
    with pytest.raises(ConfigError, match=r"^curriculum\.k: Input should be greater than or equal to 1"):
        build_config({"curriculum": {"name": "every-k", "k": 0}}, host=example_host)


def test_example_saturation_term(example_host):
    space = InputSpace(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    teacher = Teacher("t", torch.nn.Identity(), [0], ["c"], space)
    term = example_host.create("inversion_term", "saturation")

    def loss(pixels: torch.Tensor) -> float:
        images = (pixels - 0.5) / 0.25  # normalised in the teacher's space
        ctx = InversionContext(teacher, images, images, torch.zeros(1, 1), torch.zeros(1), [])
        return float(term(ctx))

    inside = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    assert loss(inside) == 0.0
    outside = inside.clone()
    outside[0, 0, 0, 0] = 1.5  # 0.5 above the valid range
    assert loss(outside) == pytest.approx(0.25 / outside.numel())
