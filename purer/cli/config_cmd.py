"""``purer config``: show the resolved configuration, list presets."""

from __future__ import annotations

import click

from purer.cli.options import config_from_cli, config_options
from purer.config import preset_description, preset_names, to_toml


def register(cli: click.Group) -> None:
    @cli.group("config")
    def config() -> None:
        """Inspect run configurations."""

    @config.command("show")
    @config_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
    def show(as_json: bool, **kwargs) -> None:
        """Print the configuration a `purer run` with these options would use."""
        resolved = config_from_cli(kwargs)
        click.echo(resolved.model_dump_json(indent=2) if as_json else to_toml(resolved))

    @config.command("presets")
    def presets() -> None:
        """List the shipped presets with what each runs (use with --preset NAME)."""
        names = preset_names()
        width = max(map(len, names), default=0)
        for name in names:
            click.echo(f"{name:<{width}}  {preset_description(name)}")
