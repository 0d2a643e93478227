"""The real-data upper bound: any registered learner, trained on real episodes."""

from __future__ import annotations

import pytest
import torch

import purer
from purer.config import build_config
from purer.interfaces import DatasetReader
from purer.pipeline.build import build_meta_model
from purer.pipeline.compare import score_methods
from purer.pipeline.real_data import limit_per_class, train_on_real_data
from purer.plugins import get_host
from purer.testing import TINY_ARCH_KWARGS, synthetic_split


def test_limit_per_class_keeps_the_memory_size():
    split = synthetic_split(num_classes=6, per_class=30, seed=0)
    small = limit_per_class(split, 16, torch.Generator().manual_seed(0))
    assert torch.bincount(small.labels).tolist() == [16] * 6
    again = limit_per_class(split, 16, torch.Generator().manual_seed(0))
    assert torch.equal(small.images, again.images)


class TinyTrain(DatasetReader):
    def load(self, split):
        return synthetic_split(num_classes=6, per_class=20, seed={"meta_train": 0}.get(split, 1))


class TinyDataPlugin:
    @purer.hookimpl
    def register_datasets(self, register):
        register("tiny-real-data", TinyTrain)


def config(**eval_options):
    return build_config({"data": {"name": "tiny-real-data"},
                         "train": {"steps": 3, "episode_batch": 2, "meta_arch_kwargs": TINY_ARCH_KWARGS["conv4"]},
                         "eval": {"tasks": 4, "query": 3, "baselines": ["real"], **eval_options}},
                        host=get_host())


def test_real_data_baseline_trains_the_runs_learner(register_plugin):
    register_plugin(TinyDataPlugin())
    cfg = config(real_steps=2)
    learner = train_on_real_data(cfg, 5, 1, torch.device("cpu"))
    assert learner.name == cfg.meta.name
    torch.manual_seed(cfg.seed)
    fresh = build_meta_model(cfg.train, 5).state_dict()
    trained = learner.model.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh if k in trained)


def test_real_data_needs_room_for_shot_and_query(register_plugin):
    register_plugin(TinyDataPlugin())
    with pytest.raises(ValueError, match="real_images_per_class"):
        train_on_real_data(config(real_images_per_class=4), 5, 5, torch.device("cpu"))


def test_real_is_a_baseline_row(register_plugin):
    register_plugin(TinyDataPlugin())
    rows = score_methods(config(real_steps=1), [], None, ["real"], split_name="meta_val",
                         device="cpu")
    assert [r.method for r in rows] == ["real"] and rows[0].n_tasks == 4 and rows[0].ok
