"""Meta-testing: the CI formula, batched vs per-task adaptation, same tasks for
every method, results files and tables, and the ``eval``/``table`` commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import purer
from purer.config import build_config
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import batch_logits, ci95, evaluate
from purer.evaluation.results import (
    ResultRow,
    markdown_table,
    merged_table,
    results_document,
    write_results,
)
from purer.interfaces import DatasetReader
from purer.models import create_model
from purer.pipeline import compare
from purer.plugins import get_host
from purer.testing import TINY_ARCH_KWARGS, synthetic_split
from purer.types import Teacher

TINY = {"width": 8}


@pytest.fixture(scope="module")
def split():
    return synthetic_split(num_classes=10, per_class=20, seed=5)


def tiny_learner(seed: int = 0, **options):
    torch.manual_seed(seed)
    learner = get_host().create("meta_learner", "maml", options)
    learner.setup(create_model("conv4", num_classes=5, **TINY), torch.device("cpu"))
    return learner


# ---------------------------------------------------------------------- the interval
def test_ci95_is_196_std_over_sqrt_n():
    accs = [20.0, 40.0, 60.0, 80.0]
    assert ci95(accs) == pytest.approx(1.96 * np.std(accs) / math.sqrt(4))
    assert ci95(torch.tensor(accs)) == pytest.approx(ci95(accs))
    assert ci95([50.0]) == 0.0


# ---------------------------------------------------------------------- batched == per task
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_batched_path_equals_per_task_path(split, batching):
    learner = tiny_learner(test_batching=batching)
    batch = next(make_task_list(split, 5, 1, 4, 6, seed=0).batches(split, "cpu", 6))
    batched = batch_logits(learner, batch, mode="batched")
    per_task = batch_logits(learner, batch, mode="per_task")
    torch.testing.assert_close(batched, per_task, rtol=1e-4, atol=1e-5)


def test_evaluate_reports_per_task_accuracies_and_time(split):
    learner = tiny_learner()
    tasks = make_task_list(split, 5, 1, 3, 7, seed=1)
    a = evaluate(learner, tasks, split, "cpu", batch_tasks=3, channels_last=False)
    b = evaluate(learner, tasks, split, "cpu", batch_tasks=7, mode="per_task")
    assert a.n_tasks == 7 and len(a.accuracies) == 7
    assert a.accuracies == pytest.approx(b.accuracies)
    assert a.accuracy == pytest.approx(float(np.mean(a.accuracies)))
    assert a.ci95 == pytest.approx(ci95(a.accuracies))
    assert a.seconds_per_task == pytest.approx(a.seconds / 7)
    assert a.to_dict().keys() >= {"accuracy", "ci95", "n_tasks", "seconds", "seconds_per_task"}


# ---------------------------------------------------------------------- same tasks everywhere
def toy_teachers(n: int = 2, arch: str = "conv4") -> list[Teacher]:
    space = synthetic_split(num_classes=1, per_class=1).space
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = create_model(arch, num_classes=5, **TINY_ARCH_KWARGS[arch]).eval()
        out.append(Teacher(f"t{i}", model, list(range(5 * i, 5 * i + 5)),
                           [f"c{j}" for j in range(5)], space, arch=arch))
    return out


def small_config(**eval_section):
    tree = {"train": {"meta_arch": "conv4", "meta_arch_kwargs": TINY, "way": 5, "shot": 1},
            "eval": {"tasks": 5, "query": 3, "shots": [1, 2], "batch_tasks": 5, **eval_section},
            "device": "cpu"}
    return build_config(tree, host=get_host())


def test_every_method_meets_the_same_task_list(split, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    original = compare.evaluate

    def recording(learner, tasks, *args, **kwargs):
        seen.setdefault(kwargs["description"].split()[0], []).append(tasks.indices.clone())
        return original(learner, tasks, *args, **kwargs)

    monkeypatch.setattr(compare, "evaluate", recording)
    config = small_config()
    rows = compare.score_methods(config, toy_teachers(), tiny_learner(), ["random", "average"],
                                 split=split, split_name="meta_test",
                                 calibrator=get_host().create("calibrator", "none"))
    assert [(r.method, r.shot) for r in rows] == [
        ("purer", 1), ("purer", 2), ("random", 1), ("random", 2), ("average", 1), ("average", 2)]
    assert set(seen) == {"purer", "random", "average"}
    for shot_index in range(2):
        reference = seen["purer"][shot_index]
        for method in ("random", "average"):
            assert torch.equal(seen[method][shot_index], reference)
    assert all(r.n_tasks == 5 and r.ok for r in rows)


def test_a_baseline_that_cannot_run_becomes_a_note(split):
    teachers = toy_teachers(1) + toy_teachers(1, "cifar_resnet10")
    config = small_config(shots=[1])
    rows = compare.score_methods(config, teachers, None, ["average"], split=split,
                                 split_name="meta_test")
    assert len(rows) == 1 and not rows[0].ok and "architecture" in rows[0].note
    assert "n/a" in markdown_table(rows)


# ---------------------------------------------------------------------- results files
def rows_for(method: str, shots=(1, 5), base: float = 40.0) -> list[ResultRow]:
    return [ResultRow(method, 5, s, base + s, 0.5, 600, 6.0, 0.01) for s in shots]


def test_results_files_state_the_protocol(tmp_path):
    doc = results_document(rows_for("purer") + rows_for("random", base=20.0), dataset="cifar-fs",
                           selection_split="meta_val", eval_split="meta_test", task_seed=2023,
                           tasks=600, query=15, checkpoint={"step": 1000})
    write_results(tmp_path, doc)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["selection_split"] == "meta_val" and data["eval_split"] == "meta_test"
    assert data["task_seed"] == 2023 and len(data["rows"]) == 4
    md = (tmp_path / "results.md").read_text()
    assert "meta_val" in md and "meta_test" in md and "seed 2023" in md
    assert "| purer | 41.00 ± 0.50 | 45.00 ± 0.50 |" in md
    # a later eval of another setting under the same protocol keeps the old rows
    more = results_document([ResultRow("purer", 5, 10, 50.0, 0.4, 600)], dataset="cifar-fs",
                            selection_split="meta_val", eval_split="meta_test", task_seed=2023,
                            tasks=600, query=15)
    write_results(tmp_path, more)
    assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 5


def test_merged_table_puts_methods_down_and_settings_across():
    one = results_document(rows_for("purer", (1,)) + rows_for("random", (1,)), dataset="d",
                           selection_split="meta_val", eval_split="meta_test", task_seed=1,
                           tasks=600, query=15)
    five = results_document(rows_for("purer", (5,)) + rows_for("random", (5,)), dataset="d",
                            selection_split="meta_val", eval_split="meta_test", task_seed=1,
                            tasks=600, query=15)
    table = merged_table([("a", one), ("b", five)])
    assert "| method | 5-way 1-shot | 5-way 5-shot |" in table
    assert "| purer | 41.00 ± 0.50 | 45.00 ± 0.50 |" in table
    clash = merged_table([("a", one), ("b", one)])
    assert "purer (a)" in clash and "purer (b)" in clash


# ---------------------------------------------------------------------- commands
class TinyData(DatasetReader):
    """A dataset plugin of made-up images, so the command tests load in no time."""

    def load(self, split):
        seed = {"meta_train": 0, "meta_val": 1, "meta_test": 2}[split]
        return synthetic_split(num_classes=8, per_class=12, seed=seed)


class _TinyDataPlugin:
    @purer.hookimpl
    def register_datasets(self, register):
        register("tiny-test-data", TinyData)


def make_run(tmp_path):
    from purer.engine.checkpoint import save_state
    from purer.pipeline.build import build_meta_learner, build_meta_model
    from purer.rundir import RunDir

    host = get_host()
    if "tiny-test-data" not in host.names("dataset"):
        host.register_plugin(_TinyDataPlugin(), "tiny-test-data")
    config = build_config({"data": {"name": "tiny-test-data"}, "device": "cpu",
                           "out": str(tmp_path), "name": "run",
                           "train": {"meta_arch": "conv4", "meta_arch_kwargs": TINY},
                           "eval": {"tasks": 4, "query": 2, "baselines": ["random"]}}, host=host)
    run = RunDir.create(config)
    torch.manual_seed(0)
    learner = build_meta_learner(config.meta, build_meta_model(config.train), torch.device("cpu"))
    save_state(run.checkpoints, "best-7", {"model": learner.model.state_dict()}, pointer="best",
               info={"step": 7, "val_accuracy": 50.0})
    return run


def test_eval_and_table_commands(tmp_path):
    from purer.cli.main import build_cli

    run = make_run(tmp_path)
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["eval", str(run.path), "--shot", "1", "--shot", "2",
                                         "--baselines", "random", "--calibrator", "icfil",
                                         "--set", "calibrator.synthesis_steps=1",
                                         "--set", "calibrator.head_steps=3"])
    assert result.exit_code == 0, result.output
    data = json.loads((run.path / "results.json").read_text())
    assert data["checkpoint"]["step"] == 7 and data["selection_split"] == "meta_val"
    assert data["calibrator"]["name"] == "icfil" and data["calibrator"]["synthesis_steps"] == 1
    methods = {(r["method"], r["shot"]) for r in data["rows"]}
    assert methods == {(m, s) for m in ("purer", "purer+icfil", "random") for s in (1, 2)}
    table = runner.invoke(build_cli(), ["table", str(run.path)])
    assert table.exit_code == 0, table.output
    assert "| purer+icfil |" in table.output and "5-way 2-shot" in table.output


def test_eval_applies_meta_test_options_over_the_run_s_own(tmp_path):
    # e.g. more inner steps at meta-test than in training: the override must reach the learner
    from purer.cli.main import build_cli

    run = make_run(tmp_path)
    runner = CliRunner()

    def purer_accuracy(*assignments: str) -> float:
        args = ["eval", str(run.path), "--shot", "1", "--baselines", "none"]
        result = runner.invoke(build_cli(), args + [a for x in assignments for a in ("--set", x)])
        assert result.exit_code == 0, result.output
        rows = json.loads((run.path / "results.json").read_text())["rows"]
        return next(r["accuracy"] for r in rows if r["method"] == "purer")

    plain = purer_accuracy()
    assert purer_accuracy("meta.test_inner_steps=0") != plain  # no adaptation: predictions change
    assert purer_accuracy() == plain
    wrong = runner.invoke(build_cli(), ["eval", str(run.path), "--set", "meta.name=protonet"])
    assert wrong.exit_code != 0 and "trained 'maml'" in str(wrong.exception)


def test_a_calibrator_sets_the_threads_of_adaptation_and_calibration(split):
    from purer.interfaces import Calibrator

    seen = []

    class OneThread(Calibrator):
        def threads(self):
            return 1

        def predict(self, learner, params, support, support_labels, query):
            seen.append(torch.get_num_threads())
            return learner.predict(params, query)

    torch.manual_seed(0)
    learner = get_host().create("meta_learner", "maml", {})
    learner.setup(create_model("conv4", num_classes=5, width=8), torch.device("cpu"))
    adapt = learner.test_adapt
    learner.test_adapt = lambda *a, **k: (seen.append(torch.get_num_threads()), adapt(*a, **k))[1]
    tasks = make_task_list(split, 5, 1, 2, 2, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate(learner, tasks, split, "cpu", calibrator=OneThread(), batch_tasks=2)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}  # adaptation and calibration on one thread
    assert after == 2  # and the caller's count back afterwards
