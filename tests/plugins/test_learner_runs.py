"""The new meta-learners inside purer: ``purer run --meta NAME`` end to end on a
tiny zoo, exact resume, the real-data upper bound, and ICFIL's two classifiers."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import metrics, stopped_and_resumed, write_config

from purer.config import build_config
from purer.data.episodes import make_task_list
from purer.engine.checkpoint import load_state
from purer.evaluation.evaluator import evaluate
from purer.models import create_model
from purer.pipeline.compare import score_methods
from purer.pipeline.final import load_meta_learner
from purer.pipeline.real_data import train_on_real_data
from purer.plugins import get_host
from purer.rundir import RunDir
from purer.testing import inversion_loss, run_purer, synthetic_split

NEW = ["anil", "protonet", "reptile", "metasgd"]


SHORT = {"train.steps": 6, "train.val_every": 3, "train.checkpoint_every": 3, "train.image_every": 6}


@pytest.mark.parametrize("name", NEW)
def test_purer_run_meta_trains_and_resumes_exactly(name, tmp_path, tiny_zoo):
    """The whole run through the CLI; the same run stopped after step 3 and
    resumed from its checkpoint logs exactly the same numbers."""
    config = write_config(tmp_path, tiny_zoo, **SHORT)
    assert run_purer("run", "--config", str(config), "--meta", name, "--name", "whole", "--no-eval") == 0
    whole = tmp_path / "runs" / "whole"
    rows = metrics(whole)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert any(r["switch"] for r in rows)  # the reversed outer loss ran
    assert all(0.0 <= r["train_accuracy"] <= 1.0 for r in rows)
    assert RunDir.open(whole).load_config().meta.name == name

    # the val-selected checkpoint holds what meta-testing needs, learned rates included
    learner, _, _ = load_meta_learner(whole, "best", "cpu")
    assert learner.name == name
    state, _ = load_state(whole / "checkpoints", "best")
    for key, value in learner.test_state_dict().get("learned", {}).items():
        assert torch.equal(value, state["learned"][key])

    # stop after step 3, resume in a new trainer
    assert metrics(stopped_and_resumed(RunDir.open(whole).load_config(), 3)) == rows


def test_bad_learner_options_are_one_line_errors(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    for args, wanted in ((["--meta", "metasgd", "--set", "meta.test_inner_lr=0.1"], "test_inner_lr"),
                         (["--meta", "protonet", "--set", "meta.inner_steps=3"], "inner_steps"),
                         (["--meta", "reptile", "--set", "meta.inner_data='query'"], "inner_data")):
        assert run_purer("run", "--config", config, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and wanted in err[0], err


def test_a_new_learner_runs_the_final_table_with_its_baselines(tmp_path, tiny_zoo):
    """Meta-SGD with ICFIL re-adapting from the calibrated backbone, the
    random and average initialisations and the real-data upper bound."""
    config = write_config(
        tmp_path, tiny_zoo, **SHORT, **{
            "init.name": "average", "eval.tasks": 4, "eval.query": 3, "eval.real_steps": 2,
            "eval.baselines": ["random", "average", "real"], "calibrator.name": "icfil",
            "calibrator.synthesis_steps": 2, "calibrator.head_steps": 5, "calibrator.classifier": "learner"})
    assert run_purer("run", "--config", str(config), "--meta", "metasgd", "--name", "table") == 0
    document = json.loads((tmp_path / "runs" / "table" / "results.json").read_text())
    rows = {r["method"]: r for r in document["rows"]}
    assert {"purer", "purer+icfil", "random", "average", "real"} <= set(rows)
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 100.0 and row["n_tasks"] == 4, row


# ---------------------------------------------------------------------- the real-data upper bound
@pytest.mark.parametrize("name", NEW)
def test_real_data_upper_bound_trains_any_new_learner(name):
    config = build_config({"data": {"name": "synthetic-shapes", "images_per_class": 60},
                           "meta": {"name": name},
                           "train": {"steps": 3, "episode_batch": 2, "query": 3,
                                     "meta_arch_kwargs": {"width": 8}},
                           "eval": {"tasks": 4, "query": 3, "baselines": ["real"], "real_steps": 2}},
                          host=get_host())
    learner = train_on_real_data(config, 5, 1, torch.device("cpu"))
    assert learner.name == name
    rows = score_methods(config, [], None, ["real"], split_name="meta_val", device="cpu")
    assert [r.method for r in rows] == ["real"] and rows[0].ok and rows[0].n_tasks == 4


# ---------------------------------------------------------------------- ICFIL
@pytest.fixture(scope="module")
def split():
    return synthetic_split(num_classes=8, per_class=16, size=16, seed=3)


def conv_learner(name: str, **options):
    torch.manual_seed(0)
    learner = get_host().create("meta_learner", name, options)
    learner.setup(create_model("conv4", num_classes=5, width=8, img_size=16), torch.device("cpu"))
    return learner


def icfil(**options):
    calibrator = get_host().create("calibrator", "icfil", {"pseudo_per_class": 2, **options})
    calibrator.setup(inversion_loss())
    return calibrator


@pytest.mark.parametrize("name", ["anil", "protonet"])
def test_icfil_learner_classifier_without_calibration_is_the_learners_prediction(name, split):
    """Neither ANIL nor ProtoNet moves the backbone when adapting, so with no
    synthesis and no calibration, re-adapting from the "calibrated" backbone
    is the learner's own meta-test prediction, exactly."""
    learner = conv_learner(name)
    tasks = make_task_list(split, 5, 1, 3, 4, seed=1)
    plain = evaluate(learner, tasks, split, "cpu", batch_tasks=4)
    for batching in ("loop", "vmap"):
        calibrated = evaluate(learner, tasks, split, "cpu",
                              icfil(classifier="learner", synthesis_steps=0, calib_steps=0,
                                    batching=batching), batch_tasks=4)
        assert calibrated.accuracies == plain.accuracies


def test_icfil_learner_classifier_recomputes_prototypes_in_the_calibrated_embedding(split):
    learner = conv_learner("protonet")
    batch = next(make_task_list(split, 5, 1, 3, 2, seed=2).batches(split, "cpu", 2))
    options = {"classifier": "learner", "synthesis_steps": 2, "calib_steps": 2, "calib_lr": 0.05,
               "batching": "vmap"}
    adapted = [learner.test_adapt(batch.support[t], batch.support_labels[t]) for t in range(2)]
    params = {k: torch.stack([a[k] for a in adapted]) for k in adapted[0]}
    with torch.no_grad():
        got = icfil(**options).predict_tasks(learner, params, batch.support, batch.support_labels,
                                             batch.query)
    by_hand = icfil(**options)  # same seed: same noise and jitter
    pseudo, pseudo_labels = by_hand.synthesize(learner, params, batch.support, batch.support_labels)
    backbone = by_hand.calibrate(learner, params, batch.support, batch.support_labels, pseudo,
                                 pseudo_labels)
    expected = []
    for t in range(2):
        own = {k: v[t] for k, v in backbone.items()}
        prototypes = learner.prototypes(learner.features(own, batch.support[t]), batch.support_labels[t])
        expected.append(learner.logits(learner.features(own, batch.query[t]), prototypes))
    expected = torch.stack(expected).detach()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the calibration moved the embedding, so the prototypes are not the uncalibrated ones
    plain = torch.stack([learner.predict(a, batch.query[t]) for t, a in enumerate(adapted)]).detach()
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("classifier", ["head", "learner"])
def test_icfil_calibrates_every_learner(name, classifier, split):
    learner = conv_learner(name)
    tasks = make_task_list(split, 5, 1, 3, 2, seed=4)
    result = evaluate(learner, tasks, split, "cpu",
                      icfil(classifier=classifier, synthesis_steps=2, head_steps=5), batch_tasks=2)
    assert result.n_tasks == 2 and 0.0 <= result.accuracy <= 100.0


# ---------------------------------------------------------------------- CUDA graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NEW)
def test_every_learner_is_captured_in_a_cuda_graph(name):
    """Both switch states get captured (two eager warm-up steps each) and
    replayed without falling back to eager execution."""
    from purer.config import RunConfig
    from purer.engine.trainer import ECITrainer
    from purer.types import InputSpace, Teacher, find_bn_layers

    device = torch.device("cuda")
    space = InputSpace(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    teachers = []
    for k in range(3):
        classes = list(range(5 * k, 5 * k + 5))
        model = create_model("conv4", num_classes=5).to(device).eval().requires_grad_(False)
        teachers.append(Teacher(f"t{k}", model, classes, [str(c) for c in classes], space, arch="conv4",
                                bn_layers=find_bn_layers(model)))
    config = RunConfig(device="cuda", train={"shot": 1, "query": 3, "cuda_graph": True})
    meta = get_host().create("meta_learner", name)
    meta.setup(create_model("conv4", num_classes=5), device)
    inverter = get_host().create("inverter", "deepinv")
    generator = torch.Generator().manual_seed(0)
    inverter.setup(teachers, 4, device, generator, inversion_loss())

    class EveryOtherStep:
        def adversarial_scale(self, step):
            return 10.0 if step % 2 else 0.0

        def observe(self, step, accuracy):
            pass

    trainer = ECITrainer(config, None, device, teachers, meta, inverter, EveryOtherStep(), space,
                         generator=generator)
    records = [trainer.outer_step(step) for step in range(1, 9)]
    assert set(trainer.graphed.graphs) == {0.0, 10.0} and not trainer.graphed.failed
    assert all(torch.isfinite(torch.tensor(r["outer_loss"])) for r in records)
