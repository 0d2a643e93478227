"""Batch-statistics BatchNorm with a cheap double backward (purer.batch_norm)."""

import torch
import torch.nn.functional as F
from purer_plugins.maml import MAML, MAMLOptions

from purer.batch_norm import batch_stats_norm, use_batch_stats_norm
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
