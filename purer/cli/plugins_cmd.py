"""``purer plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from purer.plugins import get_host


def register(cli: click.Group) -> None:
    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def plugins(as_json: bool) -> None:
        """List installed plugins and the components each registers."""
        host = get_host()
        rows = [
            {"plugin": p.name, "distribution": p.distribution, "version": p.version,
             "module": p.module, "registers": p.registers}
            for p in sorted(host.plugins.values(), key=lambda p: p.name)
        ]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        table = Table(title="purer plugins")
        for col in ("plugin", "distribution", "registers"):
            table.add_column(col)
        for row in rows:
            what = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
            table.add_row(row["plugin"], f"{row['distribution']} {row['version']}", what or "-")
        Console().print(table)
