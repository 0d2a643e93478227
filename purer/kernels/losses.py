"""The image priors of model inversion (paper Eq. 3-4), as plain functions.

Norms follow the reference implementation: plain (not squared) L2 norms over
the whole batch tensor, so their scale depends on the batch size; the weights
in method.md are tuned for that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def total_variation(x: Tensor) -> Tensor:
    """Eq. 3's R_TV: L2 norms of differences to the horizontal, vertical and
    both diagonal neighbours, summed (DeepInversion's four-direction prior)."""
    right = x[..., :, :-1] - x[..., :, 1:]
    down = x[..., :-1, :] - x[..., 1:, :]
    diag = x[..., 1:, :-1] - x[..., :-1, 1:]
    anti = x[..., :-1, :-1] - x[..., 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (right, down, diag, anti))


def l2_prior(x: Tensor) -> Tensor:
    """Eq. 3's R_l2: the L2 norm of the whole image batch."""
    return torch.linalg.vector_norm(x)


def _moment_values(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (no autograd: the callers' own backward)."""
    if x.device.type == "cpu":
        # PyTorch's BatchNorm statistics kernel: two reads of x and no
        # map-sized temporaries, so faster than the sums below. It
        # accumulates in float, as BatchNorm itself does.
        return torch.batch_norm_update_stats(x, None, None, 0.0)
    return summed_moments(x)


def summed_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """The moments as two sums of plain, differentiable ops: off the CPU and
    under functorch transforms, where the custom backward does not apply."""
    dims = [d for d in range(x.dim()) if d != 1]
    count = x.numel() // x.shape[1]
    mean = x.sum(dim=dims) / count
    centred = x - per_channel(mean, x.dim())
    return mean, (centred * centred).sum(dim=dims) / count


def _moment_grad(x: Tensor, mean: Tensor, grad_mean: Tensor, grad_var: Tensor) -> Tensor:
    """The gradient into ``x`` of both moments: affine in ``x``
    (``d mean = g_m / M``, ``d var = 2 g_v (x - mean) / M``), so one ``addcmul``;
    differentiable, so double backward works."""
    count = x.numel() // x.shape[1]
    scale = (2.0 / count) * grad_var
    offset = grad_mean / count - scale * mean
    return torch.addcmul(per_channel(offset, x.dim()), x, per_channel(scale, x.dim()))


class _BatchMoments(torch.autograd.Function):
    """Per-channel mean and biased variance with a one-pass backward.

    Why not ``torch.var_mean``: on CPU its reduction over (N, H, W) is much
    slower than two plain sums, and its backward takes several full passes
    over the feature map; with every teacher's BN layers in every step this
    dominated an ECI step (docs/results.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = _moment_values(x)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> Tensor:
        x, mean = ctx.saved_tensors
        return _moment_grad(x, mean, grad_mean, grad_var)


class _MomentsAndMaxPool(torch.autograd.Function):
    """:class:`_BatchMoments` and a max-pool of the same map, with one backward buffer.

    Separately, the backward writes a map-sized gradient three times: the
    pool's backward zero-fills a buffer and scatters into it, the moments'
    backward writes another, and autograd adds them. Here the moments'
    gradient is written once and the pool's is scattered into it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: int) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = _moment_values(x)
        pooled, indices = F.max_pool2d_with_indices(x, kernel)
        ctx.save_for_backward(x, mean, indices)
        ctx.mark_non_differentiable(indices)
        return mean, var, pooled

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor, grad_pooled: Tensor):
        x, mean, indices = ctx.saved_tensors
        grad_x = _moment_grad(x, mean, grad_mean, grad_var)
        _add_pooled_grad(grad_x, indices, grad_pooled)
        return grad_x, None


def _is_channels_last(t: Tensor) -> bool:
    """NHWC storage that is not also NCHW (one channel or a 1x1 map is both)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _add_pooled_grad(grad_x: Tensor, indices: Tensor, grad_pooled: Tensor) -> None:
    """``grad_x[n, c].flat[indices[n, c]] += grad_pooled[n, c]``, in place: a max-pool's backward.

    Why two paths: ``indices`` count within one channel's ``H x W`` plane, so
    the plain scatter walks ``grad_x`` by its ``H x W`` dims. On a
    channels-last map those are ``C`` elements apart, a strided walk several
    times slower than the pool's own forward. There each plane index becomes
    an offset into the image's contiguous NHWC storage (``index * C + c``)
    and one scatter runs along it (docs/results.md has the timings).
    Windows do not overlap (kernel = stride), so every element gets at most
    one term and both paths give the same bits.
    """
    if _is_channels_last(grad_x) and _is_channels_last(indices):
        n, c = grad_x.shape[:2]
        channel = torch.arange(c, device=indices.device)
        offsets = torch.add(per_channel(channel, 4), indices, alpha=c)  # channels-last like indices
        grad_x.permute(0, 2, 3, 1).view(n, -1).scatter_add_(
            1, offsets.permute(0, 2, 3, 1).reshape(n, -1), grad_pooled.permute(0, 2, 3, 1).reshape(n, -1))
        return
    grad_x.flatten(2).scatter_add_(2, indices.flatten(2), grad_pooled.flatten(2))


def per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a per-channel vector ``[C]`` so it broadcasts over ``[N, C, ...]`` of ``ndim`` dims."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def batch_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a BN layer's input (dim 1 = channels).

    Under ``torch.func`` transforms (teachers or episodes batched with
    ``vmap``) the plain reductions are used: the custom backward above is
    for eager CPU speed and has no batching rule.
    """
    if torch._C._are_functorch_transforms_active():
        return summed_moments(features)
    return _BatchMoments.apply(features)


def moments_and_max_pool(features: Tensor, kernel: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`batch_moments` of ``features`` ``[N, C, H, W]`` and
    ``F.max_pool2d(features, kernel)``: the same values and derivatives as the
    two apart, with a backward that touches the map fewer times (eager CPU)."""
    if torch._C._are_functorch_transforms_active():
        return (*batch_moments(features), F.max_pool2d(features, kernel))
    return _MomentsAndMaxPool.apply(features, kernel)


def bn_statistics(stats: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
                  first_multiplier: float = 1.0) -> Tensor:
    """Eq. 4: distance of each BN layer's batch moments to its running ones."""
    total = torch.zeros((), device=stats[0][0].device) if stats else torch.zeros(())
    for i, (mean, var, running_mean, running_var) in enumerate(stats):
        term = torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
        total = total + (first_multiplier if i == 0 else 1.0) * term
    return total
