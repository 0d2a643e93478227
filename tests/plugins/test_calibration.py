"""ICFIL (Alg. 2): the calibration loss, the calibrator's three steps, its accuracy."""

from __future__ import annotations

import math

import pytest
import torch

import purer
from purer.data.episodes import make_task_list
from purer.evaluation.evaluator import evaluate
from purer.interfaces import InversionTerm
from purer.kernels.supcon import supcon_loss
from purer.models import create_model, head_parameter_names
from purer.plugins import get_host
from purer.testing import inversion_loss, synthetic_split


@pytest.fixture(scope="module")
def split():
    return synthetic_split(num_classes=8, per_class=24, seed=3)


def learner_for(seed: int = 0):
    torch.manual_seed(seed)
    learner = get_host().create("meta_learner", "maml", {})
    learner.setup(create_model("conv4", num_classes=5, width=8), torch.device("cpu"))
    return learner


def make_icfil(terms: dict[str, float] | None = None, **options):
    icfil = get_host().create("calibrator", "icfil", options)
    icfil.setup(inversion_loss(terms))
    return icfil


def stacked_adaptation(learner, batch):
    adapted = [learner.test_adapt(batch.support[t], batch.support_labels[t])
               for t in range(batch.num_episodes)]
    return {k: torch.stack([a[k] for a in adapted]) for k in adapted[0]}


# ---------------------------------------------------------------------- Eq. 7
def test_supcon_matches_a_hand_computed_example():
    # Two anchors (classes 0, 1), three pseudo images (classes 0, 0, 1), t = 0.5.
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: e1, e2
    pseudo = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # e1, e2, e2
    loss = supcon_loss(anchors, torch.tensor([0, 1]), pseudo, torch.tensor([0, 0, 1]), 0.5)
    e2 = math.exp(2.0)
    # anchor e1: sims (1, 0, 0)/0.5 = (2, 0, 0); positives j=0,1
    denom = e2 + 2.0
    a1 = -0.5 * (math.log(e2 / denom) + math.log(1.0 / denom))
    # anchor e2: sims (0, 2, 2); positive j=2 only
    denom = 1.0 + 2 * e2
    a2 = -math.log(e2 / denom)
    assert loss.item() == pytest.approx((a1 + a2) / 2, rel=1e-6)


def test_supcon_batches_over_tasks_and_skips_anchors_without_positives():
    g = torch.Generator().manual_seed(0)
    za, zc = torch.randn(3, 4, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    la, lc = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1, 2, 2])  # class 3: no positive
    batched = supcon_loss(za, la.expand(3, -1), zc, lc.expand(3, -1), 0.1)
    single = torch.stack([supcon_loss(za[t, :3], la[:3], zc[t], lc, 0.1) for t in range(3)])
    torch.testing.assert_close(batched, single)


# ---------------------------------------------------------------------- the calibrator
def test_icfil_is_registered_with_every_knob():
    icfil = make_icfil(pseudo_per_class=2, calib_lr=1e-2)
    fields = set(type(icfil.options).model_fields)
    assert {"pseudo_per_class", "synthesis_steps", "synthesis_lr", "bn_target", "temperature",
            "calib_steps", "calib_lr", "head_steps", "head_lr"} <= fields
    assert icfil.options.temperature == 0.1 and icfil.options.head_steps == 100


def test_icfil_changes_the_backbone_only_and_trains_a_new_head(split):
    learner = learner_for()
    batch = next(make_task_list(split, 5, 1, 3, 2, seed=1).batches(split, "cpu", 2))
    icfil = make_icfil(synthesis_steps=3, pseudo_per_class=2)
    params = stacked_adaptation(learner, batch)
    pseudo, pseudo_labels = icfil.synthesize(learner, params, batch.support, batch.support_labels)
    assert pseudo.shape == (2, 10, 3, 32, 32) and pseudo_labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    head = head_parameter_names(learner.model)
    calibrated = icfil.calibrate(learner, params, batch.support, batch.support_labels,
                                 pseudo, pseudo_labels)
    for name, value in params.items():
        changed = not torch.equal(value, calibrated[name])
        assert changed == (name not in head), name

    def features(images):
        return torch.stack([learner.features({k: v[t] for k, v in calibrated.items()}, images[t])
                            for t in range(2)])

    logits = icfil.train_head(features(batch.support), batch.support_labels, features(batch.query))
    assert logits.shape == (2, 15, 5)
    # the fresh head fits the support set it was trained on
    support_logits = icfil.train_head(features(batch.support), batch.support_labels,
                                      features(batch.support))
    assert (support_logits.argmax(-1) == batch.support_labels).all()


class Brightness(InversionTerm):
    """A test prior: pseudo images should be bright (mean pixel near 3)."""

    def __call__(self, ctx):
        return (ctx.images.mean() - 3.0) ** 2


def test_a_plugin_term_shapes_icfil_synthesis(register_plugin, split):
    class Plugin:
        @purer.hookimpl
        def register_inversion_terms(self, register):
            register("brightness", Brightness)

    register_plugin(Plugin())
    learner = learner_for()
    batch = next(make_task_list(split, 5, 1, 3, 1, seed=1).batches(split, "cpu", 1))
    params = stacked_adaptation(learner, batch)
    plain = make_icfil(synthesis_steps=20, seed=4)
    bright = make_icfil({"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01, "brightness": 10.0},
                        synthesis_steps=20, seed=4)
    images = {}
    for name, icfil in (("plain", plain), ("bright", bright)):
        images[name], _ = icfil.synthesize(learner, params, batch.support, batch.support_labels)
    # same noise, same steps: only the registered term tells them apart
    assert images["bright"].mean() > images["plain"].mean() + 0.25


def test_icfil_vmap_and_loop_agree(split):
    learner = learner_for()
    tasks = make_task_list(split, 5, 1, 2, 3, seed=2)
    options = {"synthesis_steps": 2, "pseudo_per_class": 1, "jitter": 0, "head_steps": 5}
    batch = next(tasks.batches(split, "cpu", 3))
    params = stacked_adaptation(learner, batch)
    out = {}
    for mode in ("vmap", "loop"):
        icfil = make_icfil(**options, batching=mode)
        out[mode] = icfil.predict_tasks(learner, params, batch.support, batch.support_labels,
                                        batch.query)
    torch.testing.assert_close(out["vmap"], out["loop"], rtol=1e-4, atol=1e-4)


def test_icfil_reaches_high_accuracy_on_a_separable_task():
    # Colour + stripe classes are linearly separable in a random Conv4's features:
    # a head trained on 5 shots must get (nearly) every query right.
    split = synthetic_split(num_classes=5, per_class=20, seed=7)
    learner = learner_for(1)
    tasks = make_task_list(split, 5, 5, 5, 4, seed=0)
    icfil = make_icfil(synthesis_steps=5, pseudo_per_class=2)
    result = evaluate(learner, tasks, split, "cpu", calibrator=icfil, batch_tasks=4)
    assert result.n_tasks == 4
    assert result.accuracy >= 95.0


def test_icfil_on_worker_threads_matches_one_thread_and_any_batch_size(split):
    # Each task seeds its own noise and jitter from its position in the stream,
    # so neither the worker that ran it nor the batch it came in changes a number.
    learner = learner_for()
    batch = next(make_task_list(split, 5, 1, 2, 4, seed=5).batches(split, "cpu", 4))
    params = stacked_adaptation(learner, batch)
    options = {"synthesis_steps": 2, "pseudo_per_class": 1, "head_steps": 5, "batching": "loop"}
    inputs = (batch.support, batch.support_labels, batch.query)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers with one intra-op thread each
    try:
        one = make_icfil(**options, cpu_workers=1).predict_tasks(learner, params, *inputs)
        icfil = make_icfil(**options, cpu_workers=2)
        two = icfil.predict_tasks(learner, params, *inputs)
        assert icfil.pool.workers == 2 and icfil.replicas  # it did run on the pool
        halves = make_icfil(**options, cpu_workers=2)
        split_up = torch.cat([halves.predict_tasks(learner, {k: v[part] for k, v in params.items()},
                                                   *(x[part] for x in inputs))
                              for part in (slice(0, 2), slice(2, 4))])
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(split_up, one, rtol=1e-4, atol=1e-4)
