"""`purer reproduce` end to end on a tiny table: the built-in synthetic-shapes
dataset, a 2-teacher zoo, 2 outer steps, 8 test tasks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from purer.cli.main import build_cli

TINY = ["--data", "synthetic-shapes", "--preset", "quickstart", "--shot", "1", "--steps", "2",
        "--tasks", "8", "--val-tasks", "4", "--val-points", "1", "--zoo-epochs", "1", "--threads", "1",
        "--set", "zoo.build.teachers=2", "--set", "data.images_per_class=30",
        "--set", "zoo.build.arch_kwargs={width=4}", "--set", "train.meta_arch_kwargs={width=4}",
        "--set", "train.episode_batch=1", "--set", "eval.batch_tasks=8"]


def reproduce(*args: str) -> str:
    result = CliRunner().invoke(build_cli(), ["reproduce", *args], catch_exceptions=False,
                                prog_name="purer")
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_reproduce_writes_the_table_beside_the_papers_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "table"
    reproduce("--table", "ss", "--out", str(out), *TINY)
    markdown = (out / "reproduce.md").read_text()
    document = json.loads((out / "reproduce.json").read_text())
    assert "| method | 1-shot (ours) | 1-shot (paper) |" in markdown
    measured = {r["label"]: r["measured"] for r in document["rows"]}
    for label in ("Random", "Average", "OTA", "PURER EI (no curriculum)", "PURER ECI",
                  "PURER ECI + ICFIL (the paper's PURER)"):
        assert 0 <= measured[label]["accuracy"] <= 100 and measured[label]["n_tasks"] == 8, label
    assert measured["DRO"] is None and "not implemented" in markdown
    # the same task list for every method: the runs' results name one seed and count
    runs = sorted(p for p in out.iterdir() if (p / "results.json").is_file())
    assert len(runs) == 2
    headers = {(d["task_seed"], d["tasks"]) for d in (json.loads((p / "results.json").read_text()) for p in runs)}
    assert headers == {(2023, 8)}
    parts = [c["part"] for c in document["parts"]]
    assert parts == ["zoo", "1-shot eci: train + test", "1-shot eci: + ICFIL", "1-shot ei: train + test"]
    assert all(c["seconds"] >= 0 and c["command"].startswith("purer ") for c in document["parts"])
    # a rerun trains nothing and keeps the wall times of the parts it reused
    reproduce("--table", "ss", "--out", str(out), *TINY)
    again = json.loads((out / "reproduce.json").read_text())
    assert [c["part"] for c in again["parts"]] == parts + ["zoo (already built: checked)"]
    assert {r["label"]: r["measured"] for r in again["rows"]} == measured
