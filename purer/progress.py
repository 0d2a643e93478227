"""Progress for long loops: a rich bar on a terminal, plain lines elsewhere.

Off a terminal (CI logs, ``nohup``, notebooks) nothing is wrapped at a
made-up width: a line is as long as its text, so log readers and ``grep``
see whole lines. Every progress line, on a terminal and off it, says how
long the loop has run and about how long it has left, since the loops it
reports (zoo build, meta-training, evaluation with ICFIL) take minutes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

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
if not console.is_terminal:
    # rich wraps at 80 columns when it cannot ask a terminal for its width;
    # a log has no width, so long lines stay whole.
    console.soft_wrap = True


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``), as rich's time columns write it."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _PlainProgress:
    """Line-per-update fallback for logs and CI (at most one line every few
    seconds per task, and always the line that completes a task)."""

    def __init__(self, every_s: float = 5.0, stream: TextIO | None = None,
                 now: Any = time.monotonic) -> None:
        self.every_s = every_s
        self.stream = stream
        self.now = now
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                           "fields": fields, "start": self.now(), "start_completed": completed,
                           "last": None, "first": None}
        return tid

    def reset(self, tid: int, total: float | None = None, completed: float = 0,
              **fields: Any) -> None:
        """Restart a task's count and clock (rich's ``Progress.reset``), e.g. the
        epochs of the next teacher."""
        task = self.tasks[tid]
        task.update(completed=completed, start=self.now(), start_completed=completed,
                    last=None, first=None)
        if total is not None:
            task["total"] = total
        task["fields"].update(fields)

    def update(self, tid: int, advance: float = 0, completed: float | None = None,
               total: float | None = None, **fields: Any) -> None:
        task = self.tasks[tid]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        if total is not None:
            task["total"] = total
        task["fields"].update(fields)
        done = task["total"] is not None and task["completed"] >= task["total"]
        now = self.now()
        if task["first"] is None and task["completed"] > task["start_completed"]:
            task["first"] = (now, task["completed"])
        if console.quiet:  # e.g. a rank other than 0 of a run across processes
            return
        if done or task["last"] is None or now - task["last"] >= self.every_s:
            task["last"] = now
            print(self.line(task, now), file=self.stream or sys.stderr, flush=True)

    def line(self, task: dict[str, Any], now: float) -> str:
        """``description: done/total elapsed m:ss eta m:ss | status`` (other fields as k=v)."""
        elapsed = now - task["start"]
        total, done = task["total"], task["completed"]
        progressed = done - task["start_completed"]
        if total is None:
            eta = "?"
        elif done >= total:
            eta = "0:00"
        elif task["first"] is not None and done > task["first"][1]:
            # the first update also paid the warm-up (compilation, caches): pace since it
            since, at = task["first"]
            eta = clock((now - since) / (done - at) * (total - done))
        elif progressed > 0:
            eta = clock(elapsed / progressed * (total - done))
        else:
            eta = "?"
        fields = task["fields"]
        status = Text.from_markup(str(fields.get("status", ""))).plain
        extra = " ".join(f"{k}={Text.from_markup(str(v)).plain}" for k, v in fields.items()
                         if k not in ("status", "description"))
        text = f"{task['description']}: {done:.0f}/{'?' if total is None else f'{total:.0f}'} "
        text += f"elapsed {clock(elapsed)} eta {eta}"
        return text + "".join(f" | {part}" for part in (status, extra) if part)

    def advance(self, tid: int, amount: float = 1) -> None:
        self.update(tid, advance=amount)


@contextmanager
def progress(status_field: bool = True) -> Iterator[Progress | _PlainProgress]:
    """Yield an object with ``add_task`` / ``update`` / ``advance``."""
    if not console.is_terminal:
        yield _PlainProgress()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    if status_field:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar
