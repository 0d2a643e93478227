"""``purer zoo``: build a zoo of teachers, add your own, show what is in one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from purer.errors import ConfigError


def _csv(value: str | None, cast: type = str) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma-separated list of {cast.__name__}") from None


def _json_object(value: str | None, flag: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{flag}: expected a JSON object, e.g. '{{\"width\": 8}}'")
    return parsed


def register(cli: click.Group) -> None:
    @cli.group("zoo")
    def zoo() -> None:
        """Teacher zoos: folders of pre-trained classifiers with a zoo.json."""

    @zoo.command("build")
    @click.option("--data", default="synthetic-shapes", show_default=True,
                  help="Dataset plugin whose meta_train split the teachers learn.")
    @click.option("--root", help="Dataset root folder.")
    @click.option("--scenario", type=click.Choice(["ss", "sh", "mh"]),
                  help="ss: one architecture; sh: architecture drawn per teacher; "
                       "mh: dataset drawn per teacher as well.  [default: ss]")
    @click.option("--teachers", type=int, help="Number of teachers (disjoint: capped by the "
                  "number of class blocks).  [default: 13]")
    @click.option("--way", type=int, help="Classes per teacher.  [default: 5]")
    @click.option("--assign", type=click.Choice(["disjoint", "random"]),
                  help="disjoint: consecutive blocks of sorted class names; random: "
                       "classes drawn per teacher.  [default: disjoint]")
    @click.option("--arch", "archs", multiple=True, help="Architecture (timm name); repeatable. "
                  "[default: conv4 for ss, conv4 cifar_resnet10 cifar_resnet18 for sh/mh]")
    @click.option("--arch-kwargs", help='JSON, flat or per architecture, e.g. '
                  '\'{"conv4": {"width": 64}}\'.')
    @click.option("--extra-data", multiple=True, metavar="NAME[=ROOT]",
                  help="mh: another dataset to draw teachers from; repeatable.")
    @click.option("--epochs", type=int, help="[default: 60]")
    @click.option("--batch-size", type=int, help="[default: 128]")
    @click.option("--lr", type=float, help="[default: 0.01; Adam for conv4, SGD otherwise]")
    @click.option("--augment/--no-augment", default=None,
                  help="Random crop (pad 4) + horizontal flip.  [default: off]")
    @click.option("--seed", type=int, help="[default: 0]")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
    @click.option("--out", type=click.Path(file_okay=False),
                  help="Zoo folder.  [default: zoos/<data>-<scenario>]")
    @click.option("--nproc", type=click.IntRange(min=1), default=None,
                  help="Train on N processes of this machine (docs/distributed.md).")
    def build(data: str, root: str | None, archs: tuple[str, ...], arch_kwargs: str | None,
              extra_data: tuple[str, ...], device: str, out: str | None, nproc: int | None,
              **given: Any) -> None:
        """Train a zoo of teachers (method.md §1); an interrupted build resumes."""
        from purer.cli.launch import joined_world, relaunched

        if relaunched(nproc):
            return
        from purer.config import ZooBuildOptions
        from purer.zoo.build import build_zoo

        fields = {k: v for k, v in given.items() if v is not None}
        if archs:
            fields["arch"] = list(archs)
        if arch_kwargs:
            fields["arch_kwargs"] = _json_object(arch_kwargs, "--arch-kwargs")
        if extra_data:
            fields["extra_data"] = list(extra_data)
        try:
            options = ZooBuildOptions(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
        target = Path(out or f"zoos/{data}-{options.scenario}")
        # several processes under torchrun (docs/distributed.md)
        with joined_world(device, "the zoo build",
                          f"{options.model_dump_json()} {data} {root} {target}") as world:
            manifest = build_zoo(options, data, root, target, device, world=world)
        if world.is_main:
            click.echo(f"{target}: {len(manifest.teachers)} teachers")

    @zoo.command("add")
    @click.argument("zoo_path", metavar="ZOO", type=click.Path(file_okay=False))
    @click.option("--arch", required=True, help="Architecture of the checkpoint (timm name).")
    @click.option("--weights", required=True, type=click.Path(dir_okay=False, exists=True),
                  help=".safetensors, or a .pt/.pth state dict (loaded weights-only).")
    @click.option("--arch-kwargs", help="JSON keyword arguments of the architecture.")
    @click.option("--classes", help="Class names in output order, comma-separated.")
    @click.option("--class-ids", help="Global class ids in output order, comma-separated.")
    @click.option("--dataset", default="", help="Dataset the teacher was trained on.")
    @click.option("--name", help="Teacher name.  [default: the file's stem]")
    @click.option("--input-size", type=int, help="Input side in pixels.  [default: the "
                  "architecture's timm config]")
    @click.option("--mean", help="Normalisation mean, 3 comma-separated floats.")
    @click.option("--std", help="Normalisation std, 3 comma-separated floats.")
    def add(zoo_path: str, arch: str, weights: str, arch_kwargs: str | None, classes: str | None,
            class_ids: str | None, dataset: str, name: str | None, input_size: int | None,
            mean: str | None, std: str | None) -> None:
        """Register an existing checkpoint as a teacher (copied in as safetensors)."""
        from purer.zoo.add import add_teacher

        for flag, value in (("--mean", mean), ("--std", std)):
            if value is not None and len(_csv(value, float) or []) != 3:
                raise ConfigError(f"{flag}: expected 3 comma-separated floats, got {value!r}")
        entry = add_teacher(zoo_path, arch, weights, classes=_csv(classes),
                            class_ids=_csv(class_ids, int), dataset=dataset, name=name,
                            arch_kwargs=_json_object(arch_kwargs, "--arch-kwargs"),
                            input_size=input_size, mean=_csv(mean, float), std=_csv(std, float))
        click.echo(f"added teacher '{entry.name}' ({entry.arch}, {entry.num_classes} classes, "
                   f"input {entry.input_size}px) to {zoo_path}")

    @zoo.command("show")
    @click.argument("zoo_path", metavar="ZOO", type=click.Path(exists=True))
    @click.option("--json", "as_json", is_flag=True, help="Print zoo.json as validated.")
    def show(zoo_path: str, as_json: bool) -> None:
        """List a zoo's teachers: architecture, dataset, classes, held-out accuracy."""
        from purer.zoo.manifest import load_manifest

        manifest = load_manifest(zoo_path)
        if as_json:
            click.echo(manifest.model_dump_json(indent=2))
            return
        table = Table(title=f"{zoo_path}: {len(manifest.teachers)} teachers")
        for col in ("teacher", "arch", "dataset", "px", "classes", "held-out", "params"):
            numeric = col in ("px", "held-out", "params")
            table.add_column(col, justify="right" if numeric else "left", overflow="fold",
                             no_wrap=numeric or col == "teacher",
                             min_width=12 if col == "classes" else None)
        for t in manifest.teachers:
            acc = "-" if t.heldout_accuracy is None else f"{t.heldout_accuracy:.1%}"
            params = "-" if t.parameters is None else f"{t.parameters:,}"
            table.add_row(escape(t.name), escape(t.arch), escape(t.dataset or "-"),
                          str(t.input_size), escape(f"{t.num_classes}: {', '.join(t.class_names)}"), acc, params)
        Console().print(table)
