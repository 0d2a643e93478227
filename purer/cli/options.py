"""Command-line options that set configuration keys, shared by the commands.

Each such option names the key it sets (:data:`RUN_OPTIONS`), and
:func:`options_layer` turns the options a user gave into one configuration
layer, so ``purer run``, ``purer config show`` and ``purer eval`` map their
options the same way: later layers and ``--set`` win, as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from purer.config import RunConfig, build_config, load_preset, load_toml

DEFAULT_PRESET = "quickstart"

# option -> the configuration key it sets
RUN_OPTIONS = {
    "data": "data.name", "root": "data.root", "zoo": "zoo.path", "inverter": "inverter.name",
    "curriculum": "curriculum.name", "meta": "meta.name", "init": "init.name",
    "calibrator": "calibrator.name", "steps": "train.steps", "shot": "train.shot",
    "way": "train.way", "seed": "seed", "device": "device", "out": "out", "name": "name",
}


def config_options(func: Callable) -> Callable:
    """--config/--preset/--set plus the most used component choices."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML run configuration (replaces the default preset)."),
        click.option("--preset", help=f"A shipped configuration (default: {DEFAULT_PRESET} "
                     "unless --config is given); see `purer config presets`."),
        click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one value; repeatable, e.g. --set train.steps=500."),
        click.option("--data", help="Dataset plugin, e.g. cifar-fs (see `purer plugins`)."),
        click.option("--root", help="Dataset root folder (data.root)."),
        click.option("--zoo", help="Teacher zoo folder (zoo.path)."),
        click.option("--inverter", help="Inverter plugin (inverter.name)."),
        click.option("--curriculum", help="Curriculum plugin (curriculum.name)."),
        click.option("--meta", help="Meta-learner plugin (meta.name)."),
        click.option("--init", help="Initialiser of the meta-model (init.name)."),
        click.option("--calibrator", help="Calibrator at meta-test (calibrator.name)."),
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


def options_layer(given: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, Any]:
    """The configuration layer that options ``given`` set (``None``: not given)."""
    layer: dict[str, Any] = {}
    for option, key in keys.items():
        value = given.get(option)
        if value is None:
            continue
        node = layer
        *sections, last = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return layer


def config_from_cli(kwargs: dict[str, Any]) -> RunConfig:
    """Merge preset/config file, CLI options and --set into a validated config."""
    from purer.plugins import get_host

    layers: list[dict[str, Any]] = []
    path, preset = kwargs.pop("config_path", None), kwargs.pop("preset", None)
    if preset or not path:
        layers.append(load_preset(preset or DEFAULT_PRESET))
    if path:
        layers.append(load_toml(path))
    layers.append(options_layer({k: v for k, v in kwargs.items() if v != ""}, RUN_OPTIONS))
    return build_config(*layers, assignments=tuple(kwargs.get("assignments") or ()), host=get_host())
