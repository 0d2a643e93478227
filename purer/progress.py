"""Progress for long loops: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class _PlainProgress:
    """Line-per-update fallback for logs and CI (at most one line every few seconds)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.tasks: dict[int, dict] = {}
        self.last = 0.0

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, **fields}
        return tid

    def update(self, tid: int, advance: float = 0, completed: float | None = None, **fields) -> None:
        task = self.tasks[tid]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        task.update(fields)
        done = task["total"] is not None and task["completed"] >= task["total"]
        now = time.monotonic()
        if console.quiet:  # e.g. a rank other than 0 of a run across processes
            return
        if done or now - self.last >= self.every_s:
            self.last = now
            extra = " ".join(f"{k}={Text.from_markup(str(v)).plain}" for k, v in fields.items()
                             if k != "description")
            print(f"{task['description']}: {task['completed']:.0f}/{task['total'] or '?'} {extra}",
                  file=sys.stderr, flush=True)

    def advance(self, tid: int, amount: float = 1) -> None:
        self.update(tid, advance=amount)


@contextmanager
def progress(status_field: bool = True) -> Iterator[Progress | _PlainProgress]:
    """Yield an object with ``add_task`` / ``update`` / ``advance``."""
    if not console.is_terminal:
        yield _PlainProgress()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    if status_field:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar
