"""Batch-statistics BatchNorm with a cheap double backward (purer.batch_norm)."""

import torch
import torch.nn.functional as F
from purer_plugins.learners import MAMLOptions
from purer_plugins.learners.maml import MAML

from purer.kernels.batch_norm import batch_stats_norm, norm_relu_maxpool, use_batch_stats_norm
from purer.models import create_model
from purer.types import EpisodeBatch


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(3, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    return x, w, b


def test_matches_native_batch_norm_in_value_and_derivatives():
    x, w, b = _inputs()
    assert torch.allclose(batch_stats_norm(x, w, b), F.batch_norm(x, None, None, w, b, training=True))
    assert torch.autograd.gradcheck(batch_stats_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(batch_stats_norm, (x, w, b))


def test_rerouting_keeps_parameters_and_counts_layers():
    model = create_model("conv4", num_classes=5)
    keys = set(model.state_dict())
    torch.func.replace_all_batch_norm_modules_(model)
    assert use_batch_stats_norm(model) == 4
    assert set(model.state_dict()) <= keys


def _maml(native: bool) -> MAML:
    torch.manual_seed(0)
    meta = MAML(MAMLOptions(native_batch_norm=native, channels_last="off"))
    meta.setup(create_model("conv4", num_classes=5, img_size=16), torch.device("cpu"))
    return meta


def test_second_order_meta_gradient_equals_pytorchs():
    g = torch.Generator().manual_seed(1)
    episodes = EpisodeBatch(
        support=torch.randn(2, 10, 3, 16, 16, generator=g),
        support_labels=torch.arange(5).repeat_interleave(2).expand(2, -1),
        query=torch.randn(2, 15, 3, 16, 16, generator=g),
        query_labels=torch.arange(5).repeat_interleave(3).expand(2, -1), classes=None)
    grads = {}
    for native in (True, False):
        meta = _maml(native)
        loss, _ = meta.outer_loss(episodes, create_graph=True)
        loss.backward()
        grads[native] = {n: p.grad for n, p in meta.model.named_parameters()}
    for name, reference in grads[True].items():
        if reference.norm() > 1e-4:  # conv biases before BN have a zero gradient (float noise)
            assert torch.allclose(grads[False][name], reference, rtol=1e-3, atol=1e-5), name


def _plain_block(block, x):
    return block.pool(block.act(block.bn(block.conv(x))))


def test_pooled_shortcut_matches_the_plain_block():
    """Conv4's norm-ReLU-pool on the pooled map gives the plain layers' numbers,
    for batch statistics (MAML's meta-model) and running statistics (a teacher),
    including channels whose BatchNorm scale is negative."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    for rerouted in (True, False):
        model = create_model("conv4", num_classes=5)
        block = model.blocks[0]
        with torch.no_grad():
            block.bn.weight.copy_(torch.randn(block.bn.weight.shape))  # about half negative
            block.bn.running_mean.normal_()
            block.bn.running_var.uniform_(0.5, 2.0)
        if rerouted:
            torch.func.replace_all_batch_norm_modules_(model)
            use_batch_stats_norm(model)
        else:
            model.eval()
        assert (block.bn.weight < 0).any() and (block.bn.weight > 0).any()
        with torch.no_grad():
            assert norm_relu_maxpool(block.conv(x), block.bn, 2) is not None
            torch.testing.assert_close(block(x), _plain_block(block, x), rtol=1e-5, atol=1e-5)


def test_pooled_shortcut_gives_the_plain_second_order_meta_gradient(monkeypatch):
    """MAML's meta step through the shortcut: the same meta-gradient and the same
    gradients into the support and query images (float64), negative BN scales included."""
    import purer_plugins.architectures.backbones as architectures

    g = torch.Generator().manual_seed(3)
    support = torch.randn(2, 10, 3, 32, 32, generator=g, dtype=torch.double, requires_grad=True)
    query = torch.randn(2, 15, 3, 32, 32, generator=g, dtype=torch.double, requires_grad=True)
    episodes = EpisodeBatch(support, torch.arange(5).repeat_interleave(2).expand(2, -1),
                            query, torch.arange(5).repeat_interleave(3).expand(2, -1), classes=None)
    grads = []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(architectures, "norm_relu_maxpool", lambda *args: None)
        torch.manual_seed(0)
        meta = MAML(MAMLOptions())
        meta.setup(create_model("conv4", num_classes=5).double(), torch.device("cpu"))
        with torch.no_grad():
            for block in meta.model.blocks:
                block.bn.weight.copy_(torch.randn(block.bn.weight.shape, dtype=torch.double))
        support.grad = query.grad = None
        loss, _ = meta.outer_loss(episodes, create_graph=True)
        loss.backward()
        grads.append({"support": support.grad, "query": query.grad,
                      **{n: p.grad for n, p in meta.model.named_parameters() if "conv.bias" not in n}})
    for name, reference in grads[1].items():  # conv biases before BN: zero in theory, float noise here
        torch.testing.assert_close(grads[0][name], reference, rtol=1e-9, atol=1e-12, msg=name)


def test_pooled_shortcut_leaves_training_statistics_alone():
    model = create_model("conv4", num_classes=5).train()
    bn = model.blocks[0].bn
    with torch.no_grad():
        assert norm_relu_maxpool(torch.randn(4, 32, 8, 8), bn, 2) is None  # would skip the running-stat update
        before = bn.running_mean.clone()
        model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before, bn.running_mean)


def test_pooled_shortcut_keeps_pytorchs_batch_norm_under_autograd():
    # MAML's native_batch_norm option compares with PyTorch's own double backward.
    native = create_model("conv4", num_classes=5)
    torch.func.replace_all_batch_norm_modules_(native)  # batch statistics, PyTorch's kernels
    assert norm_relu_maxpool(torch.randn(4, 32, 8, 8), native.blocks[0].bn, 2) is None
    with torch.no_grad():
        assert norm_relu_maxpool(torch.randn(4, 32, 8, 8), native.blocks[0].bn, 2) is not None


def test_pooled_shortcut_keeps_forward_hooks_firing():
    # ICFIL and DeepInversion-style code read BN inputs through hooks; a bypassed
    # BatchNorm would silently skip them.
    model = create_model("conv4", num_classes=5).eval()
    seen = []
    handle = model.blocks[0].bn.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert seen == [torch.Size([2, 32, 32, 32])]
