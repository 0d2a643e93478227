"""Baseline initialisers: average/OTA refuse mixed zoos, OTA undoes permutations,
maml-real trains on a memory-sized slice of real data."""

from __future__ import annotations

import copy

import pytest
import torch
from purer_plugins.initializers.ota import OTAError, _permute_in, plan_alignment
from torch import nn

from purer.models import create_model
from purer.plugins import get_host
from purer.testing import TINY_ARCH_KWARGS, synthetic_split
from purer.types import Teacher

SPACE = synthetic_split(num_classes=1, per_class=1).space


def model_of(arch: str, seed: int, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, **TINY_ARCH_KWARGS[arch])
    with torch.no_grad():  # non-trivial BN parameters and statistics, so they must be aligned too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def teacher(model: nn.Module, arch: str, name: str = "t") -> Teacher:
    return Teacher(name, model, list(range(5)), [f"c{i}" for i in range(5)], SPACE, arch=arch)


def shuffled(model: nn.Module, seed: int) -> nn.Module:
    """The same function with every hidden layer's neurons in a random order."""
    g = torch.Generator().manual_seed(seed)
    plan = plan_alignment(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    width = {la.out_space: state[f"{la.name}.weight"].shape[0] for la in plan.layers
             if la.kind != "bn"}
    perms = {s: torch.randperm(width[s], generator=g) for s in plan.spaces}
    for la in plan.layers:
        prefix = la.name + "."
        for key in [k for k in state if k.startswith(prefix) and "." not in k[len(prefix):]]:
            value = state[key]
            if value.dim() == 0:
                continue
            if la.out_space in perms:
                value = value[perms[la.out_space]]
            if key.endswith("weight") and la.kind != "bn" and la.in_space in perms:
                value = _permute_in(value, perms[la.in_space], la.in_flat)
            state[key] = value
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


# ---------------------------------------------------------------------- mixed zoos
@pytest.mark.parametrize("name", ["average", "ota"])
def test_weight_space_baselines_refuse_mixed_architectures(name):
    teachers = [teacher(model_of("conv4", 0), "conv4"),
                teacher(model_of("cifar_resnet10", 1), "cifar_resnet10")]
    init = get_host().create("initializer", name)
    with pytest.raises(ValueError, match="architecture"):
        init.initialize(create_model("conv4", num_classes=5, **TINY_ARCH_KWARGS["conv4"]), teachers)


# ---------------------------------------------------------------------- OTA
@pytest.mark.parametrize("arch", ["conv4", "cifar_resnet10"])
def test_ota_on_permuted_copies_recovers_the_network(arch):
    original = model_of(arch, 0)
    copy_ = shuffled(original, seed=1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy_(x), original(x), rtol=1e-4, atol=1e-4)
    first = next(n for n, p in original.named_parameters() if p.dim() == 4)
    assert not torch.equal(copy_.state_dict()[first], original.state_dict()[first])
    fused = create_model(arch, num_classes=5, **TINY_ARCH_KWARGS[arch])
    get_host().create("initializer", "ota").initialize(
        fused, [teacher(original, arch, "a"), teacher(copy_, arch, "b")])
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), original(x), rtol=1e-4, atol=1e-4)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key].float(), value.float())


def test_ota_differs_from_plain_averaging_on_distinct_teachers():
    teachers = [teacher(model_of("conv4", s), "conv4", f"t{s}") for s in range(3)]
    ota = create_model("conv4", num_classes=5, **TINY_ARCH_KWARGS["conv4"])
    avg = copy.deepcopy(ota)
    get_host().create("initializer", "ota").initialize(ota, teachers)
    get_host().create("initializer", "average").initialize(avg, teachers)
    key = "blocks.1.conv.weight"
    assert not torch.allclose(ota.state_dict()[key], avg.state_dict()[key])


def test_ota_names_what_it_cannot_align():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))

    with pytest.raises(OTAError, match="does not support"):
        plan_alignment(Concat(), "concat-net")
