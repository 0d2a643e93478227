"""Batch-statistics BatchNorm whose second derivative is cheap on CPU.

MAML differentiates through its inner gradient, so every BatchNorm of the
meta-model is differentiated twice. PyTorch's double backward of batch norm
is a composite of many reductions over (N, H, W), a large share of a CPU
meta step (docs/results.md). Here the forward and the
ordinary backward are PyTorch's native kernels, and only when a backward
itself must be differentiable (``create_graph=True``) is it written as a few
plain tensor ops that autograd can differentiate cheaply. Same function, same
derivatives; only the execution differs.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from purer.kernels.losses import batch_moments, moments_and_max_pool, per_channel


class _BatchStatsNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        if not torch.is_grad_enabled():  # first order only: the native kernel
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad_out, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
            return gx, gw, gb, None
        # Differentiable branch: the statistics are recomputed from x so that
        # their own dependence on x is part of the graph (the saved ones are constants).
        mean, var = batch_moments(x)
        invstd = torch.rsqrt(var + ctx.eps)
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        x_hat = (x - per_channel(mean, x.dim())) * per_channel(invstd, x.dim())
        grad_bias = grad_out.sum(dim=dims)
        grad_weight = (grad_out * x_hat).sum(dim=dims)
        grad_x = per_channel(weight * invstd, x.dim()) * (
            grad_out - per_channel(grad_bias / count, x.dim())
            - x_hat * per_channel(grad_weight / count, x.dim()))
        return grad_x, grad_weight, grad_bias, None


def batch_stats_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch norm with the batch's own statistics (training mode, no running stats)."""
    return _BatchStatsNorm.apply(x, weight, bias, eps)


def _forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    if torch._C._are_functorch_transforms_active():
        # vmap/grad: plain ops. PyTorch's batch_norm gives wrong second-order
        # gradients for the layers before it when differentiated through
        # torch.func.grad under vmap (torch 2.14, checked in float64 against
        # the loop), which MAML's batched meta step does.
        mean, var = batch_moments(x)
        invstd = torch.rsqrt(var + self.eps)
        return torch.addcmul(per_channel(self.bias, x.dim()), (x - per_channel(mean, x.dim())),
                             per_channel(self.weight * invstd, x.dim()))
    return batch_stats_norm(x, self.weight, self.bias, self.eps)


def use_batch_stats_norm(model: nn.Module) -> int:
    """Route every affine BatchNorm without running statistics through :func:`batch_stats_norm`.

    Meant for a model after ``torch.func.replace_all_batch_norm_modules_``.
    The modules, their parameters and their state-dict keys stay as they
    are; only their ``forward`` changes. Returns how many were rerouted.
    """
    count = 0
    for module in model.modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
                and module.running_mean is None):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def norm_relu_maxpool(x: Tensor, norm: nn.modules.batchnorm._BatchNorm, kernel: int,
                      bypassed: tuple[nn.Module, ...] = ()) -> Tensor | None:
    """``max_pool(relu(norm(x)))`` on CPU, computed on the pooled map.

    Once its statistics are known a BatchNorm is a per-channel affine map
    ``a * x + b``, and max pooling commutes with increasing maps: the pool
    of ``relu(a * x + b)`` is ``relu(a * max_pool(x) + b)`` where ``a > 0``
    and ``relu(a * min_pool(x) + b)`` where ``a < 0``. Only the statistics
    and the pool then read the full-size map; the affine map and the ReLU
    (and their backward and double backward, in MAML's meta step) run on a
    map ``kernel**2`` times smaller, and no normalised full-size map is
    written. The function and all its derivatives are the same (the tests
    check them in float64, second order included); only rounding differs.
    Why: on CPU these layers are bound by memory traffic over the first
    block's feature map, the largest map of the network.

    Returns ``None`` where this does not apply, so the caller runs its
    ordinary layers: tensors off the CPU (GPU paths are bound by kernel
    launches, and stay capturable), functorch transforms, a BatchNorm that
    would update running statistics, PyTorch's own batch norm under autograd
    (MAML's ``native_batch_norm`` comparison), and forward hooks on ``norm``
    or on the ``bypassed`` ReLU and pool modules, which would not fire.
    """
    if isinstance(x, torch.fx.Proxy):  # being traced: keep the layers visible
        return None
    source = _statistics_source(norm, torch.is_grad_enabled())
    if source is None or x.device.type != "cpu" or torch._C._are_functorch_transforms_active() \
            or hooked(norm, *bypassed):
        return None
    if source == "batch":
        mean, var, pooled = moments_and_max_pool(x, kernel)
    else:
        mean, var, pooled = norm.running_mean, norm.running_var, F.max_pool2d(x, kernel)
    scale = norm.weight * torch.rsqrt(var + norm.eps)
    shift = norm.bias - mean * scale
    negative = scale < 0
    if bool(negative.any()):
        pooled = torch.where(per_channel(negative, x.dim()), -F.max_pool2d(-x, kernel), pooled)
    return torch.relu(torch.addcmul(per_channel(shift, x.dim()), pooled, per_channel(scale, x.dim())))


def _statistics_source(norm: nn.modules.batchnorm._BatchNorm, grad: bool) -> str | None:
    """``"batch"``, ``"running"`` or ``None`` (no shortcut) for ``norm``."""
    if not norm.affine or (norm.training and norm.running_mean is not None):
        return None  # training with running statistics: their update must happen
    if getattr(norm.forward, "__func__", None) is _forward:
        return "batch"
    if norm.training or norm.running_mean is None:
        return None if grad else "batch"
    return "running"


def hooked(*modules: nn.Module) -> bool:
    """True when running ``modules`` by hand would skip a forward hook."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def has_module_hooks(model: nn.Module) -> bool:
    """Any forward or backward hook on ``model`` or its submodules (a copy
    of the module tree run on another thread would not fire them)."""
    modules = list(model.modules())
    return hooked(*modules) or any(m._backward_hooks or m._backward_pre_hooks for m in modules)
