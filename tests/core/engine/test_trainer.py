"""The ECI engine end to end on a tiny zoo: logging, checkpoints, resume, guard."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import metrics, write_config

import purer
from purer.cli.main import main
from purer.engine.checkpoint import load_state
from purer.interfaces import InversionTerm
from purer.pipeline.final import load_meta_learner
from purer.testing import run_purer


def run_cli(*args: str) -> None:
    code = run_purer(*args)
    assert code == 0, f"purer {' '.join(args)} exited with {code}"


def test_run_logs_checkpoints_and_pictures(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    run_cli("run", "--config", str(config), "--name", "r", "--no-eval")
    log = capsys.readouterr().err
    run = tmp_path / "runs" / "r"
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("outer_loss", "train_accuracy", "switch", "inv_ce", "inv_tv", "inv_l2", "inv_bn", "inv_total"):
        assert key in rows[0]
    assert [r["step"] for r in rows if "val_accuracy" in r] == [4, 8, 12]
    assert any(r["switch"] for r in rows)  # start=2: fires at step 3 (reference rule)
    fired = sum(r["switch"] for r in rows)  # the last progress line counts them all
    last = [line for line in log.splitlines() if line.startswith("meta-train: 12/12")][-1]
    assert f"fired on {fired} step" in last and "elapsed" in last
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 12
    state, info = load_state(run / "checkpoints", "best")
    assert info["step"] in (4, 8, 12)
    assert (run / "images" / "val_accuracy.png").is_file()
    assert len(list((run / "images" / "memory-step000006").glob("*.png"))) == 4
    learner, config_loaded, info = load_meta_learner(run, "best", "cpu")
    assert config_loaded.train.steps == 12
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, state["model"][k])


class Exploding(InversionTerm):
    """Finite for six outer steps, then NaN (one call per teacher per step)."""

    calls = 0

    def __call__(self, ctx):
        Exploding.calls += 1
        step = (Exploding.calls - 1) // 4 + 1
        return ctx.images.sum() * 0 + (float("nan") if step >= 7 else 0.0)


class ExplodingPlugin:
    @purer.hookimpl
    def register_inversion_terms(self, register):
        register("exploding", Exploding)


def test_divergence_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_zoo, register_plugin):
    register_plugin(ExplodingPlugin(), name="exploding-plugin")
    Exploding.calls = 0
    config = write_config(tmp_path, tiny_zoo)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(config), "--name", "d", "--no-eval",
              "--set", 'inversion.terms={ce = 1.0, exploding = 1.0}'])
    assert exc.value.code == 2
    run = tmp_path / "runs" / "d"
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["diverged"] == "inv_exploding" and rows[-1]["step"] == 7
    state, _ = load_state(run / "checkpoints", "last")
    assert all(torch.isfinite(m).all() for m in state["inverter"]["memory"])


def test_bad_config_is_one_line_error(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(config), "--set", "train.way=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.way")
