"""Prototypical networks (Snell et al. 2017): no inner loop, class means as the classifier.

A task's adapted state is the meta-parameters plus one non-parameter entry,
``prototypes`` ``[way, D]``: the mean embedding (``features``, the
classifier head's input) of each class's support images. The logits of an
image are its negative squared Euclidean distances to the prototypes, or
(``metric="cosine"``) the cosine similarities times a learned scale. The
model's classifier head is never used; its width fixes the way, as it does
for every learner here (``eval.way`` must equal ``train.way``).

The outer loss is the query cross entropy, differentiable end to end: the
meta-model learns through both the query embedding and the prototypes, and
the gradient switch's reversed loss reaches the query images directly and
the support images through the prototypes. Nothing is differentiated twice.

Execution (episodes on worker threads or under ``vmap``, test tasks
batched, checkpoints, CUDA graphs) is MAML's, through its hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from purer_plugins.learners import ProtoNetOptions
from purer_plugins.learners.maml import MAML
from torch import Tensor, nn

from purer.api import ConfigError, Params

# The adapted state's entry that holds the class prototypes.
PROTOTYPES = "prototypes"


def output_count(model: nn.Module) -> int:
    """The number of classes ``model`` was built for (timm's ``num_classes``)."""
    count = getattr(model, "num_classes", None)
    if not isinstance(count, int):
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        count = getattr(head, "out_features", None)
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"meta-learner protonet: cannot tell the way from {type(model).__name__} "
                          "(no num_classes and no linear classifier)")
    return count


class ProtoNet(MAML):
    """Nearest class mean in a meta-learned embedding."""

    Options = ProtoNetOptions

    def setup(self, model: nn.Module, device: torch.device) -> None:
        if PROTOTYPES in dict(model.named_parameters()):
            raise ConfigError(f"meta-learner protonet: the meta-model has a parameter named "
                              f"'{PROTOTYPES}', the name of the adapted state's prototypes")
        super().setup(model, device)
        self.way = output_count(self.model)

    def init_learned(self) -> dict[str, Tensor]:
        if self.options.metric != "cosine":
            return {}
        like = next(self.model.parameters())
        return {"scale": torch.tensor(self.options.scale_init, dtype=like.dtype,
                                      device=like.device).requires_grad_()}

    # No inner loop: steps and step sizes mean nothing, and nothing is
    # differentiated twice, so "second order" costs nothing extra.
    def _train_settings(self) -> tuple[int, float]:
        return 0, 0.0

    def _test_settings(self) -> tuple[int, float]:
        return 0, 0.0

    def _second_order(self) -> bool:
        return True

    # ----------------------------------------------------------------- adaptation
    def prototypes(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean embedding per class ``[way, D]``; a one-hot product, so it
        runs under ``vmap`` and without a host sync."""
        classes = torch.arange(self.way, device=labels.device)
        onehot = (labels.unsqueeze(-1) == classes).to(features.dtype)  # [N, way]
        counts = onehot.sum(0).clamp_min(1.0)
        return (onehot.transpose(0, 1) @ features) / counts.unsqueeze(-1)

    def logits(self, features: Tensor, prototypes: Tensor) -> Tensor:
        """Logits ``[N, way]`` of embeddings ``[N, D]`` against ``prototypes``."""
        if self.options.metric == "cosine":
            return self.learned["scale"] * (F.normalize(features, dim=-1)
                                            @ F.normalize(prototypes, dim=-1).transpose(0, 1))
        return -(features.unsqueeze(-2) - prototypes).pow(2).sum(-1)

    def _adapt(self, support: Tensor, labels: Tensor, create_graph: bool, params: Params | None,
               steps: int, lr: float, worker: int | None) -> Params:
        params = self.params() if params is None else params
        features = self._features(params, support, worker)
        return {**params, PROTOTYPES: self.prototypes(features, labels)}

    def _adapt_functional(self, params: Params, support: Tensor, labels: Tensor, steps: int, lr: float,
                          detach: bool) -> Params:
        return self._adapt(support, labels, not detach, params, steps, lr, None)

    def _predict(self, params: Params, images: Tensor, worker: int | None) -> Tensor:
        return self.logits(self._features(params, images, worker), params[PROTOTYPES])

    def _test_adapt(self, support: Tensor, labels: Tensor, worker: int | None,
                    start: Params | None = None) -> Params:
        start = self.params() if start is None else start
        with torch.no_grad():
            return self._adapt(support, labels, False, {k: v.detach() for k, v in start.items()},
                               0, 0.0, worker)
