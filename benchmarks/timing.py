"""Clocks, medians and ratios, and the machine a number was measured on.

A single run says little on a shared machine, whose speed drifts by tens of
percent within an hour: every benchmark repeats its work and reports the
median (and the minimum). Two variants are alternated run by run, so the
drift hits both alike, and compared by the median of the per-pair ratios.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What makes a clock include the device's queued work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def alternate(runs: Mapping[str, Callable[[int], Any]], repeats: int, warmup: int,
              sync: Callable[[], None] = lambda: None
              ) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Call each variant's ``run(i)`` (``i`` = 1, 2, ...) ``warmup + repeats``
    times, variants taking turns; returns the seconds of each measured call and
    what each measured call returned, per variant."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list] = {name: [] for name in runs}
    for i in range(1, warmup + repeats + 1):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            result = run(i)
            sync()
            if i > warmup:
                seconds[name].append(time.perf_counter() - start)
                results[name].append(result)
    return seconds, results


def summary(seconds: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs": len(seconds),
            "runs_s": [round(s, 4) for s in seconds]}


def compare(seconds: Mapping[str, list[float]]) -> dict[str, Any]:
    """The base variant's summary; with a ``vs`` variant, its summary under
    ``vs`` and the median of the per-pair ratios ``vs / base``."""
    report = summary(seconds["base"])
    if "vs" in seconds:
        ratios = [v / b for v, b in zip(seconds["vs"], seconds["base"])]
        report["vs"] = summary(seconds["vs"])
        report["median_ratio_vs_over_base"] = statistics.median(ratios)
    return report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(row: dict[str, Any], json_path: str | None = None) -> None:
    """Print one result as a JSON line (and append it to ``json_path``)."""
    line = json.dumps(row)
    print(line, flush=True)
    if json_path:
        with open(json_path, "a") as fh:
            fh.write(line + "\n")


def read_rows(json_path: str | Path) -> list[dict[str, Any]]:
    """The rows :func:`emit` appended to a file."""
    return [json.loads(line) for line in Path(json_path).read_text().splitlines() if line.strip()]
