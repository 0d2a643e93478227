"""The inversion terms of Eq. 2-4: cross-entropy, total variation, l2, BN statistics.

Each works on any model's pass (a teacher during meta-training, the adapted
meta-model in ICFIL) and under ``torch.func.vmap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from purer_plugins.inversion import BNStatisticsOptions
from torch import Tensor

from purer.api import InversionContext, InversionTerm, bn_statistics, l2_prior, total_variation


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

    def __call__(self, ctx: InversionContext) -> Tensor:
        if not ctx.bn_stats:
            return ctx.logits.new_zeros((), dtype=torch.float32)
        return bn_statistics(ctx.bn_stats, self.options.first_multiplier)
