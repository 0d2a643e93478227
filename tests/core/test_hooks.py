"""One test per hook (``test_hook_<name>``, which tests/core/test_docs.py
requires): an inline plugin registers a component through the hook, and the
core uses it the way it uses the built-ins, through the public interfaces
and their defaults only."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from timm.models import register_model
from torch import nn

import purer
from purer.api import (
    Calibrator,
    Curriculum,
    DatasetReader,
    Initializer,
    InversionTerm,
    MetaLearner,
    OuterMetrics,
)
from purer.config import build_config
from purer.data import load_split
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import evaluate
from purer.models import create_model
from purer.pipeline.compare import score_methods
from purer.plugins import get_host
from purer.testing import FrozenNoise, inversion_loss, synthetic_split, tiny_teacher


def plugin(hook: str, name: str, obj) -> object:
    """An inline plugin whose ``hook`` registers ``obj`` as ``name``."""
    def impl(self, register):
        register(name, obj)

    impl.__name__ = hook
    return type("Inline", (), {hook: purer.hookimpl(impl)})()


@pytest.fixture
def split():
    return synthetic_split(num_classes=6, per_class=12, size=16, seed=5)


def conv_learner(name: str = "maml"):
    torch.manual_seed(0)
    learner = get_host().create("meta_learner", name)
    learner.setup(create_model("conv4", num_classes=5, width=8, img_size=16), torch.device("cpu"))
    return learner


# ------------------------------------------------------------------ meta-training
def test_hook_register_inverters(register_plugin):
    register_plugin(plugin("register_inverters", "frozen-noise", FrozenNoise))
    config = build_config({"inverter": {"name": "frozen-noise"}}, host=get_host())
    inverter = get_host().create("inverter", config.inverter.name, config.inverter.options)
    teachers = [tiny_teacher(0, [0, 1]), tiny_teacher(1, [2, 3])]
    inverter.setup(teachers, 3, torch.device("cpu"), torch.Generator().manual_seed(0), inversion_loss())
    bank = inverter.bank(teachers[0].space, detach=True)
    assert bank.images.shape == (4, 3, 3, 8, 8) and bank.class_ids.tolist() == [0, 1, 2, 3]
    assert inverter.draw() == {}  # the interface's default: no randomness to draw


class Darkness(InversionTerm):
    def __call__(self, ctx):
        return ctx.images.mean() ** 2


def test_hook_register_inversion_terms(register_plugin):
    register_plugin(plugin("register_inversion_terms", "darkness", Darkness))
    loss = inversion_loss({"ce": 1.0, "darkness": 2.0})
    assert loss.names == ["ce", "darkness"]
    from purer.testing import setup_inverter

    inverter = setup_inverter("deepinv", [tiny_teacher(0, [0, 1])], inversion=loss, jitter=0)
    logged = inverter.step(None, {})
    assert set(logged) == {"ce", "darkness", "total"} and float(logged["darkness"]) > 0


class EveryThird(Curriculum):
    def adversarial_scale(self, step):
        return 1.0 if step % 3 == 0 else 0.0

    def observe(self, step, accuracy):
        pass


def test_hook_register_curricula(register_plugin):
    register_plugin(plugin("register_curricula", "every-third", EveryThird))
    config = build_config({"curriculum": {"name": "every-third"}}, host=get_host())
    curriculum = get_host().create("curriculum", config.curriculum.name, config.curriculum.options)
    assert [curriculum.adversarial_scale(s) for s in range(1, 7)] == [0, 0, 1, 0, 0, 1]


class NearestMean(MetaLearner):
    """A metric learner written against the interface alone: no inner loop,
    class means of the embeddings as its adapted state."""

    def setup(self, model, device):
        self.model, self.device = model.to(device), device
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def adapt(self, support, labels, *, create_graph, params=None):
        params = dict(self.params() if params is None else params)
        embedded = self.features(params, support)
        way = int(labels.max()) + 1
        params["means"] = torch.stack([embedded[labels == c].mean(0) for c in range(way)])
        return params

    def predict(self, params, images):
        return -torch.cdist(self.features(params, images), params["means"])

    def outer_loss(self, episodes, *, create_graph):
        losses, hits = [], []
        for e in range(episodes.num_episodes):
            logits = self.predict(self.adapt(episodes.support[e], episodes.support_labels[e],
                                             create_graph=create_graph), episodes.query[e])
            losses.append(nn.functional.cross_entropy(logits, episodes.query_labels[e]))
            hits.append((logits.argmax(-1) == episodes.query_labels[e]).float().mean())
        return torch.stack(losses).sum(), torch.stack(hits).mean().detach()

    def meta_step(self, episodes):
        self.optimizer.zero_grad()
        loss, accuracy = self.outer_loss(episodes, create_graph=True)
        loss.backward()
        self.optimizer.step()
        return OuterMetrics(loss.detach(), accuracy)


def test_hook_register_meta_learners(register_plugin, split):
    register_plugin(plugin("register_meta_learners", "nearest-mean", NearestMean))
    learner = conv_learner("nearest-mean")
    tasks = make_task_list(split, 5, 2, 3, 4, seed=0)
    # meta-test through the interface's defaults (test_adapt, adapt_and_predict)
    result = evaluate(learner, tasks, split, "cpu", batch_tasks=2)
    assert result.n_tasks == 4 and 20.0 < result.accuracy <= 100.0
    batch = next(tasks.batches(split, "cpu", 4))
    assert learner.meta_step(batch).loss > 0


class MajorityOfSupport(Calibrator):
    """Predicts the adapted model's logits, shifted towards nothing: only
    ``predict``, so the evaluator goes through the default ``predict_tasks``."""

    def predict(self, learner, params, support, support_labels, query):
        return learner.predict(params, query) * 2.0


def test_hook_register_calibrators(register_plugin, split):
    register_plugin(plugin("register_calibrators", "doubled", MajorityOfSupport))
    calibrator = get_host().create("calibrator", "doubled")
    calibrator.setup(inversion_loss())
    assert calibrator.passthrough is False
    learner = conv_learner()
    tasks = make_task_list(split, 5, 1, 3, 4, seed=1)
    plain = evaluate(learner, tasks, split, "cpu", batch_tasks=4)
    doubled = evaluate(learner, tasks, split, "cpu", calibrator, batch_tasks=4)
    assert doubled.accuracies == plain.accuracies  # scaling logits keeps every argmax


class Stripes(DatasetReader):
    def load(self, split):
        return synthetic_split(num_classes=6, per_class=4, seed={"meta_train": 0}.get(split, 1))


def test_hook_register_datasets(register_plugin):
    register_plugin(plugin("register_datasets", "stripes", Stripes))
    assert load_split("stripes", "meta_val").num_classes == 6
    config = build_config({"data": {"name": "stripes"}}, host=get_host())
    assert config.data.name == "stripes"


def test_hook_register_architectures(register_plugin):
    @register_model
    def hook_test_mlp(pretrained: bool = False, num_classes: int = 5, **kwargs) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    register_plugin(plugin("register_architectures", "hook_test_mlp", hook_test_mlp))
    assert "hook_test_mlp" in get_host().names("architecture")
    assert create_model("hook_test_mlp", num_classes=3)(torch.zeros(2, 3, 8, 8)).shape == (2, 3)


class Zeros(Initializer):
    needs_teachers = False

    def initialize(self, model, teachers):
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()


def test_hook_register_initializers(register_plugin, split):
    register_plugin(plugin("register_initializers", "zeros", Zeros))
    config = build_config({"train": {"meta_arch_kwargs": {"width": 8, "img_size": 16}},
                           "eval": {"tasks": 3, "query": 2}}, host=get_host())
    rows = score_methods(config, [], None, ["zeros"], split=split, split_name="meta_val", device="cpu")
    assert [r.method for r in rows] == ["zeros"] and rows[0].ok
    # a zero network's logits tie: every query gets class 0, so one in five is right
    assert rows[0].accuracy == pytest.approx(20.0)


def test_hook_register_commands(register_plugin):
    from purer.cli.main import cli

    class Commands:
        @purer.hookimpl
        def register_commands(self, cli):
            @cli.command("hello-hook")
            def hello() -> None:
                """Say hello."""
                print("hello from a plugin")

    register_plugin(Commands(), name="hello-commands")
    get_host().add_commands(cli)
    try:
        result = CliRunner().invoke(cli, ["hello-hook"])
        assert result.exit_code == 0 and "hello from a plugin" in result.output
    finally:
        cli.commands.pop("hello-hook", None)
