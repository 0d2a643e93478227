"""The ``purer`` command line (purer/cli): help texts, ``config show``,
``config presets`` and one-line errors with exit status 2."""

from __future__ import annotations

import json
import sys

import click
import pytest
from click.testing import CliRunner

from purer import __version__
from purer.cli.main import build_cli, cli
from purer.config import preset_names
from purer.testing import run_purer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every sub-command of the built-in CLI (plugins may add more at run time)."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False, prog_name="purer")


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """``purer ARGS`` in-process through the real entry point (error handling included)."""
    code = run_purer(*args)
    out, err = capsys.readouterr()
    return code, out, err


def show(*args: str) -> dict:
    result = invoke("config", "show", *args)
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.output)


# --------------------------------------------------------------------- help
def test_root_help_lists_the_commands(purer_host):
    result = invoke("--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: purer [OPTIONS] COMMAND [ARGS]...")
    for name in cli.commands:
        assert f"  {name} " in result.output


def test_version():
    assert invoke("--version").output == f"purer, version {__version__}\n"


@pytest.mark.parametrize("path", command_paths(cli), ids=" ".join)
def test_every_sub_command_has_help(path, purer_host):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: purer {' '.join(path)} ")
    assert "-h, --help" in result.output


def test_listings_show_whole_summaries(purer_host):
    # click's default summary stops at "Alg." or 45 characters
    listing = " ".join(invoke("--help").output.split())
    assert "Meta-train a meta-model from a teacher zoo (PURER, Alg. 1)." in listing
    assert "baselines on the same tasks." in listing
    assert "..." not in listing.split("Commands:")[1]


def test_short_help_option(purer_host):
    assert invoke("config", "show", "-h").output == invoke("config", "show", "--help").output


def test_unknown_command_is_a_usage_error(purer_host, capsys):
    code, _, err = run_main(["frobnicate"], capsys)
    assert code == 2 and "No such command 'frobnicate'" in err


# --------------------------------------------------------------------- config show
def test_config_show_prints_the_resolved_defaults(purer_host):
    shown = show()
    # from the default preset (quickstart) ...
    assert (shown["train"]["steps"], shown["curriculum"]["start"]) == (200, 100)
    # ... and defaults no file mentions: the schema's and each plugin's own
    assert shown["curriculum"]["window"] == 6 and shown["curriculum"]["scale"] == 10.0
    deepinv = purer_host.get("inverter", "deepinv").Options()
    assert set(shown["inverter"]) - {"name"} <= set(type(deepinv).model_fields)
    assert shown["inverter"]["name"] == "deepinv" and shown["inverter"]["lr"] == deepinv.lr == 0.25
    assert shown["inversion"]["terms"] == {"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01}
    assert shown["meta"]["name"] == "maml" and shown["meta"]["inner_lr"] == 0.01
    assert (shown["train"]["way"], shown["train"]["query"], shown["seed"]) == (5, 15, 0)


def test_config_show_json(purer_host):
    result = invoke("config", "show", "--json", "--steps", "5")
    assert json.loads(result.output)["train"]["steps"] == 5


def test_config_show_precedence(tmp_path, purer_host):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nsteps = 11\nshot = 5\n")
    # a config file replaces the default preset
    from_file = show("--config", str(path))
    assert (from_file["train"]["steps"], from_file["curriculum"]["start"]) == (11, 4000)
    # preset < config file < CLI options < --set
    layered = show("--preset", "quickstart", "--config", str(path))
    assert (layered["train"]["steps"], layered["curriculum"]["start"]) == (11, 100)
    assert show("--config", str(path), "--steps", "12")["train"]["steps"] == 12
    assert show("--config", str(path), "--steps", "12", "--set", "train.steps=13")["train"]["steps"] == 13
    assert show("--preset", "paper-cifar-fs-5shot")["train"]["shot"] == 5


def test_choosing_a_plugin_on_the_command_line_drops_the_presets_options(purer_host):
    shown = show("--curriculum", "none")
    assert shown["curriculum"] == {"name": "none"}


def test_config_presets_lists_the_shipped_presets(purer_host):
    result = invoke("config", "presets")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    quickstart = next(line for line in lines if line.startswith("quickstart "))
    assert "synthetic-shapes" in quickstart  # a description, not just the name


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize("args, message", [
    (["--set", "train.steps=abc"], "error: train.steps: Input should be a valid integer"),
    (["--set", "curriculum.window=abc"], "error: curriculum.window: Input should be a valid integer"),
    (["--set", "curriculum.foo=1"], "error: curriculum.foo: unknown key; gradient-switch takes: "),
    (["--inverter", "nope"], "error: inverter.name: unknown inverter 'nope' (installed: deepinv"),
    (["--set", "train.steps"], "error: --set 'train.steps': expected section.key=value"),
    (["--preset", "nope"], "error: --preset: unknown preset 'nope'"),
    (["--device", "tpu"], "error: config: Value error, device must be auto"),
])
def test_config_errors_are_one_line_with_status_2(args, message, capsys, purer_host):
    code, out, err = run_main(["config", "show", *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_bad_inverter_value_is_one_line_with_status_2(capsys, purer_host):
    code, out, err = run_main(["config", "show", "--set", "inverter.lr=abc"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: inverter.lr: ") and err.count("\n") == 1, err
    assert "'abc'" in err


def test_missing_config_file_is_one_line(tmp_path, capsys, purer_host):
    code, _, err = run_main(["config", "show", "--config", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'none.toml'}: config file not found\n"
