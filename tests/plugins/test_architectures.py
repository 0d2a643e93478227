"""The few-shot backbones as timm models, and the helpers of purer.models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from purer_plugins.architectures import BACKBONES
from purer_plugins.architectures.backbones import CIFAR_MEAN, CIFAR_STD
from timm.models import _registry

from purer.errors import PluginError
from purer.models import create_model, head_parameter_names, input_space_of, parameter_count
from purer.plugins import get_host

TINY = {"conv4": {"width": 8}, "cifar_resnet10": {"width": 0.125},
        "cifar_resnet18": {"width": 0.125}}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_split_matches_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **TINY[name]).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.dim() == 4
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (3, model.num_features)
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model(x).shape == (3, 5)


def test_conv4_feature_sizes() -> None:
    assert create_model("conv4", num_classes=5).num_features == 128  # 32 x 2 x 2
    model = create_model("conv4", num_classes=5, img_size=84)
    assert model.num_features == 32 * 5 * 5
    assert model(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    assert model.pretrained_cfg["input_size"] == (3, 84, 84)
    with pytest.raises(ValueError, match="img_size"):
        create_model("conv4", num_classes=5, img_size=8)


def test_reference_parameter_counts() -> None:
    """Full widths match the standard topologies (conv4: 29,541 for 5-way;
    CIFAR ResNet-18 for 10 classes: 11,173,962 as in the usual implementation)."""
    assert parameter_count(create_model("conv4", num_classes=5)) == 29_541
    assert parameter_count(create_model("cifar_resnet18", num_classes=10)) == 11_173_962
    r10 = create_model("cifar_resnet10", num_classes=5)
    assert r10.num_features == 512
    assert [len(s) for s in r10.stages] == [1, 1, 1, 1]


def test_resnet_topology() -> None:
    model = create_model("cifar_resnet18", num_classes=5, width=0.125)
    assert [len(s) for s in model.stages] == [2, 2, 2, 2]
    assert model.stem.conv.stride == (1, 1) and model.stem.conv.bias is None
    firsts = [s[0] for s in model.stages]
    assert [b.conv1.stride[0] for b in firsts] == [1, 2, 2, 2]
    assert isinstance(firsts[0].downsample, torch.nn.Identity)
    assert all(isinstance(b.downsample, torch.nn.Sequential) for b in firsts[1:])
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_classifier_api(name: str) -> None:
    model = create_model(name, num_classes=5, **TINY[name])
    assert head_parameter_names(model) == {"fc.weight", "fc.bias"}
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    model.reset_classifier(0)
    assert head_parameter_names(model) == set()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


def test_head_parameter_names_of_timm_models() -> None:
    vit = create_model("test_vit", num_classes=5)
    assert head_parameter_names(vit) == {"head.weight", "head.bias"}
    eff = create_model("test_efficientnet", num_classes=5)
    assert head_parameter_names(eff) == {"classifier.weight", "classifier.bias"}
    backbone = {n for n, _ in eff.named_parameters()} - head_parameter_names(eff)
    assert backbone and all(not n.startswith("classifier") for n in backbone)


def test_input_space_of() -> None:
    space = input_space_of(create_model("conv4", num_classes=5))
    assert (space.size, space.mean, space.std) == (32, CIFAR_MEAN, CIFAR_STD)
    assert input_space_of(create_model("test_vit", num_classes=5)).size == 160
    assert input_space_of(create_model("test_efficientnet", num_classes=5)).mean == \
        pytest.approx((0.485, 0.456, 0.406))
    r18 = input_space_of(create_model("resnet18", num_classes=5))
    assert r18.size == 224
    assert input_space_of(torch.nn.Linear(2, 2), default_size=84).size == 84


def test_names_do_not_collide_with_timm() -> None:
    """In a fresh interpreter, timm's own list has none of our names, and
    registering them warns about no overwrite."""
    code = ("import warnings, timm; own = set(timm.list_models()); "
            "warnings.simplefilter('error'); from purer_plugins.architectures import BACKBONES; "
            "import purer_plugins.architectures.backbones; "
            "assert not set(BACKBONES) & own, set(BACKBONES) & own; "
            "assert set(BACKBONES) <= set(timm.list_models())")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_names_registered_by_us() -> None:
    ours = set(BACKBONES)
    assert get_host().registries["architecture"].keys() >= ours
    for name in ours:
        factory = get_host().get("architecture", name)  # imports the backbones on first use
        assert timm.is_model(name)
        assert _registry._model_to_module[name] == "backbones"
        assert _registry._model_entrypoints[name] is factory


def test_unknown_architecture() -> None:
    with pytest.raises(PluginError, match="unknown architecture 'no_such_net'"):
        create_model("no_such_net", num_classes=5)


def test_pretrained_refused() -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("conv4", pretrained=True)
