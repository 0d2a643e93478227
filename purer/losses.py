"""The image priors of model inversion (paper Eq. 3-4), as plain functions.

Norms follow the reference implementation: plain (not squared) L2 norms over
the whole batch tensor, so their scale depends on the batch size; the weights
in method.md are tuned for that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


def batch_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a BN layer's input (dim 1 = channels)."""
    dims = [d for d in range(features.dim()) if d != 1]
    var, mean = torch.var_mean(features, dim=dims, correction=0)
    return mean, var


def bn_statistics(stats: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
                  first_multiplier: float = 1.0) -> Tensor:
    """Eq. 4: distance of each BN layer's batch moments to its running ones."""
    total = torch.zeros((), device=stats[0][0].device) if stats else torch.zeros(())
    for i, (mean, var, running_mean, running_var) in enumerate(stats):
        term = torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
        total = total + (first_multiplier if i == 0 else 1.0) * term
    return total
