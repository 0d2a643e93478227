"""The generator inverters (``generator``, ``meta-generator``) and the
``input-stats`` prior for teachers without BN: loss, reversed outer loss,
late teachers, exact resume, and ``purer run --inverter NAME``."""

from __future__ import annotations

import logging

import pytest
import torch
from purer_plugins.learners.maml import MAML
from run_helpers import metrics, stopped_and_resumed, write_config
from torch import nn

from purer.engine import checkpoint as ckpt
from purer.engine.pseudo_episodes import OwnerTable, sample_pseudo_episodes
from purer.errors import ConfigError
from purer.rundir import RunDir
from purer.testing import TINY_SPACE as SPACE
from purer.testing import inversion_loss, run_purer, setup_inverter
from purer.testing import tiny_teacher as make_teacher

NAMES = ["generator", "meta-generator"]
# Small enough for a test; fomaml is the meta-update FREE uses.
SMALL = {"generator": {}, "meta-generator": {"adapt_steps": 3, "teachers_per_step": 2},
         "fomaml": {"adapt_steps": 3, "teachers_per_step": 1, "outer": "fomaml", "outer_lr": 1e-2}}


def _teachers():
    return [make_teacher(0, [0, 1, 2]), make_teacher(1, [3, 4, 5])]


def _inverter(name, teachers=None, seed=0, inversion=None, **options):
    kind = "meta-generator" if name == "fomaml" else name
    return setup_inverter(kind, teachers or _teachers(), 4, seed, inversion, **{**SMALL[name], **options})


def _tiny_net(classes: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes))


@pytest.mark.parametrize("name", NAMES)
def test_generator_inverters_lower_the_inversion_loss_of_their_data(name):
    torch.set_num_threads(1)
    inverter = _inverter(name)
    before = float(inverter.inversion_loss()[0])
    for _ in range(25):
        logged = inverter.step(None, {})
    assert set(logged) == {"ce", "tv", "l2", "bn", "total"}
    assert float(inverter.inversion_loss()[0]) < 0.8 * before


@pytest.mark.parametrize("name", ["generator", "meta-generator", "fomaml"])
def test_the_reversed_outer_loss_reaches_the_generator_weights(name):
    """A MAML outer loss on episodes from ``bank(detach=False)`` changes the
    update of the generator weights; the meta-model is not touched."""

    def run(with_reversed: bool) -> tuple[list[torch.Tensor], MAML]:
        inverter = _inverter(name)
        learner = MAML(MAML.Options())
        learner.setup(_tiny_net(3), torch.device("cpu"))
        draws = inverter.draw()
        extra = None
        if with_reversed:
            bank = inverter.bank(SPACE, detach=False)
            episode = sample_pseudo_episodes(bank, OwnerTable(bank.class_ids), 3, 1, 2, 1,
                                             torch.Generator().manual_seed(0))
            extra = -10.0 * learner.outer_loss(episode, create_graph=True)[0]
        logged = inverter.step(extra, draws)
        assert ("reversed" in logged) == with_reversed
        nets = inverter.nets if name == "generator" else [inverter.net]
        return [p.detach().clone() for net in nets for p in net.parameters()], learner

    plain, _ = run(False)
    mixed, learner = run(True)
    assert any(not torch.allclose(p, m) for p, m in zip(plain, mixed))
    assert all(p.grad is None for p in learner.model.parameters())


@pytest.mark.parametrize("name", ["generator", "meta-generator", "fomaml"])
def test_resume_from_a_checkpoint_takes_the_same_next_step(name, tmp_path):
    """State through a real checkpoint file (safetensors), the run's random
    stream restored: the next step and the bank are identical."""
    options = {"replay": 2, "replay_share": 0.5}
    first = _inverter(name, **options)
    for _ in range(3):
        first.step(None, {})
    ckpt.save_state(tmp_path, "s", {"inverter": first.state_dict(), "rng": ckpt.rng_state(first.generator)})
    state, _ = ckpt.read_pair(tmp_path, "s")
    second = _inverter(name, seed=1, **options)  # other seed: everything must come from the file
    second.load_state_dict(state["inverter"])
    ckpt.restore_rng(state["rng"], second.generator)
    a, b = first.step(None, {}), second.step(None, {})
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(first.bank(SPACE, detach=True).images, second.bank(SPACE, detach=True).images)


def test_replay_mixes_earlier_generations_into_the_bank():
    """Two earlier generations kept, used in turn: after three steps the
    kept ones are generations 1 and 2, and the bank takes half of each
    class from generation 2 (step count 3, cycled over the two)."""
    inverter = _inverter("generator", replay=2, replay_share=0.5)
    generations = [inverter.teacher_images()[0].clone()]
    for _ in range(3):
        inverter.step(None, {})
        generations.append(inverter.teacher_images()[0].clone())
        assert len(inverter.replay[0]) <= 2
    bank = inverter.bank(SPACE, detach=True).images[:3]  # teacher 0's classes
    assert torch.equal(bank[:, :2], generations[2][:, :2])
    assert torch.equal(bank[:, 2:], generations[3][:, 2:])
    assert torch.equal(bank[:, 2:], inverter.teacher_images()[0][:, 2:])


def test_a_teacher_joining_late_is_inverted_without_touching_the_others():
    inverter = _inverter("meta-generator")
    for _ in range(3):
        inverter.step(None, {})
    weights = {k: v.clone() for k, v in inverter.meta_params().items()}
    images = [x.clone() for x in inverter.images]
    late = make_teacher(7, [10, 11])
    inverter.add_teachers([late])
    assert all(torch.equal(x, y) for x, y in zip(images, inverter.images[:2]))
    noise = torch.randn(2 * 4, inverter.options.noise, generator=torch.Generator().manual_seed(0))
    _, losses, _, _ = inverter.adapt(2, noise, [torch.arange(64)], steps=15)
    assert all(torch.equal(v, weights[k]) for k, v in inverter.meta_params().items())
    assert losses[-1] < 0.8 * losses[0]
    assert inverter.bank(SPACE, detach=True).images.shape[0] == 3 + 3 + 2
    with pytest.raises(ConfigError, match="max_classes"):
        inverter.add_teachers([make_teacher(8, [20, 21, 22, 23])])


def test_a_meta_generator_checkpoint_of_a_smaller_zoo_loads_into_a_bigger_one():
    small = _inverter("meta-generator")
    for _ in range(2):
        small.step(None, {})
    big = _inverter("meta-generator", teachers=[*_teachers(), make_teacher(7, [10, 11])], seed=1)
    fresh = big.images[2].clone()
    big.load_state_dict(small.state_dict())
    assert all(torch.equal(v, small.meta_params()[k]) for k, v in big.meta_params().items())
    assert all(torch.equal(x, y) for x, y in zip(big.images[:2], small.images))
    assert torch.equal(big.images[2], fresh)  # the new teacher keeps its start
    with pytest.raises(ConfigError, match="holds 3 teachers"):
        small.load_state_dict(big.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_cuda_graphs_are_refused_with_a_clear_error(name):
    with pytest.raises(ConfigError, match="train.cuda_graph.*cannot replay"):
        _inverter(name).prepare_cuda_graph()


# ------------------------------------------------------------ teachers without BN
def test_a_teacher_without_bn_gets_the_input_statistics_prior():
    loss = inversion_loss({"ce": 1.0, "bn": 0.01, "input-stats": 0.1})
    plain, with_bn = make_teacher(0, [0, 1], bn=False), make_teacher(1, [2, 3])
    assert loss.names_for(plain) == ["ce", "input-stats"]
    assert loss.names_for(with_bn) == ["ce", "bn"]
    assert loss.names_for(None) == ["ce", "bn"]  # ICFIL's adapted meta-model
    inverter = setup_inverter("deepinv", [plain, with_bn], 4, 0, loss)
    first = inverter.step(None, {})
    parts = [inverter.step(None, {}) for _ in range(30)][-1]
    # the prior is non-zero for the BN-free teacher and moves its images
    assert 0 < float(parts["input-stats"]) < float(first["input-stats"])
    x = inverter.memory[0].detach()
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert float(mean.abs().max()) < 0.3 and float((var - 1).abs().max()) < 0.5


def test_the_zoo_notice_names_each_teachers_terms(tiny_zoo, monkeypatch, caplog):
    import purer.zoo.load as load

    monkeypatch.setattr(load, "find_bn_layers", lambda model: [])  # as if no teacher had BN
    with caplog.at_level(logging.INFO, logger=load.log.name):
        load.load_teachers(tiny_zoo, inversion=inversion_loss({"ce": 1.0, "bn": 0.01, "input-stats": 0.1}))
    lines = [r.getMessage() for r in caplog.records if "without BatchNorm" in r.getMessage()]
    assert len(lines) == 1 and "ce, input-stats for 4 (t000, t001, t002, +1)" in lines[0]


# ------------------------------------------------------------ purer run
@pytest.mark.parametrize("name", NAMES)
def test_purer_run_with_a_generator_inverter_trains_and_resumes_exactly(name, tmp_path, tiny_zoo):
    """``purer run --inverter NAME`` on the built-in dataset, with the
    gradient switch firing, pictures and checkpoints; the same run stopped
    after step 3 and resumed logs exactly the same numbers."""
    options = {f"inverter.{k}": v for k, v in SMALL[name].items()}
    config = write_config(tmp_path, tiny_zoo, **{"train.steps": 6, "train.val_every": 3,
                                                 "train.checkpoint_every": 3, "train.image_every": 6})
    args = ["run", "--config", str(config), "--inverter", name, "--no-eval",
            *[a for k, v in options.items() for a in ("--set", f"{k}={v}")]]
    assert run_purer(*args, "--name", "whole") == 0
    whole = tmp_path / "runs" / "whole"
    rows = metrics(whole)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert any("inv_reversed" in r for r in rows)  # the switch fired and reached the generator
    assert len(list((whole / "images" / "memory-step000006").glob("*.png"))) == 4

    config = RunDir.open(whole).load_config()
    assert config.inverter.name == name
    assert metrics(stopped_and_resumed(config, 3)) == rows


def test_bad_generator_options_are_one_line_errors(tmp_path, tiny_zoo, capsys):
    config = write_config(tmp_path, tiny_zoo)
    for args, wanted in ((["--inverter", "meta-generator", "--set", "inverter.adapt_steps=0"], "adapt_steps"),
                         (["--inverter", "generator", "--set", "inverter.outer_lr=0.1"], "outer_lr")):
        assert run_purer("run", "--config", config, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and wanted in err[0], err
