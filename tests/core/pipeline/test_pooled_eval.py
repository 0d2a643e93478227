"""MH's pooled meta-test (``eval.extra_data``): tasks shared out between two
datasets of different input spaces, a row per dataset and a pooled row that
agree with each other and with a one-dataset evaluation of the same tasks."""

from __future__ import annotations

import math

import pytest
import torch

import purer
from purer.api import DatasetReader
from purer.config import build_config
from purer.data.episodes import to_space
from purer.errors import ConfigError
from purer.models import create_model
from purer.pipeline.compare import score_methods, task_shares
from purer.plugins import get_host
from purer.testing import synthetic_split
from purer.types import InputSpace

BIG = InputSpace(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SMALL = InputSpace(16, (0.4, 0.4, 0.4), (0.3, 0.3, 0.3))


class Big(DatasetReader):
    def load(self, split):
        return synthetic_split(num_classes=6, per_class=8, size=32, seed=1, space=BIG)


class Small(DatasetReader):
    def load(self, split):
        return synthetic_split(num_classes=5, per_class=8, size=16, seed=2, space=SMALL, prefix="s")


@pytest.fixture
def two_datasets(register_plugin):
    class Inline:
        @purer.hookimpl
        def register_datasets(self, register):
            register("pool-big", Big)
            register("pool-small", Small)

    register_plugin(Inline())


def config(tasks: int, extra: list[str]):
    return build_config({"data": {"name": "pool-big"},
                         "train": {"meta_arch_kwargs": {"width": 4}},
                         "eval": {"tasks": tasks, "query": 3, "shots": [1], "batch_tasks": 4,
                                  "extra_data": extra, "baselines": ["random"]}}, host=get_host())


def learner():
    torch.manual_seed(0)
    built = get_host().create("meta_learner", "maml")
    built.setup(create_model("conv4", num_classes=5, width=4), torch.device("cpu"))
    return built


def test_per_dataset_and_pooled_rows_agree(two_datasets):
    rows = score_methods(config(9, ["pool-small"]), [], learner(), device="cpu",
                         calibrator=get_host().create("calibrator", "none"))
    by = {r.method: r for r in rows}
    assert list(by) == ["purer [pool-big]", "purer [pool-small]", "purer",
                        "random [pool-big]", "random [pool-small]", "random"]
    for method in ("purer", "random"):
        big, small, pooled = by[f"{method} [pool-big]"], by[f"{method} [pool-small]"], by[method]
        assert (big.n_tasks, small.n_tasks, pooled.n_tasks) == (5, 4, 9)
        assert math.isclose(pooled.accuracy, (5 * big.accuracy + 4 * small.accuracy) / 9, rel_tol=1e-6)
        assert pooled.extras["pooled"] == {"pool-big": 5, "pool-small": 4}
        assert small.extras["dataset"] == "pool-small"
        assert min(big.accuracy, small.accuracy) <= pooled.accuracy <= max(big.accuracy, small.accuracy)
    # the data dataset's share is the same evaluation as that dataset alone with as many tasks
    alone = {r.method: r for r in score_methods(config(5, []), [], learner(), device="cpu",
                                                 calibrator=get_host().create("calibrator", "none"))}
    assert alone["purer"].accuracy == by["purer [pool-big]"].accuracy
    assert alone["random"].accuracy == by["random [pool-big]"].accuracy


def test_the_other_dataset_reaches_the_meta_model_in_its_space():
    small = synthetic_split(num_classes=3, per_class=4, size=16, seed=2, space=SMALL)
    moved = to_space(small, BIG)
    assert moved.images.shape == (12, 3, 32, 32) and moved.images.dtype == torch.uint8
    assert moved.space == BIG and moved.class_names == small.class_names
    assert torch.equal(moved.labels, small.labels)
    # a flat image stays flat: resizing changes the size, not the pixels' values
    flat = synthetic_split(num_classes=1, per_class=1, size=16, space=SMALL)
    flat.images[:] = 77
    assert torch.all(to_space(flat, BIG).images == 77)
    assert to_space(small, SMALL) is small


def test_tasks_are_shared_out_and_a_dataset_listed_twice_is_refused(two_datasets):
    assert task_shares(600, 2) == [300, 300] and task_shares(7, 3) == [3, 2, 2]
    with pytest.raises(ConfigError, match="eval.extra_data: dataset 'pool-big'"):
        score_methods(config(4, ["pool-big"]), [], learner(), [], device="cpu")
    with pytest.raises(ConfigError, match="eval.tasks"):
        score_methods(config(1, ["pool-small"]), [], learner(), [], device="cpu")


def test_per_dataset_rows_keep_their_names_in_the_printed_table():
    from rich.console import Console

    from purer.evaluation.results import ResultRow, rich_table

    rows = [ResultRow("purer [pool-small]", 5, 1, 30.0, 1.0, 4), ResultRow("purer", 5, 1, 31.0, 1.0, 9)]
    console = Console(record=True, width=120)
    console.print(rich_table(rows))
    assert "purer [pool-small]" in console.export_text()
