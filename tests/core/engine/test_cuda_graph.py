"""``train.cuda_graph``: the replayed step computes what the eager step computes.

The equivalence tests need a CUDA device and skip without one (CI has none;
they were run on a lent H200, see docs/results.md).
"""

from __future__ import annotations

import pytest
import torch

from purer.config import RunConfig
from purer.engine.trainer import ECITrainer
from purer.errors import ConfigError
from purer.interfaces import Curriculum
from purer.kernels.optim import load_optimizer_state, make_capturable
from purer.models import create_model
from purer.plugins import get_host
from purer.testing import FrozenNoise, inversion_loss
from purer.types import InputSpace, Teacher, find_bn_layers

SPACE = InputSpace(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class EveryOtherStep(Curriculum):
    """Switch on at odd steps: both graphs (on and off) get captured quickly."""

    def adversarial_scale(self, step: int) -> float:
        return 10.0 if step % 2 else 0.0

    def observe(self, step: int, accuracy: float) -> None:
        pass


def make_trainer(device: torch.device, cuda_graph: bool | str, capturable: bool = False) -> ECITrainer:
    torch.manual_seed(0)
    teachers = []
    for k in range(4):  # three 5-way teachers batched together, one 4-way alone
        classes = list(range(5 * k, 5 * k + (5 if k < 3 else 4)))
        model = create_model("conv4", num_classes=len(classes)).to(device).eval().requires_grad_(False)
        teachers.append(Teacher(f"t{k}", model, classes, [str(c) for c in classes], SPACE, arch="conv4",
                                bn_layers=find_bn_layers(model)))
    config = RunConfig(device=str(device), train={"shot": 1, "query": 3, "cuda_graph": cuda_graph})
    host = get_host()
    meta = host.create("meta_learner", "maml")
    meta.setup(create_model("conv4", num_classes=5), device)
    inverter = host.create("inverter", "deepinv")
    generator = torch.Generator().manual_seed(0)
    inverter.setup(teachers, 4, device, generator, inversion_loss())
    if capturable:  # the eager reference with the same (capturable) Adam arithmetic
        inverter.prepare_cuda_graph()
        meta.prepare_cuda_graph()
    return ECITrainer(config, None, device, teachers, meta, inverter, EveryOtherStep(), SPACE,
                      generator=generator)


def test_cuda_graph_needs_a_cuda_device():
    with pytest.raises(ConfigError, match="train.cuda_graph: needs a CUDA device, the run uses cpu"):
        make_trainer(torch.device("cpu"), cuda_graph=True)
    assert make_trainer(torch.device("cpu"), cuda_graph="auto").graphed is None  # the default


def copy_state(dst: ECITrainer, src: ECITrainer) -> None:
    """Give ``dst`` the memory, meta-model and optimiser states of ``src``, in place
    (a CUDA graph holds on to the tensors it captured)."""
    with torch.no_grad():
        for a, b in zip([*dst.inverter.memory, *dst.meta.model.parameters()],
                        [*src.inverter.memory, *src.meta.model.parameters()]):
            a.copy_(b)
        for d, s in ((dst.inverter.optimizer, src.inverter.optimizer), (dst.meta.optimizer, src.meta.optimizer)):
            d_state, s_state = d.state_dict()["state"], s.state_dict()["state"]
            for index, values in s_state.items():
                for name, value in values.items():
                    d_state[index][name].copy_(value)


@needs_cuda
def test_replayed_steps_equal_eager_steps():
    """Each step starts from the same state in both trainers: CUDA's atomics
    make two runs drift apart over steps (Adam's first step turns a 1e-9
    gradient difference into a sign), so trajectories are not compared."""
    device = torch.device("cuda")
    graphed = make_trainer(device, cuda_graph=True)
    eager = make_trainer(device, cuda_graph=False, capturable=True)
    # each switch state: 2 warm-up steps, a capture, then replays; a replay that
    # reused the captured draws instead of this step's would differ from eager
    for step in range(1, 13):
        copy_state(graphed, eager)
        got, want = graphed.outer_step(step), eager.outer_step(step)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (step, key)
    assert set(graphed.graphed.graphs) == {0.0, 10.0} and not graphed.graphed.failed


def test_loading_a_checkpoint_keeps_the_optimisers_own_capturable_setting():
    """A CUDA-graph run saves capturable Adam state; resuming it eagerly on a CPU must work."""
    param = torch.nn.Parameter(torch.randn(3))
    saved = torch.optim.Adam([param])
    param.grad = torch.ones(3)
    saved.step()
    state = saved.state_dict()
    state["param_groups"][0]["capturable"] = True  # as written by a graphed run
    resumed = torch.optim.Adam([param])
    load_optimizer_state(resumed, state)
    assert resumed.param_groups[0]["capturable"] is False
    resumed.step()  # a capturable Adam would refuse to step on a CPU
    assert float(resumed.state[param]["step"]) == 2.0
    make_capturable(resumed)
    assert resumed.param_groups[0]["capturable"] is True
    assert resumed.state[param]["step"].dtype == torch.float32


def test_a_plain_inverter_plugin_runs_eagerly():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = make_trainer(device, cuda_graph="auto")
    inverter = FrozenNoise()
    inverter.setup(reference.teachers, 4, device, torch.Generator().manual_seed(0), inversion_loss())
    trainer = ECITrainer(reference.config, None, device, reference.teachers, reference.meta, inverter,
                         EveryOtherStep(), SPACE, generator=torch.Generator().manual_seed(0))
    assert trainer.graphed is None  # auto: no graph support declared, so eager
    records = [trainer.outer_step(step) for step in (1, 2)]
    assert [r["inv_total"] for r in records] == [0.0, 0.0]
    assert [r["switch"] for r in records] == [True, False]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 for r in records)
