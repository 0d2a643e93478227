"""Results as rows per (method, setting), and the tables made from them.

A run's ``results.json`` holds the rows plus what a reader needs to trust
them: which split chose the checkpoint, which split scored it, and the
task list's seed and size (every row of one file was scored on the same
tasks). ``results.md`` is the same as a paper-style table: methods down,
settings ("5-way 1-shot") across, ``mean ± ci95`` in each cell.
``purer table`` merges the files of several runs into one such table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from purer.rundir import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
HEADER_KEYS = ("dataset", "selection_split", "eval_split", "task_seed", "tasks", "query")


@dataclass
class ResultRow:
    """One method scored in one setting."""

    method: str
    way: int
    shot: int
    accuracy: float  # %, NaN when the method could not run (see note)
    ci95: float
    n_tasks: int
    seconds: float = 0.0
    seconds_per_task: float = 0.0
    note: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        return f"{self.way}-way {self.shot}-shot"

    @property
    def ok(self) -> bool:
        return not math.isnan(self.accuracy)

    def cell(self) -> str:
        return f"{self.accuracy:.2f} ± {self.ci95:.2f}" if self.ok else "n/a"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["setting"] = self.setting
        if not self.ok:
            data["accuracy"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if data.get("accuracy") is None:
            data["accuracy"] = float("nan")
        return cls(**data)


def _settings(rows: Iterable[ResultRow]) -> list[str]:
    keys = sorted({(r.way, r.shot) for r in rows})
    return [f"{w}-way {s}-shot" for w, s in keys]


def _methods(rows: Iterable[ResultRow]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r.method not in seen:
            seen.append(r.method)
    return seen


def grid(rows: Sequence[ResultRow]) -> tuple[list[str], list[str], dict[tuple[str, str], ResultRow]]:
    """(methods in first-seen order, settings sorted, cell lookup)."""
    return _methods(rows), _settings(rows), {(r.method, r.setting): r for r in rows}


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """Methods down, settings across, ``mean ± ci95`` (%) in each cell."""
    methods, settings, cells = grid(rows)
    lines = ["| method | " + " | ".join(settings) + " |",
             "|---|" + "---|" * len(settings)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cells[(m, s)].cell() if (m, s) in cells else ""
                                              for s in settings) + " |")
    return "\n".join(lines)


def rich_table(rows: Sequence[ResultRow], title: str = "") -> Table:
    methods, settings, cells = grid(rows)
    table = Table(title=title or None)
    table.add_column("method", style="bold")
    for s in settings:
        table.add_column(s, justify="right")
    table.add_column("s/task", justify="right", style="dim")
    for m in methods:
        mine = [cells[(m, s)] for s in settings if (m, s) in cells]
        per_task = max((r.seconds_per_task for r in mine), default=0.0)
        table.add_row(escape(m), *[cells[(m, s)].cell() if (m, s) in cells else "" for s in settings],
                      f"{per_task:.3f}")
    return table


def print_table(rows: Sequence[ResultRow], title: str = "") -> None:
    from purer.progress import console

    console.print(rich_table(rows, title))
    for r in rows:
        if r.note:
            console.print(f"[yellow]note:[/yellow] {escape(r.method)} ({r.setting}): {escape(r.note)}",
                          highlight=False)


# ---------------------------------------------------------------------- files
def results_document(rows: Sequence[ResultRow], *, dataset: str, selection_split: str,
                     eval_split: str, task_seed: int, tasks: int, query: int,
                     **extra: Any) -> dict[str, Any]:
    """What results.json holds: the protocol header, then the rows."""
    return {"dataset": dataset, "selection_split": selection_split, "eval_split": eval_split,
            "task_seed": task_seed, "tasks": tasks, "query": query, **extra,
            "rows": [r.to_dict() for r in rows]}


def rows_of(document: dict[str, Any]) -> list[ResultRow]:
    return [ResultRow.from_dict(r) for r in document.get("rows", [])]


def merge_documents(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new``, keeping ``old``'s rows for (method, setting) pairs ``new`` lacks,
    when both were scored under the same protocol (same header)."""
    if not old or any(old.get(k) != new.get(k) for k in HEADER_KEYS):
        return new
    fresh = {(r["method"], r["setting"]) for r in new["rows"]}
    kept = [r for r in old.get("rows", []) if (r["method"], r.get("setting")) not in fresh]
    return {**new, "rows": kept + new["rows"]}


def render_markdown(document: dict[str, Any], title: str = "Meta-test results") -> str:
    rows = rows_of(document)
    lines = [f"# {title}", "",
             f"- dataset: {document.get('dataset', '?')}",
             f"- evaluation split: {document.get('eval_split', '?')}",
             f"- checkpoint selected on: {document.get('selection_split', '?')}"
             + (f" (step {document['checkpoint']['step']})"
                if isinstance(document.get("checkpoint"), dict) and "step" in document["checkpoint"]
                else ""),
             f"- task list: {document.get('tasks', '?')} tasks per setting, "
             f"{document.get('query', '?')} queries per class, seed {document.get('task_seed', '?')}; "
             "every method is scored on the same tasks",
             "- cells: mean accuracy ± 95 % interval (1.96 * std / sqrt(tasks)), in %", "",
             markdown_table(rows), ""]
    notes = [f"- {r.method} ({r.setting}): {r.note}" for r in rows if r.note]
    if notes:
        lines += ["Notes:", *notes, ""]
    timing = [f"| {r.method} | {r.setting} | {r.seconds:.1f} | {r.seconds_per_task * 1000:.1f} |"
              for r in rows if r.ok]
    if timing:
        lines += ["| method | setting | seconds | ms per task |", "|---|---|---|---|", *timing, ""]
    return "\n".join(lines)


def write_results(folder: str | Path, document: dict[str, Any], merge: bool = True) -> Path:
    """Write results.json and results.md into ``folder`` (atomically)."""
    folder = Path(folder)
    path = folder / RESULTS_JSON
    if merge and path.is_file():
        document = merge_documents(json.loads(path.read_text()), document)
    atomic_write_text(path, json.dumps(document, indent=2))
    atomic_write_text(folder / RESULTS_MD, render_markdown(document))
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json, given the file or the run directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        from purer.errors import ConfigError

        raise ConfigError(f"{path}: no results (run `purer eval` on the run first)")
    return json.loads(path.read_text())


def merged_table(named: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One markdown table from several runs' results: methods down, settings across.

    A method scored by more than one run in the same setting gets one row per
    run (``method (run)``), so no number is silently dropped.
    """
    rows: list[ResultRow] = []
    by_cell: dict[tuple[str, str], list[str]] = {}
    for name, doc in named:
        for r in rows_of(doc):
            by_cell.setdefault((r.method, r.setting), []).append(name)
    clashing = {m for (m, _), runs in by_cell.items() if len(runs) > 1}
    for name, doc in named:
        for r in rows_of(doc):
            if r.method in clashing:
                r.method = f"{r.method} ({name})"
            rows.append(r)
    lines = [markdown_table(rows), ""]
    for name, doc in named:
        lines.append(f"- {name}: {doc.get('dataset', '?')} {doc.get('eval_split', '?')}, "
                     f"{doc.get('tasks', '?')} tasks, seed {doc.get('task_seed', '?')}, "
                     f"selected on {doc.get('selection_split', '?')}")
    return "\n".join(lines) + "\n"
