"""Folded teacher views: same logits, BN moments and input gradients as hooks."""

import copy

import pytest
import torch
from torch import Tensor, nn

from purer.kernels.teacher_view import FoldedTeacher, HookedTeacher, teacher_view
from purer.models import create_model
from purer.runtime import strict_fp32, tune_allocator
from purer.types import find_bn_layers


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affines (some negative scales), frozen, float64."""
    g = torch.Generator().manual_seed(seed)
    for bn in find_bn_layers(model):
        n = bn.running_mean.numel()
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if bn.weight is not None:
            bn.weight.data.copy_(torch.randn(n, generator=g))
            bn.bias.data.copy_(torch.randn(n, generator=g))
    return model.double().eval().requires_grad_(False)


def outputs(view: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    x = x.clone().requires_grad_()
    logits, stats = view(x)
    moments = [t for mean, var, _, _ in stats for t in (mean, var)]
    loss = logits.square().sum() + sum((m - rm).norm() + (v - rv).norm() for m, v, rm, rv in stats)
    return logits.detach(), [t.detach() for t in moments], torch.autograd.grad(loss, x)[0]


def assert_same(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    logits_a, moments_a, grad_a = outputs(a, x)
    logits_b, moments_b, grad_b = outputs(b, x)
    assert torch.allclose(logits_a, logits_b, rtol=1e-9, atol=1e-9)
    assert len(moments_a) == len(moments_b)
    assert all(torch.allclose(p, q, rtol=1e-9, atol=1e-9) for p, q in zip(moments_a, moments_b))
    assert torch.allclose(grad_a, grad_b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("arch,size", [("conv4", 32), ("cifar_resnet10", 32), ("resnet18", 32)])
def test_folded_view_matches_hooks(arch, size):
    model = trained_like(create_model(arch, num_classes=5))
    bn = find_bn_layers(model)
    folded = teacher_view(model, bn)
    assert isinstance(folded, FoldedTeacher)
    x = torch.randn(6, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same(folded, HookedTeacher(model, bn), x)


def test_batch_norms_are_folded_and_relus_moved_after_pools():
    model = trained_like(create_model("resnet18", num_classes=5))  # stem: conv-bn-relu-maxpool
    folded = teacher_view(model, find_bn_layers(model))
    modules = dict(folded.graph_module.named_modules())
    called = [type(modules[n.target]) for n in folded.graph_module.graph.nodes if n.op == "call_module"]
    assert nn.BatchNorm2d not in called
    code = folded.graph_module.code
    assert code.index("self.maxpool(") < code.index("torch.relu(maxpool")


def test_original_teacher_is_untouched():
    model = trained_like(create_model("conv4", num_classes=5))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    expected = model(x)
    teacher_view(model, find_bn_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.blocks[0].bn, nn.BatchNorm2d)
    assert torch.equal(model(x), expected)


def test_bn_not_after_a_conv_and_tiny_scales_keep_their_affine():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    model = trained_like(model)
    model[4].weight.data[0] = 1e-6  # folding would divide by this
    bn = find_bn_layers(model)
    folded = teacher_view(model, bn)
    assert isinstance(folded, FoldedTeacher)
    taps = [m for name, m in folded.graph_module.named_modules() if name.startswith("purer_tap")]
    assert [t.folded for t in taps] == [False, False]
    assert_same(folded, HookedTeacher(model, bn), torch.randn(5, 3, 8, 8, dtype=torch.float64))


class ConvBN(nn.Module):
    """Conv + BN; subclasses decide what happens to the BN output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)


class Untraceable(ConvBN):
    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))  # data-dependent branch


class InPlaceAfterBN(ConvBN):
    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        y.mul_(2.0)  # fine on BN's output, fatal on a folded conv's output kept for the moments
        return y.mean((2, 3))


@pytest.mark.parametrize("cls", [Untraceable, InPlaceAfterBN])
def test_views_that_cannot_fold_exactly_fall_back_to_hooks(cls):
    model = trained_like(cls())
    example = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    view = teacher_view(model, find_bn_layers(model), example=example)
    assert isinstance(view, HookedTeacher)
    assert_same(view, HookedTeacher(model, find_bn_layers(model)), example)


def test_fold_can_be_switched_off():
    model = trained_like(create_model("conv4", num_classes=5))
    assert isinstance(teacher_view(model, find_bn_layers(model), fold=False), HookedTeacher)


def test_allocator_tuning_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("PURER_MALLOC_TUNING", "0")
    assert tune_allocator() is False
    monkeypatch.delenv("PURER_MALLOC_TUNING")
    assert isinstance(tune_allocator(), bool)  # True on glibc; harmless to repeat


def test_strict_fp32_turns_off_tf32_convolutions_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setenv("PURER_TF32", "1")
    assert strict_fp32() is False and torch.backends.cudnn.allow_tf32 is True
    monkeypatch.delenv("PURER_TF32")
    assert strict_fp32() is True and torch.backends.cudnn.allow_tf32 is False
