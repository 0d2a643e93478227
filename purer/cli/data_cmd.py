"""``purer data``: look at a dataset (splits, counts, a picture).

Dataset plugins add their own sub-commands to this group (e.g. ``download``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from purer.errors import DataError, SplitMissing

if TYPE_CHECKING:
    from purer.types import SplitData

# Where `purer data show` puts its picture unless --out says otherwise: beside
# the run directories (runs/), not loose in the working directory.
PICTURES = "runs/data"


def register(cli: click.Group) -> None:
    @cli.group("data")
    def data() -> None:
        """Inspect datasets (plugins may add commands here, e.g. download)."""

    @data.command("show")
    @click.argument("name")
    @click.option("--root", help="Dataset folder (default: $PURER_DATA_DIR/<name>).")
    @click.option("--split", "picture_split", default="meta_train", show_default=True,
                  type=click.Choice(["meta_train", "meta_val", "meta_test"]),
                  help="Split shown in the picture.")
    @click.option("--out", type=click.Path(dir_okay=False),
                  help=f"PNG grid to write (default: {PICTURES}/<name>-<split>.png).")
    @click.option("--per-class", default=4, show_default=True, type=click.IntRange(1, 64),
                  help="Images per class in the picture.")
    @click.option("--classes", default=10, show_default=True, type=click.IntRange(1, 1000),
                  help="Classes in the picture (the first ones of the split).")
    @click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                  help="A reader option, e.g. --set images_per_class=50; repeatable.")
    def show(name: str, root: str | None, picture_split: str, out: str | None, per_class: int,
             classes: int, assignments: tuple[str, ...]) -> None:
        """Print the splits of dataset NAME and save a grid of its images.

        A split the folder does not hold is listed as missing; a split that is
        there but cannot be read fails the command (exit status 2), after the
        table and the picture.
        """
        from purer.data import load_split

        options = _reader_options(assignments)
        splits: dict[str, SplitData | DataError] = {}
        for split in ("meta_train", "meta_val", "meta_test"):
            try:
                splits[split] = load_split(name, split, root=root, **options)
            except DataError as exc:  # e.g. a folder holding only some splits
                splits[split] = exc
        Console().print(split_table(name, splits))
        shown = splits[picture_split]
        if isinstance(shown, DataError):
            raise shown
        path = Path(out or Path(PICTURES) / f"{name}-{picture_split}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_examples(shown, path, per_class, classes)
        click.echo(f"picture of {picture_split}: {path.resolve()}")
        broken = [(split, exc) for split, exc in splits.items()
                  if isinstance(exc, DataError) and not isinstance(exc, SplitMissing)]
        if broken:
            more = f" (and {len(broken) - 1} more split(s))" if len(broken) > 1 else ""
            raise DataError(f"{name} {broken[0][0]}: {broken[0][1]}{more}")



def _reader_options(assignments: tuple[str, ...]) -> dict[str, Any]:
    from purer.config import parse_assignment

    options: dict[str, Any] = {}
    for text in assignments:
        path, value = parse_assignment(text)
        options[".".join(path)] = value
    return options


def split_table(name: str, splits: dict[str, SplitData | DataError]) -> Table:
    """One row per split: classes, images, size and the first class names
    (or why the split could not be read)."""
    import torch

    table = Table(title=f"dataset {name}")
    for col in ("split", "classes", "images", "per class", "size", "first classes"):
        table.add_column(col, justify="right" if col in ("classes", "images") else "left")
    for split, data in splits.items():
        if isinstance(data, DataError):
            table.add_row(split, "-", "-", "-", "-", f"[red]{data}[/red]")
            continue
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        per_class = (f"{int(counts.min())}" if int(counts.min()) == int(counts.max())
                     else f"{int(counts.min())}-{int(counts.max())}")
        first = ", ".join(data.class_names[:4]) + (", ..." if data.num_classes > 4 else "")
        table.add_row(split, str(data.num_classes), f"{len(data):,}", per_class,
                      f"{data.images.shape[-1]}x{data.images.shape[-2]}", first)
    return table


def save_examples(data: SplitData, path: Path, per_class: int, classes: int) -> Path:
    """The first ``per_class`` images of each of the first ``classes`` classes,
    one class per row."""
    import torch

    from purer.data.episodes import class_table
    from purer.pictures import save_grid

    order, starts, sizes = class_table(data)
    rows = []
    for c in range(min(classes, data.num_classes)):
        take = order[starts[c]: starts[c] + min(per_class, int(sizes[c]))]
        row = data.images[take].float() / 255.0
        pad = torch.ones(per_class - row.shape[0], *row.shape[1:])
        rows.append(torch.cat([row, pad]))
    return save_grid(torch.cat(rows), path, nrow=per_class, scale=max(1, 96 // data.space.size))
