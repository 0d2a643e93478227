"""Entry point of the ``purer`` command: the root group and error handling."""

from __future__ import annotations

import importlib
import sys

import click

from purer import __version__
from purer.errors import PurerError
from purer.plugins import get_host
from purer.runtime import quiet_warnings, tune_allocator

# Modules that each define ``register(cli)``; plugins add more via ``register_commands``.
COMMAND_MODULES = ("plugins_cmd", "config_cmd", "data_cmd", "zoo_cmd", "run_cmd", "eval_cmd",
                   "reproduce_cmd")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="purer")
def cli() -> None:
    """purer: data-free meta-learning from a zoo of pre-trained classifiers.

    Typical session: `purer zoo build` (or bring your own teachers with
    `purer zoo add`), `purer run` to meta-train with ECI, `purer eval` to
    score the val-selected checkpoint on meta-test tasks.
    """


for _name in COMMAND_MODULES:
    importlib.import_module(f"purer.cli.{_name}").register(cli)


def whole_summaries(group: click.Group) -> None:
    """Give every command of ``group`` (and its sub-groups) the first paragraph
    of its help as the one-line summary of listings: click's default cuts it
    at 45 characters or at the first full stop, which is often mid-phrase
    ("Alg. 1", "e.g.")."""
    for command in group.commands.values():
        if command.short_help is None and command.help:
            command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
        if isinstance(command, click.Group):
            whole_summaries(command)


def build_cli() -> click.Group:
    """The root group with plugin commands attached (plugins load here, once)."""
    if not getattr(cli, "_plugins_added", False):
        get_host().add_commands(cli)
        whole_summaries(cli)
        cli._plugins_added = True  # type: ignore[attr-defined]
    return cli


def _rank() -> str:
    """``rank R: `` in a process of a multi-process run (its errors say which)."""
    import os

    return f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def main(argv: list[str] | None = None) -> None:
    from purer.cli.launch import ARGS

    ARGS[:] = sys.argv[1:] if argv is None else argv  # --nproc starts this command again
    tune_allocator()
    quiet_warnings()
    try:
        build_cli().main(args=argv, prog_name="purer", standalone_mode=False)
    except PurerError as exc:
        from purer.cli.launch import record_failure

        record_failure(exc)
        click.echo(f"error: {_rank()}{exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the machine's fault (full disk, permissions), not a bug: one line
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {_rank()}{where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
