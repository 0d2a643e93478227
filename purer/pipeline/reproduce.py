"""Reproduce one of the paper's tables at a chosen scale, beside the paper's numbers.

A table is a fixed set of runs (``purer run`` configurations made from the
table's preset), the ICFIL scores of some of them (``purer eval --calibrator
icfil``), and rows that pick one method's numbers out of one run's
``results.json``. This module decides the runs, resolves and writes their
configurations, and renders the table; ``purer reproduce`` executes the
steps (in this process, or side by side in child processes) and times each.

Every run of a table shares one zoo and one seeded task list per shot
(``eval.seed``, ``eval.tasks``), so the rows compare methods, not draws. The
paper's numbers are data (``purer/presets/paper.json``); the curriculum's
start is scaled with the steps as the paper's 4,000 of 60,000.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from purer.config import RunConfig, build_config, load_preset
from purer.errors import ConfigError
from purer.evaluation.results import RESULTS_JSON
from purer.rundir import atomic_write_text

PAPER_START, PAPER_STEPS = 4000, 60000
ICFIL = "icfil"  # the calibrator of the paper's full method (a configuration value)


@dataclass(frozen=True)
class Row:
    """One line of a table: ``method``'s row in the ``variant`` run's results."""

    label: str
    variant: str  # "eci" (with the preset's curriculum) or "ei" (no curriculum)
    method: str  # the row's name in results.json, e.g. "random", "purer+icfil"
    paper: str  # key in paper.json


@dataclass(frozen=True)
class TableSpec:
    """What one of the paper's tables needs: runs, baselines, rows."""

    name: str
    preset: str  # format string of {data} and {shot}
    baselines: tuple[str, ...]  # scored in the "eci" run
    icfil: tuple[str, ...]  # variants also scored with ICFIL
    rows: tuple[Row, ...]
    paper_data: str | None = None  # paper.json's dataset key (None: --data)
    unrun: tuple[tuple[str, str, str], ...] = ()  # (label, paper key, why not measured)

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.variant for r in self.rows))


_BASELINE_ROWS = (Row("Random", "eci", "random", "random"),)
_PURER_ROWS = (
    Row("PURER EI (no curriculum)", "ei", "purer", "ei"),
    Row("PURER ECI", "eci", "purer", "eci"),
    Row("PURER ECI + ICFIL (the paper's PURER)", "eci", "purer+icfil", "purer"),
)
TABLES: dict[str, TableSpec] = {
    "ss": TableSpec("ss", "paper-{data}-{shot}shot", ("random", "average", "ota"), ("eci",),
                    _BASELINE_ROWS + (Row("Average", "eci", "average", "average"),
                                      Row("OTA", "eci", "ota", "ota")) + _PURER_ROWS,
                    unrun=(("DRO", "dro", "not implemented (no public code)"),)),
    "sh": TableSpec("sh", "paper-{data}-sh", ("random",), ("eci",), _BASELINE_ROWS + _PURER_ROWS),
    "mh": TableSpec("mh", "paper-{data}-mh", ("random",), ("eci",), _BASELINE_ROWS + _PURER_ROWS,
                    paper_data="pooled"),
    "ablation": TableSpec("ablation", "paper-{data}-{shot}shot", (), ("eci", "ei"), (
        Row("EI", "ei", "purer", "ei"),
        Row("EI + curriculum (ECI)", "eci", "purer", "eci"),
        Row("EI + ICFIL", "ei", "purer+icfil", "ei+icfil"),
        Row("ECI + ICFIL (PURER)", "eci", "purer+icfil", "purer"),
    )),
}


def paper_numbers() -> dict[str, Any]:
    """The paper's tables as shipped in ``purer/presets/paper.json``."""
    return json.loads(resources.files("purer.presets").joinpath("paper.json").read_text())


def paper_value(table: str, data: str, shot: int, key: str) -> float | None:
    spec = TABLES[table]
    part = paper_numbers().get(table, {}).get(spec.paper_data or data, {})
    value = part.get(str(shot), {}).get(key)
    return None if value is None else float(value)


@dataclass
class ReproduceOptions:
    """The command's options; ``None`` keeps the preset's value."""

    table: str
    data: str
    out: Path
    root: str | None = None
    zoo: Path | None = None
    shots: tuple[int, ...] = (1, 5)
    steps: int | None = None
    zoo_epochs: int | None = None
    tasks: int = 600
    val_tasks: int | None = None
    val_points: int = 10
    preset: str | None = None  # replaces the table's preset (e.g. a tiny one for tests)
    extra_root: str | None = None  # MH: the other dataset's folder
    assignments: tuple[str, ...] = ()  # extra --set for every run and the zoo

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ConfigError(f"--table: unknown table '{self.table}' (choose from {', '.join(TABLES)})")
        if not self.shots:
            raise ConfigError("--shot: give at least one shot")


@dataclass
class Job:
    """One ``purer run`` of the table and what is scored on it afterwards."""

    name: str
    shot: int
    variant: str
    config: RunConfig
    icfil: bool

    @property
    def folder(self) -> Path:
        return Path(self.config.out) / self.name


@dataclass
class Plan:
    options: ReproduceOptions
    zoo: Path
    zoo_config: RunConfig  # the zoo section every run shares
    jobs: list[Job] = field(default_factory=list)


def _preset_name(options: ReproduceOptions, shot: int) -> str:
    return options.preset or TABLES[options.table].preset.format(data=options.data, shot=shot)


def _extra_data(items: Sequence[str], default_root: str | None) -> list[str]:
    """``NAME`` entries given a root: the preset's names with ``--extra-root``, or
    the folder named after the dataset beside ``--root``."""
    out = []
    for item in items:
        name, _, root = item.partition("=")
        if not root and default_root:
            root = default_root
        out.append(f"{name}={root}" if root else name)
    return out


def run_config(options: ReproduceOptions, shot: int, variant: str, host: Any = None) -> RunConfig:
    """The resolved configuration of one run of the table."""
    preset = load_preset(_preset_name(options, shot))
    steps = options.steps if options.steps is not None else preset.get("train", {}).get("steps", 60000)
    every = max(1, steps // max(1, options.val_points))
    layer: dict[str, Any] = {
        "data": {"name": options.data, **({"root": options.root} if options.root else {})},
        "train": {"steps": steps, "shot": shot, "val_every": every, "checkpoint_every": every,
                  "image_every": max(1, steps)},
        "eval": {"tasks": options.tasks, "shots": [shot]},
    }
    if preset.get("data", {}).get("name") not in (None, options.data):
        raise ConfigError(f"--data: preset '{_preset_name(options, shot)}' is made for "
                          f"'{preset['data']['name']}', not '{options.data}'")
    if options.val_tasks is not None:
        layer["train"]["val_tasks"] = options.val_tasks
    if options.zoo_epochs is not None:
        layer["zoo"] = {"build": {"epochs": options.zoo_epochs}}
    for section in ("zoo", "eval"):
        extra = (preset.get(section, {}).get("build", {}) if section == "zoo"
                 else preset.get(section, {})).get("extra_data")
        if extra:
            default_root = options.extra_root
            if default_root is None and options.root and len(extra) == 1:
                sibling = Path(options.root).parent / extra[0].partition("=")[0]
                default_root = str(sibling) if sibling.is_dir() else None
            items = _extra_data(extra, default_root)
            if section == "zoo":
                layer.setdefault("zoo", {}).setdefault("build", {})["extra_data"] = items
            else:
                layer["eval"]["extra_data"] = items
    spec = TABLES[options.table]
    assignments: list[str] = []
    if variant == "eci":
        layer["eval"]["baselines"] = list(spec.baselines)
        start = preset.get("curriculum", {}).get("start")
        if start is not None and options.steps is not None:
            assignments.append(f"curriculum.start={max(1, round(steps * start / PAPER_STEPS))}")
    else:
        layer["eval"]["baselines"] = []
        assignments.append("curriculum.name=none")
    assignments += list(options.assignments)
    from purer.plugins import get_host

    return build_config(preset, layer, assignments=tuple(assignments), host=host or get_host())


def make_plan(options: ReproduceOptions) -> Plan:
    """The zoo and the runs of the table, each configuration resolved."""
    spec = TABLES[options.table]
    first = run_config(options, options.shots[0], spec.variants[0])
    scenario = first.zoo.build.scenario
    zoo = options.zoo or (options.out / f"zoo-{options.data}-{scenario}")
    plan = Plan(options, Path(zoo), first)
    for shot in options.shots:
        for variant in spec.variants:
            config = run_config(options, shot, variant)
            if config.zoo.build != first.zoo.build and not first.zoo.path:
                raise ConfigError(f"presets of table {spec.name} disagree on zoo.build between shots")
            config.zoo.path = str(Path(zoo).resolve())
            config.out = str(options.out.resolve())
            name = f"{options.data}-{spec.name}-{shot}shot-{variant}-{config.train.steps}"
            config.name = name
            plan.jobs.append(Job(name, shot, variant, config, variant in spec.icfil))
    return plan


def write_configs(plan: Plan) -> dict[str, Path]:
    """Each run's configuration as a TOML file under ``<out>/configs``."""
    from purer.config import to_toml

    folder = plan.options.out / "configs"
    paths = {}
    for job in plan.jobs:
        path = folder / f"{job.name}.toml"
        atomic_write_text(path, to_toml(job.config))
        paths[job.name] = path
    return paths


def read_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / RESULTS_JSON
    return json.loads(path.read_text()).get("rows", []) if path.is_file() else []


def has_methods(folder: Path, methods: Sequence[str], shot: int) -> bool:
    got = {r["method"] for r in read_rows(folder) if r.get("shot") == shot}
    return all(m in got for m in methods)


def needed_methods(plan: Plan, job: Job) -> list[str]:
    """The result rows the table reads from ``job``'s run."""
    return [r.method for r in TABLES[plan.options.table].rows
            if r.variant == job.variant and r.method != f"purer+{ICFIL}"] or ["purer"]


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    if row.get("accuracy") is None or (isinstance(row["accuracy"], float) and math.isnan(row["accuracy"])):
        return "n/a" + (f" ({row['note']})" if row.get("note") else "")
    return f"{row['accuracy']:.2f} ± {row['ci95']:.2f}"


def _find(rows: list[dict[str, Any]], method: str, shot: int) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("method") == method and r.get("shot") == shot), None)


def render(plan: Plan, log: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The markdown table (measured beside the paper, then the wall time of
    each part) and the JSON document holding the same."""
    options, spec = plan.options, TABLES[plan.options.table]
    rows_of = {(j.shot, j.variant): read_rows(j.folder) for j in plan.jobs}
    datasets: list[str] = []  # MH: the per-dataset rows, in the order of the results
    for rows in rows_of.values():
        for r in rows:
            name = r.get("extras", {}).get("dataset")
            if name and name not in datasets:
                datasets.append(name)
    shots = list(options.shots)
    cfg = plan.jobs[0].config
    source = paper_numbers().get(spec.name, {}).get("source", "")
    lines = [f"# Table {spec.name}: {options.data}" + (" (+ " + ", ".join(d for d in datasets if d != options.data) + ")"
                                                        if datasets else ""), "",
             f"- {cfg.train.way}-way, {cfg.train.steps} outer steps (paper: {PAPER_STEPS}), zoo "
             f"{plan.zoo} ({cfg.zoo.build.scenario}, {cfg.zoo.build.epochs} epochs), "
             f"{options.tasks} test tasks per shot (seed {cfg.eval.seed}), checkpoint selected on meta-val",
             f"- paper: {source}; cells: mean ± 95 % interval, %", "",
             "| method | " + " | ".join(f"{s}-shot (ours) | {s}-shot (paper)" for s in shots) + " |",
             "|---|" + "---|---|" * len(shots)]
    document_rows = []

    def add(label: str, variant: str | None, method: str, paper_key: str | None, why: str = "") -> None:
        cells = []
        for shot in shots:
            found = _find(rows_of.get((shot, variant), []), method, shot) if variant else None
            paper = paper_value(spec.name, options.data, shot, paper_key) if paper_key else None
            cells += [why or _cell(found), f"{paper:.2f}" if paper is not None else "-"]
            document_rows.append({"label": label, "shot": shot, "method": method, "variant": variant,
                                  "measured": found, "paper": paper, "note": why})
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for row in spec.rows:
        add(row.label + (" (pooled)" if datasets else ""), row.variant, row.method, row.paper)
        for name in datasets:
            add(f"{row.label} [{name}]", row.variant, f"{row.method} [{name}]", None)
    for label, key, why in spec.unrun:
        add(label, None, "", key, why)
    total = sum(c["seconds"] for c in log)
    lines += ["", f"Wall time of each part ({total / 60:.1f} min in all):", "",
              "| part | seconds | command |", "|---|---|---|"]
    lines += [f"| {c['part']} | {c['seconds']:.0f} | `{c['command']}` |" for c in log]
    document = {"table": spec.name, "data": options.data, "shots": shots, "tasks": options.tasks,
                "steps": cfg.train.steps, "zoo": str(plan.zoo), "paper_source": source,
                "rows": document_rows, "parts": list(log), "seconds": round(total, 1)}
    return "\n".join(lines) + "\n", document


def merged_log(out: Path, log: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """This invocation's parts, after the earlier invocations' parts it did not
    redo (a rerun that reuses finished runs keeps their wall times)."""
    path = out / "reproduce.json"
    old = json.loads(path.read_text()).get("parts", []) if path.is_file() else []
    redone = {c["part"] for c in log}
    return [c for c in old if c["part"] not in redone] + list(log)


def write_table(plan: Plan, log: Sequence[dict[str, Any]]) -> tuple[Path, str]:
    out = plan.options.out
    markdown, document = render(plan, merged_log(out, log))
    atomic_write_text(out / "reproduce.json", json.dumps(document, indent=2))
    atomic_write_text(out / "reproduce.md", markdown)
    return out / "reproduce.md", markdown
