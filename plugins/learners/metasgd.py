"""Meta-SGD (Li et al. 2017): MAML with a learned step size for every weight.

The inner step is ``theta' = theta - alpha * grad`` with ``alpha`` a tensor
of the parameter's shape, learned by the outer loop together with the
model (same Adam, same learning rate). ``alpha`` starts at ``inner_lr``
everywhere, so the first meta step is MAML's. The rates live outside the
model (:meth:`MAML.init_learned`): checkpoints hold them, the val-selected
checkpoint included, and meta-test adapts with them.
"""

from __future__ import annotations

import torch
from purer_plugins.learners import MetaSGDOptions
from purer_plugins.learners.maml import MAML, InnerGradient
from torch import Tensor

from purer.api import Params


class MetaSGD(MAML):
    """MAML whose inner step sizes are meta-parameters too."""

    Options = MetaSGDOptions

    def init_learned(self) -> dict[str, Tensor]:
        # full_like keeps each parameter's memory format (channels-last weights)
        return {name: torch.full_like(p.detach(), self.options.inner_lr).requires_grad_()
                for name, p in self.model.named_parameters()}

    @property
    def rates(self) -> dict[str, Tensor]:
        """The learned step size of each parameter, by parameter name."""
        return self.learned

    def inner_loop(self, params: Params, support: Tensor, labels: Tensor, steps: int, lr: float,
                   gradient: InnerGradient) -> Params:
        """``lr`` is not used: every entry moves by its own learned rate."""
        for _ in range(steps):
            grads = gradient(params, support, labels)
            params = {k: p - self.learned[k] * g for (k, p), g in zip(params.items(), grads)}
        return params
