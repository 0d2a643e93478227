"""Options shared by commands that build a run configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from purer.config import RunConfig, build_config, load_preset, load_toml
from purer.plugins import get_host

DEFAULT_PRESET = "quickstart"


def config_options(func: Callable) -> Callable:
    """--config/--preset/--set plus the most used component choices."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML run configuration (replaces the default preset)."),
        click.option("--preset", help=f"A shipped configuration (default: {DEFAULT_PRESET} "
                     "unless --config is given); see `purer config presets`."),
        click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one value; repeatable, e.g. --set train.steps=500."),
        click.option("--data", help="Dataset plugin (e.g. synthetic-shapes, cifar-fs)."),
        click.option("--root", help="Dataset root folder (data.root)."),
        click.option("--zoo", help="Teacher zoo folder (zoo.path)."),
        click.option("--inverter", help="Inverter plugin (deepinv)."),
        click.option("--curriculum", help="Curriculum plugin (gradient-switch, none)."),
        click.option("--meta", help="Meta-learner plugin (maml)."),
        click.option("--init", help="Initialiser of the meta-model (random, average)."),
        click.option("--calibrator", help="Calibrator at meta-test (none, icfil)."),
        click.option("--steps", type=int, help="Outer steps (train.steps)."),
        click.option("--shot", type=int, help="Shots per class (train.shot)."),
        click.option("--way", type=int, help="Classes per episode (train.way)."),
        click.option("--seed", type=int, help="Seed of everything."),
        click.option("--device", help="auto, cpu, cuda, cuda:N."),
        click.option("--out", help="Parent folder of run directories (default runs/)."),
        click.option("--name", help="Run directory name (default <time>-<id>)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_cli(kwargs: dict[str, Any]) -> RunConfig:
    """Merge preset/config file, CLI options and --set into a validated config."""
    layers: list[dict[str, Any]] = []
    path, preset = kwargs.pop("config_path", None), kwargs.pop("preset", None)
    if preset or not path:
        layers.append(load_preset(preset or DEFAULT_PRESET))
    if path:
        layers.append(load_toml(path))
    cli_layer: dict[str, Any] = {}
    for section in ("data", "inverter", "curriculum", "meta", "init", "calibrator"):
        if kwargs.get(section):
            cli_layer[section] = {"name": kwargs[section]}
    if kwargs.get("root"):
        cli_layer.setdefault("data", {})["root"] = kwargs["root"]
    if kwargs.get("zoo"):
        cli_layer["zoo"] = {"path": kwargs["zoo"]}
    train = {k: kwargs[k] for k in ("steps", "shot", "way") if kwargs.get(k) is not None}
    if train:
        cli_layer["train"] = train
    for key in ("seed", "device", "out", "name"):
        if kwargs.get(key) is not None:
            cli_layer[key] = kwargs[key]
    layers.append(cli_layer)
    return build_config(*layers, assignments=tuple(kwargs.get("assignments") or ()), host=get_host())
