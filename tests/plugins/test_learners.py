"""MAML's meta step: episodes one by one or together under vmap give the same gradients."""

import pytest
import torch
from purer_plugins.learners import MAMLOptions
from purer_plugins.learners.maml import MAML

from purer.errors import ConfigError
from purer.models import create_model
from purer.plugins import get_host
from purer.testing import random_episodes


def _episodes(count: int = 3, way: int = 5, shot: int = 2, query: int = 3):
    episodes = random_episodes(count, way, shot, query)
    return episodes, episodes.support, episodes.query


def _outer_gradients(batch_episodes: str, first_order: bool):
    torch.manual_seed(0)
    meta = MAML(MAMLOptions(batch_episodes=batch_episodes, first_order=first_order, inner_steps=2,
                            inner_lr=0.1, channels_last="off"))
    meta.setup(create_model("conv4", num_classes=5, img_size=16).double(), torch.device("cpu"))
    episodes, support, query = _episodes()
    loss, accuracy = meta.outer_loss(episodes, create_graph=True)
    inputs = [*meta.params().values(), support, query]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return loss, accuracy, dict(zip([*meta.params(), "support", "query"], grads))


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_episodes_equal_the_loop(first_order):
    loop_loss, loop_acc, loop = _outer_gradients("loop", first_order)
    vmap_loss, vmap_acc, vmapped = _outer_gradients("vmap", first_order)
    assert torch.allclose(loop_loss, vmap_loss, rtol=1e-12)
    assert loop_acc == vmap_acc
    for name, reference in loop.items():
        got = vmapped[name]
        if reference is None:  # first order: the support images do not reach the outer loss
            assert got is None or got.abs().max() == 0, name
            continue
        # conv biases before a batch-statistics BN have no effect: both must be ~0, not just close
        assert torch.allclose(got, reference, rtol=1e-9, atol=1e-12), name
    assert loop["support"] is not None or first_order  # second order reaches the support images


def test_vmapped_episodes_refuse_pytorchs_batch_norm():
    with pytest.raises(ConfigError, match="batch_episodes='vmap' needs native_batch_norm=false"):
        get_host().create("meta_learner", "maml", {"batch_episodes": "vmap", "native_batch_norm": True},
                          "meta")
