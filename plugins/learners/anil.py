"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts the classifier head only.

The body (every parameter outside ``head_names()``) does not move in the
inner loop, so the support set's embedding is computed once per episode and
the inner steps are steps of a linear head on fixed features: nearly free.
The body is meta-learned through the outer loss: directly through the
query embedding, and (second order, the default) through the support
embedding that the head's inner gradient depends on. That second path is
also how the gradient switch's reversed loss reaches the support images.

Any timm model works whose classifier (``get_classifier()``) is one module
applied to the pre-logit features (``forward_head(..., pre_logits=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from purer_plugins.learners import ANILOptions
from purer_plugins.learners.maml import MAML, InnerGradient
from torch import Tensor, nn
from torch.func import functional_call, grad

from purer.api import ConfigError, Params


def classifier_prefix(model: nn.Module) -> str:
    """The module path of ``model``'s classifier head; one module, or ConfigError."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = [name for name, module in model.named_modules() if module is head and name]
    if not isinstance(head, nn.Module) or not names:
        raise ConfigError(f"meta-learner anil needs a meta-model whose get_classifier() is one submodule; "
                          f"{type(model).__name__} has {type(head).__name__}")
    return names[0]


class ANIL(MAML):
    """Almost no inner loop: MAML's outer loop, a head-only inner loop."""

    Options = ANILOptions

    def setup(self, model: nn.Module, device: torch.device) -> None:
        super().setup(model, device)
        self.head_prefix = classifier_prefix(self.model)
        self.head = self.head_names()

    def _head_logits(self, head: Params, features: Tensor, worker: int | None) -> Tensor:
        """The classifier module alone, run on ``head`` (names as in :meth:`params`)."""
        module = self._module(worker).get_submodule(self.head_prefix)
        cut = len(self.head_prefix) + 1
        return functional_call(module, {k[cut:]: v for k, v in head.items()}, (features,))

    def _adapt(self, support: Tensor, labels: Tensor, create_graph: bool, params: Params | None,
               steps: int, lr: float, worker: int | None) -> Params:
        params = self.params() if params is None else params
        features = self._features(params, support, worker)
        if not create_graph:  # first order: the support embedding reaches nothing outer
            features = features.detach()

        def gradient(h: Params, fs: Tensor, ys: Tensor) -> list[Tensor]:
            loss = F.cross_entropy(self._head_logits(h, fs, worker), ys)
            return list(torch.autograd.grad(loss, list(h.values()), create_graph=create_graph))

        return self._with_head(params, features, labels, steps, lr, gradient)

    def _adapt_functional(self, params: Params, support: Tensor, labels: Tensor, steps: int, lr: float,
                          detach: bool) -> Params:
        features = self._features(params, support, None)
        if detach:
            features = features.detach()

        def head_loss(h: Params, fs: Tensor, ys: Tensor) -> Tensor:
            return F.cross_entropy(self._head_logits(h, fs, None), ys)

        def gradient(h: Params, fs: Tensor, ys: Tensor) -> list[Tensor]:
            grads = grad(head_loss)(h, fs, ys)
            return [grads[k].detach() if detach else grads[k] for k in h]

        return self._with_head(params, features, labels, steps, lr, gradient)

    def _with_head(self, params: Params, features: Tensor, labels: Tensor, steps: int, lr: float,
                   gradient: InnerGradient) -> Params:
        """``params`` with the head replaced by the inner loop's head on ``features``."""
        head = {k: v for k, v in params.items() if k in self.head}
        return {**params, **self.inner_loop(head, features, labels, steps, lr, gradient)}
