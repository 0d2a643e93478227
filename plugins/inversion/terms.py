"""The inversion terms of Eq. 2-4: cross-entropy, total variation, l2, BN
statistics; and ``input-stats``, a prior for teachers without BN.

Each works on any model's pass (a teacher during meta-training, the adapted
meta-model in ICFIL) and under ``torch.func.vmap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from purer_plugins.inversion import BNStatisticsOptions
from torch import Tensor

from purer.api import (
    InversionContext,
    InversionTerm,
    Teacher,
    bn_statistics,
    l2_prior,
    total_variation,
)


class CrossEntropyTerm(InversionTerm):
    """Eq. 2's data term: the model should assign each image its class."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return F.cross_entropy(ctx.logits.float(), ctx.targets)


class TotalVariationTerm(InversionTerm):
    """Eq. 3's smoothness prior, on the un-jittered images."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return total_variation(ctx.images)


class L2Term(InversionTerm):
    """Eq. 3's magnitude prior."""

    def __call__(self, ctx: InversionContext) -> Tensor:
        return l2_prior(ctx.images)


class BNStatisticsTerm(InversionTerm):
    """Eq. 4: feature statistics should match the model's BN targets.

    A model without BN layers contributes zero (the zoo loader says so once).
    """

    Options = BNStatisticsOptions

    def applies_to(self, teacher: Teacher | None) -> bool:
        return teacher is None or teacher.has_bn

    def __call__(self, ctx: InversionContext) -> Tensor:
        if not ctx.bn_stats:
            return ctx.logits.new_zeros((), dtype=torch.float32)
        return bn_statistics(ctx.bn_stats, self.options.first_multiplier)


class InputStatisticsTerm(InversionTerm):
    """Input statistics of natural images, for teachers without BN.

    Without BN layers a teacher's images come from cross-entropy, TV and l2
    alone. A teacher's input normalisation is fitted to its training data, so in
    its normalised space real images have per-channel mean 0 and variance 1;
    this term pulls the pseudo images' per-channel moments there (the BN
    term's form, at the input instead of a hidden layer), and the same for
    the variance of 2x2 patch means towards 1 as well (neighbouring pixels
    of natural images are strongly correlated, so averaging them keeps most
    of the variance; noise loses three quarters of it). BN teachers have better targets
    in their running statistics and do not get it.
    """

    def applies_to(self, teacher: Teacher | None) -> bool:
        return teacher is not None and not teacher.has_bn

    def __call__(self, ctx: InversionContext) -> Tensor:
        x = ctx.images.float()
        loss = x.new_zeros(())
        for level in (x, F.avg_pool2d(x, 2)):
            var, mean = torch.var_mean(level, dim=(0, 2, 3), correction=0)
            loss = loss + torch.linalg.vector_norm(mean) + torch.linalg.vector_norm(var - 1.0)
        return loss
