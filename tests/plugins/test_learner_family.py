"""ANIL, ProtoNet, Reptile and Meta-SGD: their maths, their execution paths, their state.

The exactness tests run in float64 on noise episodes (``random_episodes``);
the learning test runs a few dozen meta steps on the made-up stripes of
``synthetic_split``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from purer.data.episodes import make_task_list, sample_tasks
from purer.engine.checkpoint import load_state, save_state
from purer.errors import ConfigError
from purer.evaluation.evaluator import evaluate
from purer.models import create_model
from purer.plugins import get_host
from purer.testing import random_episodes, synthetic_split

NEW = ["anil", "protonet", "reptile", "metasgd"]
ALL = ["maml", *NEW]
# learners whose adaptation is a differentiable function of the support images
DIFFERENTIABLE = ALL
# learners that claim a second-order outer gradient (the default; first_order turns it off)
SECOND_ORDER = ["maml", "anil", "metasgd", "reptile"]


def make(name: str, dtype: torch.dtype = torch.double, seed: int = 0, model: nn.Module | None = None,
         **options):
    torch.manual_seed(seed)
    learner = get_host().create("meta_learner", name, {"channels_last": "off", **options})
    if model is None:
        model = create_model("conv4", num_classes=5, width=8, img_size=16)
    learner.setup(model.to(dtype), torch.device("cpu"))
    return learner


def strong(name: str) -> dict:
    """Options whose inner loop moves enough for second-order terms to matter."""
    return {} if name == "protonet" else {"inner_steps": 2, "inner_lr": 0.3}


def directional(loss_of, tensors: list[torch.Tensor], directions: list[torch.Tensor],
                h: float = 1e-6) -> float:
    """Central finite difference of ``loss_of()`` along ``directions``, moving ``tensors`` in place."""
    def shifted(scale: float) -> float:
        with torch.no_grad():
            for t, d in zip(tensors, directions):
                t.add_(scale * d)
        value = float(loss_of().detach())
        with torch.no_grad():
            for t, d in zip(tensors, directions):
                t.sub_(scale * d)
        return value

    return (shifted(h) - shifted(-h)) / (2 * h)


def unit_directions(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    directions = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in directions))
    return [d / norm for d in directions]


# ---------------------------------------------------------------------- registration and options
def test_every_learner_is_registered_with_validated_options():
    host = get_host()
    assert set(ALL) <= set(host.names("meta_learner"))
    with pytest.raises(ConfigError, match="test_inner_lr does not apply to metasgd"):
        host.create("meta_learner", "metasgd", {"test_inner_lr": 0.1}, "meta")
    with pytest.raises(ConfigError, match="inner_steps"):
        host.create("meta_learner", "reptile", {"inner_steps": 0}, "meta")
    with pytest.raises(ConfigError, match="metric"):
        host.create("meta_learner", "protonet", {"metric": "manhattan"}, "meta")
    with pytest.raises(ConfigError, match="inner_lr"):  # ProtoNet has no inner loop to tune
        host.create("meta_learner", "protonet", {"inner_lr": 0.1}, "meta")
    with pytest.raises(ConfigError, match="native_batch_norm"):
        host.create("meta_learner", "anil", {"batch_episodes": "vmap", "native_batch_norm": True}, "meta")


# ---------------------------------------------------------------------- it learns
@pytest.fixture(scope="module")
def toy():
    train = synthetic_split(num_classes=20, per_class=10, size=16, seed=0)
    test = synthetic_split(num_classes=10, per_class=10, size=16, seed=7)
    return train, test, make_task_list(test, 5, 1, 3, 30, seed=0)


# The toy embedding of a width-8 Conv4 on 16 px images has 8 dimensions, so
# ANIL's head needs larger inner steps than on a real Conv4 (docs/learners.md).
TOY_OPTIONS = {"anil": {"inner_lr": 0.5}}


@pytest.mark.parametrize("name", ALL)
def test_each_learner_learns_a_toy_task(name, toy):
    train, test, tasks = toy
    learner = make(name, torch.float32, **TOY_OPTIONS.get(name, {}))
    before = evaluate(learner, tasks, test, "cpu", batch_tasks=30).accuracy
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        learner.meta_step(sample_tasks(train, 5, 1, 3, 4, generator, "cpu"))
    after = evaluate(learner, tasks, test, "cpu", batch_tasks=30).accuracy
    assert after >= before + 8.0 and after > 40.0, (before, after)


# ---------------------------------------------------------------------- ANIL
def test_anil_moves_only_the_head_in_the_inner_loop():
    learner = make("anil")
    episodes = random_episodes(1)
    for create_graph in (False, True):
        adapted = learner.adapt(episodes.support[0], episodes.support_labels[0], create_graph=create_graph)
        for name, value in learner.params().items():
            moved = not torch.equal(adapted[name], value)
            assert moved == (name in learner.head_names()), name
    assert learner.head_names() == {"fc.weight", "fc.bias"}


def test_anil_refuses_a_model_without_one_classifier_module():
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.flatten(1)[:, :5] * self.w

    with pytest.raises(ConfigError, match="anil needs a meta-model whose get_classifier"):
        make("anil", model=NoHead())


# ---------------------------------------------------------------------- ProtoNet
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_protonet_logits_match_a_hand_computation(metric):
    learner = make("protonet", metric=metric, scale_init=3.0)
    episodes = random_episodes(1, way=3, shot=2, query=2)
    support, labels, query = episodes.support[0], episodes.support_labels[0], episodes.query[0]
    learner.way = 3  # the model has a 5-way head; these episodes are 3-way
    logits = learner.predict(learner.adapt(support, labels, create_graph=False), query)
    params = learner.params()
    fs = learner.features(params, support).tolist()
    fq = learner.features(params, query).tolist()
    means = [[sum(fs[i][d] for i in range(len(fs)) if labels[i] == c) / 2 for d in range(len(fs[0]))]
             for c in range(3)]
    for q, row in enumerate(fq):
        for c, mean in enumerate(means):
            if metric == "euclidean":
                expected = -sum((a - b) ** 2 for a, b in zip(row, mean))
            else:
                dot = sum(a * b for a, b in zip(row, mean))
                expected = 3.0 * dot / math.sqrt(sum(a * a for a in row) * sum(b * b for b in mean))
            assert float(logits[q, c].detach()) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_protonet_leaves_the_head_unused_and_learns_its_cosine_scale():
    learner = make("protonet", metric="cosine")
    before = float(learner.learned["scale"].detach())
    learner.meta_step(random_episodes(2))
    assert learner.model.fc.weight.grad is None  # no gradient ever reaches the head
    assert float(learner.learned["scale"].detach()) != before


# ---------------------------------------------------------------------- Reptile
class TwoParameters(nn.Module):
    """Two logits ``(w * s, v * s)`` with ``s`` an image's mean pixel."""

    def __init__(self, w: float, v: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.double))
        self.v = nn.Parameter(torch.tensor(v, dtype=torch.double))

    def forward(self, x):
        s = x.mean((1, 2, 3))
        return torch.stack([self.w * s, self.v * s], -1)


def _sgd_by_hand(w: float, v: float, means: list[float], labels: list[int], steps: int,
                 lr: float) -> tuple[float, float]:
    for _ in range(steps):
        gw = gv = 0.0
        for s, y in zip(means, labels):
            p1 = 1.0 / (1.0 + math.exp(w * s - v * s))  # softmax probability of class 1
            p0 = 1.0 - p1
            gw += (p0 - (y == 0)) * s / len(means)
            gv += (p1 - (y == 1)) * s / len(means)
        w, v = w - lr * gw, v - lr * gv
    return w, v


@pytest.mark.parametrize("inner_data", ["support", "episode"])
def test_reptile_update_matches_a_hand_computation(inner_data):
    learner = make("reptile", model=TwoParameters(0.3, -0.2), inner_steps=3, inner_lr=0.7,
                   outer_lr=0.4, inner_data=inner_data, cpu_workers=1)
    episodes = random_episodes(2, way=2, shot=2, query=1, size=4, seed=3)
    with torch.no_grad():  # brighter images for class 1, so the steps are far from zero
        episodes.support.add_(episodes.support_labels[..., None, None, None].double())
        episodes.query.add_(episodes.query_labels[..., None, None, None].double())
    learner.meta_step(episodes)
    adapted = []
    for e in range(2):
        images, labels = episodes.support[e], episodes.support_labels[e]
        if inner_data == "episode":
            images = torch.cat([images, episodes.query[e]])
            labels = torch.cat([labels, episodes.query_labels[e]])
        adapted.append(_sgd_by_hand(0.3, -0.2, images.mean((1, 2, 3)).tolist(), labels.tolist(), 3, 0.7))
    w_mean, v_mean = (sum(a[0] for a in adapted) / 2, sum(a[1] for a in adapted) / 2)
    assert float(learner.model.w.detach()) == pytest.approx(0.3 + 0.4 * (w_mean - 0.3), rel=1e-12)
    assert float(learner.model.v.detach()) == pytest.approx(-0.2 + 0.4 * (v_mean + 0.2), rel=1e-12)
    assert float(learner.model.w.detach()) != pytest.approx(0.3)


# ---------------------------------------------------------------------- Meta-SGD
def test_metasgd_rates_receive_gradients_and_are_checkpointed(tmp_path):
    learner = make("metasgd")
    rates = learner.rates
    assert set(rates) == set(learner.params())
    assert all(torch.equal(r, torch.full_like(r, 0.01)) for r in rates.values())
    learner.meta_step(random_episodes(2))
    assert all(r.grad is not None for r in rates.values())
    assert float(rates["fc.weight"].grad.abs().sum()) > 0
    assert not torch.equal(rates["fc.weight"], torch.full_like(rates["fc.weight"], 0.01))
    assert "learned" in learner.test_state_dict() and "optimizer" not in learner.test_state_dict()
    save_state(tmp_path, "best-1", learner.test_state_dict(), pointer="best")
    fresh = make("metasgd", seed=1)
    fresh.load_state_dict(load_state(tmp_path, "best")[0])
    for name, rate in rates.items():
        assert torch.equal(fresh.rates[name], rate), name
    with pytest.raises(ConfigError, match="holds no learned"):
        fresh.load_state_dict({"model": learner.model.state_dict()})


# ---------------------------------------------------------------------- the gradient switch
@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_reversed_loss_reaches_the_support_images_exactly(name):
    """The outer loss's derivative along a direction of the support and query
    images equals a finite difference of the loss: the images are reached,
    and through the adaptation, correctly."""
    learner = make(name, **strong(name))
    episodes = random_episodes(2, seed=5)
    images = [episodes.support, episodes.query]
    loss = learner.outer_loss(episodes, create_graph=True)[0]
    grads = torch.autograd.grad(loss, images)
    assert float(grads[0].abs().sum()) > 0 and float(grads[1].abs().sum()) > 0
    directions = unit_directions(images, seed=9)
    support_only = [directions[0], torch.zeros_like(directions[1])]
    analytic = float((grads[0] * directions[0]).sum())
    numeric = directional(lambda: learner.outer_loss(episodes, create_graph=True)[0], images,
                          support_only)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", SECOND_ORDER)
@pytest.mark.parametrize("first_order", [False, True])
def test_second_order_is_really_second_order(name, first_order):
    """The outer gradient w.r.t. the meta-parameters against a finite
    difference of the outer loss: equal when second order, and visibly
    not when ``first_order`` drops the second-order terms."""
    learner = make(name, first_order=first_order, **strong(name))
    episodes = random_episodes(2, seed=4)
    tensors = [*learner.params().values(), *learner.learned.values()]
    loss = learner.outer_loss(episodes, create_graph=True)[0]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    directions = unit_directions(tensors, seed=2)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions) if g is not None)
    numeric = directional(lambda: learner.outer_loss(episodes, create_graph=True)[0], tensors, directions)
    if first_order:
        assert abs(analytic - numeric) > 1e-3 * abs(numeric), (analytic, numeric)
    else:
        assert analytic == pytest.approx(numeric, rel=1e-5)


# ---------------------------------------------------------------------- execution paths
def _outer_gradients(name: str, **options):
    learner = make(name, **strong(name), **options)
    episodes = random_episodes(3)
    loss, accuracy = learner.outer_loss(episodes, create_graph=True)
    tensors = [*learner.params().values(), *learner.learned.values(), episodes.support, episodes.query]
    return loss, accuracy, torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("name", NEW)
def test_vmapped_episodes_equal_the_loop(name):
    loop_loss, loop_acc, loop = _outer_gradients(name, batch_episodes="loop")
    vmap_loss, vmap_acc, vmapped = _outer_gradients(name, batch_episodes="vmap")
    assert torch.allclose(loop_loss, vmap_loss, rtol=1e-12) and loop_acc == vmap_acc
    for reference, got in zip(loop, vmapped):
        if reference is None:
            assert got is None or got.abs().max() == 0
        else:
            assert torch.allclose(got, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_meta_steps_agree_across_paths(name):
    """One meta step one episode at a time, on two worker threads, and under vmap."""
    episodes = random_episodes(3)
    results = []
    for options in ({"batch_episodes": "loop", "cpu_workers": 1},
                    {"batch_episodes": "loop", "cpu_workers": 2},
                    {"batch_episodes": "vmap", "cpu_workers": 1}):
        learner = make(name, **strong(name), **options)
        metrics = learner.meta_step(episodes)
        results.append((metrics, learner.test_state_dict()["model"]))
    (reference, weights), others = results[0], results[1:]
    # A conv bias in front of batch norm has a zero gradient in exact arithmetic; Adam
    # divides the float64 rounding left in it (about 1e-15) by its eps (1e-8), so those
    # entries may move by about lr * 1e-7 along one path and not the other. A wrong
    # gradient moves an entry by about lr.
    for metrics, other in others:
        assert float(metrics.loss) == pytest.approx(float(reference.loss), rel=1e-10)
        for key, value in weights.items():
            assert torch.allclose(other[key], value, rtol=1e-8, atol=1e-8), key


@pytest.mark.parametrize("name", NEW)
def test_batched_meta_test_equals_one_task_at_a_time(name):
    episodes = random_episodes(3, seed=8)
    support, labels, query = (episodes.support.detach(), episodes.support_labels, episodes.query.detach())
    reference = None
    for batching, workers in (("loop", 1), ("loop", 2), ("vmap", 1)):
        learner = make(name, **strong(name), test_batching=batching, cpu_workers=workers,
                       batch_episodes="loop")
        learner.meta_step(random_episodes(2))  # not at init: Meta-SGD's rates have moved
        if reference is None:
            reference = torch.stack([learner.predict(learner.test_adapt(support[t], labels[t]), query[t])
                                     for t in range(3)]).detach()
        with torch.no_grad():
            got = learner.adapt_and_predict(support, labels, query)
        assert torch.allclose(got, reference, rtol=1e-8, atol=1e-10), batching


# ---------------------------------------------------------------------- state
@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_gives_an_identical_next_meta_step(name, tmp_path):
    learner = make(name, torch.float32)
    learner.meta_step(random_episodes(2, dtype=torch.float32, seed=1))
    save_state(tmp_path, "step-1", learner.state_dict(), pointer="last")
    resumed = make(name, torch.float32, seed=7)
    resumed.load_state_dict(load_state(tmp_path, "last")[0])
    episodes = random_episodes(2, dtype=torch.float32, seed=2)
    a, b = learner.meta_step(episodes), resumed.meta_step(episodes)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.accuracy, b.accuracy)
    for (key, x), y in zip(learner.state_dict()["model"].items(), resumed.state_dict()["model"].values()):
        assert torch.equal(x, y), key
    for key, value in learner.learned.items():
        assert torch.equal(value, resumed.learned[key]), key


# ---------------------------------------------------------------------- any timm model
@pytest.mark.parametrize("name", NEW)
def test_every_learner_runs_on_a_resnet(name):
    model = create_model("cifar_resnet10", num_classes=5, width=0.125)
    learner = make(name, torch.float32, model=model)
    episodes = random_episodes(2, size=16, dtype=torch.float32)
    metrics = learner.meta_step(episodes)
    assert math.isfinite(float(metrics.loss))
    logits = learner.adapt_and_predict(episodes.support.detach(), episodes.support_labels,
                                       episodes.query.detach())
    assert logits.shape == (2, 15, 5)
