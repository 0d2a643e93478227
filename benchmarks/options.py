"""The option parser every benchmark shares, and the run configuration it describes.

What a benchmark runs is a :class:`purer.config.RunConfig`, built exactly as
``purer run`` builds one, later sources winning: the benchmark's own base
layer (e.g. a curriculum that may fire from the first step), ``--preset``,
``--config FILE``, the shortcut options a benchmark offers (``--meta``,
``--inverter``, ``--shot``, ...) and ``--set SECTION.KEY=VALUE``. So any
registered component, built-in or third-party, is timed by naming it, with
any of its options. ``--vs-set`` describes a second variant (the same
configuration plus these assignments) that runs alternated with the first.

No path outside the repository is assumed: a dataset's folder is
``--root``, else the reader's own default (``$PURER_DATA_DIR/<dataset>``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from purer.cli.options import options_layer
from purer.config import RunConfig, build_config, load_preset, load_toml

# The smallest settings (tiny models, few classes and tasks): what a benchmark's SMOKE
# arguments use to show that it runs, never for a measurement.
TINY_CONFIG = str(Path(__file__).with_name("tiny.toml"))


@dataclass(frozen=True)
class Shortcut:
    key: str  # the configuration key it sets
    type: type
    help: str


SHORTCUTS: dict[str, Shortcut] = {
    "data": Shortcut("data.name", str, "dataset plugin (data.name)"),
    "root": Shortcut("data.root", str, "dataset folder (data.root; default: the reader's, "
                                       "$PURER_DATA_DIR/<dataset>)"),
    "zoo": Shortcut("zoo.path", str, "an existing teacher zoo (zoo.path)"),
    "inverter": Shortcut("inverter.name", str, "inverter plugin (inverter.name)"),
    "meta": Shortcut("meta.name", str, "meta-learner plugin (meta.name)"),
    "curriculum": Shortcut("curriculum.name", str, "curriculum plugin (curriculum.name)"),
    "calibrator": Shortcut("calibrator.name", str, "calibrator plugin (calibrator.name)"),
    "shot": Shortcut("train.shot", int, "shots per class (train.shot)"),
    "way": Shortcut("train.way", int, "classes per episode (train.way)"),
    "tasks": Shortcut("eval.tasks", int, "test tasks (eval.tasks)"),
    "batch_tasks": Shortcut("eval.batch_tasks", int, "tasks built and adapted together "
                                                     "(eval.batch_tasks)"),
    "teachers": Shortcut("zoo.build.teachers", int, "teachers (zoo.build.teachers)"),
    "epochs": Shortcut("zoo.build.epochs", int, "epochs per teacher (zoo.build.epochs)"),
    "seed": Shortcut("seed", int, "seed of everything"),
    "device": Shortcut("device", str, "auto, cpu, cuda, cuda:N (device)"),
}


def parser(name: str, doc: str | None, *, shortcuts: Iterable[str] = (), repeats: int | None = 3,
           warmup: int = 1, versus: bool = False) -> argparse.ArgumentParser:
    """The command line of benchmark ``name``: configuration, the listed
    shortcuts, timing (``--repeats``/``--warmup`` unless ``repeats`` is None,
    for work that runs once; ``--threads``) and output (``--json``); with
    ``versus`` also ``--vs-set`` for a second variant."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    config = p.add_argument_group("what runs (a purer run configuration)")
    config.add_argument("--preset", help="a shipped configuration (see `purer config presets`)")
    config.add_argument("--config", dest="config_path", metavar="FILE",
                        help="a TOML run configuration")
    config.add_argument("--set", dest="assignments", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one value (repeatable)")
    for option in shortcuts:
        shortcut = SHORTCUTS[option]
        config.add_argument(f"--{option.replace('_', '-')}", dest=option, type=shortcut.type,
                            help=shortcut.help)
    if versus:
        config.add_argument("--vs-set", dest="versus", action="append", default=[],
                            metavar="SECTION.KEY=VALUE",
                            help="a second variant: the same configuration with these assignments "
                                 "too (repeatable); both run alternated, and the report adds the "
                                 "median of the per-pair ratios (variant over base)")
    timing = p.add_argument_group("timing and output")
    if repeats is not None:
        timing.add_argument("--repeats", type=int, default=repeats,
                            help="measured runs per variant")
        timing.add_argument("--warmup", type=int, default=warmup, help="untimed runs first")
    timing.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    timing.add_argument("--json", dest="json_path", metavar="FILE",
                        help="also append each result as one JSON line here")
    p.set_defaults(shortcuts=tuple(shortcuts))
    return p


def run_config(args: argparse.Namespace, base: dict[str, Any] | None = None,
               extra: Sequence[str] = ()) -> RunConfig:
    """The validated configuration the options describe, over ``base``;
    ``extra`` assignments apply last (a ``--vs-set`` variant)."""
    from purer.plugins import get_host

    layers: list[dict[str, Any]] = [base or {}]
    if args.preset:
        layers.append(load_preset(args.preset))
    if args.config_path:
        layers.append(load_toml(args.config_path))
    keys = {option: SHORTCUTS[option].key for option in args.shortcuts}
    layers.append(options_layer({k: getattr(args, k) for k in keys}, keys))
    return build_config(*layers, assignments=(*args.assignments, *extra), host=get_host())


def variants(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, RunConfig]:
    """``{"base": config}``, plus ``"vs"`` when ``--vs-set`` was given."""
    found = {"base": run_config(args, base)}
    if getattr(args, "versus", None):
        found["vs"] = run_config(args, base, args.versus)
    return found


def prepare(args: argparse.Namespace) -> None:
    """Process-wide settings of a measurement, as the ``purer`` command applies
    them: glibc's allocator kept warm (``PURER_MALLOC_TUNING=0`` measures
    without), strict fp32 on GPUs, and the thread count when given."""
    import torch

    from purer.runtime import strict_fp32, tune_allocator

    tune_allocator()
    strict_fp32()
    if args.threads:
        torch.set_num_threads(args.threads)
