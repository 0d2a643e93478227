"""The divergence guard covers everything a checkpoint keeps as "last good",
and a NaN coming from one teacher names the teacher."""

from __future__ import annotations

import json

import torch
from purer_plugins.learners.maml import MAML
from run_helpers import write_config

import purer
from purer.engine.checkpoint import load_state
from purer.interfaces import InversionTerm
from purer.testing import run_purer


def purer_run(capsys, *args) -> tuple[int, str]:
    return run_purer(*args), capsys.readouterr().err


class PoisonedMAML(MAML):
    """MAML whose meta step leaves a NaN in the meta-model from step 6 on,
    while the numbers it reports stay finite."""

    steps = 0

    def meta_step(self, episodes):
        metrics = super().meta_step(episodes)
        PoisonedMAML.steps += 1
        if PoisonedMAML.steps >= 6:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return metrics


class PoisonPlugin:
    @purer.hookimpl
    def register_meta_learners(self, register):
        register("maml-poisoned", PoisonedMAML)


def test_guard_covers_the_meta_models_parameters(tmp_path, tiny_zoo, capsys, register_plugin):
    register_plugin(PoisonPlugin(), name="poison-plugin")
    PoisonedMAML.steps = 0
    config = write_config(tmp_path, tiny_zoo, **{"train.steps": 8})
    code, err = purer_run(capsys, "run", "--config", config, "--name", "p", "--no-eval",
                          "--meta", "maml-poisoned")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: step 6: meta-model '") and "the last good checkpoint (step 4)" \
        in line, line
    run = tmp_path / "runs" / "p"
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 4
    state, _ = load_state(run / "checkpoints", "last")
    assert all(torch.isfinite(v).all() for v in state["meta"]["model"].values()
               if v.is_floating_point())


class OneTeacherNaN(InversionTerm):
    """Zero, except for teacher t001 from its third call on: the square root of
    negative pixels, NaN in value and gradient."""

    calls = 0

    def __call__(self, ctx):
        if ctx.teacher.name != "t001":
            return ctx.images.sum() * 0
        OneTeacherNaN.calls += 1
        if OneTeacherNaN.calls < 3:
            return ctx.images.sum() * 0
        return (ctx.images - 1e6).sqrt().mean()


class NaNPlugin:
    @purer.hookimpl
    def register_inversion_terms(self, register):
        register("one-teacher-nan", OneTeacherNaN)


def test_a_nan_from_one_teacher_names_the_teacher(tmp_path, tiny_zoo, capsys, register_plugin):
    register_plugin(NaNPlugin(), name="nan-plugin")
    OneTeacherNaN.calls = 0
    config = write_config(tmp_path, tiny_zoo, **{"train.steps": 4})
    code, err = purer_run(capsys, "run", "--config", config, "--name", "n", "--no-eval",
                          "--set", "inversion.terms={ce = 1.0, one-teacher-nan = 1.0}")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: step 3: inv_one-teacher-nan is nan (teacher 't001'"), line
