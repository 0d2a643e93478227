"""Reptile (Nichol et al. 2018): plain SGD per episode, then a step towards the result.

A meta step adapts the meta-parameters ``theta`` to each episode with
``inner_steps`` SGD steps of size ``inner_lr`` (on the support set, or on
the whole episode with ``inner_data="episode"``), giving ``W_e``, and moves

    theta <- theta + epsilon * (mean_e W_e - theta)

with ``epsilon`` = ``outer_lr``, the interpolation rate: a plain SGD step of
size ``epsilon`` along Reptile's direction ``theta - mean W_e``, so there is
no optimiser state. Nothing is differentiated twice.

The gradient switch needs an outer loss that depends on the episode images:
:meth:`outer_loss` is MAML's, the query loss after the same inner SGD steps
on the support set, differentiated through those steps (unless
``first_order``), so the reversed loss reaches the query images directly and
the support images through the adapted weights. The logged loss and
accuracy of a meta step are the query loss and accuracy of the adapted
weights (a fit, not a held-out score, with ``inner_data="episode"``).

Meta-test adaptation is MAML's (``test_inner_steps`` SGD steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from purer_plugins.learners import ReptileOptions
from purer_plugins.learners.maml import MAML
from torch import Tensor
from torch.func import vmap

from purer.api import EpisodeBatch, OuterMetrics, Params


class Reptile(MAML):
    """First-order meta-learning by interpolation towards adapted weights."""

    Options = ReptileOptions

    def _outer_optimizer(self) -> None:
        return None

    def _inner_data(self, episodes: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """Images ``[E, N, ...]`` and labels ``[E, N]`` of the inner SGD steps."""
        if self.options.inner_data == "episode":
            return (torch.cat([episodes.support, episodes.query], 1),
                    torch.cat([episodes.support_labels, episodes.query_labels], 1))
        return episodes.support, episodes.support_labels

    def meta_step(self, episodes: EpisodeBatch) -> OuterMetrics:
        images, labels = self._inner_data(episodes)
        if self._batched(self.options.batch_episodes, images):
            adapted, losses, accuracies = self._adapt_episodes_vmap(episodes, images, labels)
        else:
            adapted, losses, accuracies = self._adapt_episodes_loop(episodes, images, labels)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                param.lerp_(adapted[name].mean(0), self.options.outer_lr)
        return OuterMetrics(loss=losses.sum(), accuracy=accuracies.mean())

    def _adapt_episodes_loop(self, episodes: EpisodeBatch, images: Tensor, labels: Tensor
                             ) -> tuple[Params, Tensor, Tensor]:
        """Adapted weights ``[E, ...]`` per parameter, query losses and accuracies ``[E]``;
        episodes one by one, or side by side on the worker threads."""
        steps, lr = self._train_settings()
        # read here: a worker must never read self.model's attributes
        base = {k: v.detach().requires_grad_() for k, v in self.params().items()}

        def one(worker: int | None, e: int) -> tuple[Params, Tensor, Tensor]:
            adapted = self._adapt(images[e], labels[e], False, base, steps, lr, worker)
            with torch.no_grad():
                logits = self._predict(adapted, episodes.query[e], worker)
                loss = F.cross_entropy(logits, episodes.query_labels[e])
                accuracy = (logits.argmax(-1) == episodes.query_labels[e]).float().mean()
            return {k: v.detach() for k, v in adapted.items()}, loss, accuracy

        indices = range(episodes.num_episodes)
        results = self.pool.map(one, indices) if self._threaded(images) else [one(None, e) for e in indices]
        adapted = {k: torch.stack([r[0][k] for r in results]) for k in base}
        return adapted, torch.stack([r[1] for r in results]), torch.stack([r[2] for r in results])

    def _adapt_episodes_vmap(self, episodes: EpisodeBatch, images: Tensor, labels: Tensor
                             ) -> tuple[Params, Tensor, Tensor]:
        steps, lr = self._train_settings()
        base = {k: v.detach() for k, v in self.params().items()}

        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Params, Tensor, Tensor]:
            adapted = self._adapt_functional(base, xs, ys, steps, lr, True)
            logits = self._predict(adapted, xq, None)
            return adapted, F.cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean()

        with torch.no_grad():  # torch.func.grad inside still differentiates the inner loss
            return vmap(one)(images, labels, episodes.query, episodes.query_labels)

    def prepare_cuda_graph(self) -> None:
        """Nothing to prepare: the outer update is in-place tensor arithmetic."""
