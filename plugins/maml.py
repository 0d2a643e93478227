"""MAML (Finn et al. 2017) as a functional meta-learner: Eq. 1a-1b of the paper.

The meta-model is an ordinary (timm) module; adaptation never edits it in
place. ``torch.func.functional_call`` runs it with the adapted parameters, so
the second-order graph of Eq. 1 is plain autograd, and test-time adaptation of
many tasks at once is a ``vmap`` of the same function.

BatchNorm: like the reference, the meta-model always normalises with the
statistics of the batch it sees (support, then query), also at test time.
``batch_stats=False`` keeps running statistics instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

import purer
from purer.batch_norm import hooked, use_batch_stats_norm
from purer.engine.cuda_graph import load_optimizer_state, make_capturable
from purer.interfaces import MetaLearner, Options, Params
from purer.parallel import WorkerPool, Workers, copy_sharing_tensors, resolve_workers
from purer.types import EpisodeBatch, OuterMetrics


class MAMLOptions(Options):
    inner_steps: int = Field(1, ge=0, description="gradient steps of the inner loop")
    inner_lr: float = Field(0.01, gt=0, description="inner-loop step size (alpha)")
    first_order: bool = Field(False, description="drop second-order terms of the outer gradient")
    outer_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the meta-model")
    test_inner_steps: int | None = Field(None, ge=0, description="inner steps at meta-test (default: inner_steps)")
    test_inner_lr: float | None = Field(None, gt=0, description="inner lr at meta-test (default: inner_lr)")
    batch_stats: bool = Field(True, description="BatchNorm uses batch statistics, also at test time")
    test_batching: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="how test tasks are adapted together; auto: loop on CPU, vmap on GPU")
    batch_episodes: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="how the training episodes of a meta step are run: together under vmap "
                            "(per-episode weights become grouped convolutions) or one by one; "
                            "auto: loop on CPU, vmap on GPU")
    native_batch_norm: bool = Field(False, description="differentiate BatchNorm twice with PyTorch's own "
                                                       "double backward (slower on CPU; for comparison)")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="keep the meta-model's weights channels-last (auto: on for CPU)")
    cpu_workers: Workers = Field(
        "auto", description="threads that run a meta step's episodes, and meta-test tasks, side by "
                            "side on a CPU, sharing the intra-op threads (auto: one per torch thread, at "
                            "most 4; 1: one at a time on all threads); the loop paths only")

    @model_validator(mode="after")
    def _vmap_needs_own_batch_norm(self) -> MAMLOptions:
        if self.batch_episodes == "vmap" and self.native_batch_norm:
            raise ValueError("batch_episodes='vmap' needs native_batch_norm=false: PyTorch's batch-norm "
                             "double backward under vmap gives wrong second-order gradients")
        return self


class MAML(MetaLearner):
    """Model-agnostic meta-learning on a functional view of any ``nn.Module``."""

    Options = MAMLOptions

    def setup(self, model: nn.Module, device: torch.device) -> None:
        if self.options.batch_stats:
            replace_all_batch_norm_modules_(model)
            if not self.options.native_batch_norm:
                use_batch_stats_norm(model)
        self.model = model.to(device)
        if self.options.channels_last == "on" or (self.options.channels_last == "auto" and device.type == "cpu"):
            # Fixed once here (evaluation relies on it too), so training numerics
            # never change mid-run and a resumed run replays the original exactly.
            self.model.to(memory_format=torch.channels_last)
        self.model.train(self.options.batch_stats)
        self.device = device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.options.outer_lr)
        workers = resolve_workers(self.options.cpu_workers, device)
        self.pool = WorkerPool(workers)
        # functional_call swaps a module's tensors for the length of a call, so
        # each worker thread runs its own copy of the module tree and
        # self.model stays untouched while they run. The copies hold the very
        # same parameter and buffer tensors: no memory, nothing to keep in sync.
        self.replicas = [copy_sharing_tensors(self.model, self.model) for _ in range(workers)] \
            if workers > 1 else []

    # ----------------------------------------------------------------- inner loop
    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def predict(self, params: Params, images: Tensor, worker: int | None = None) -> Tensor:
        """Logits of ``images`` under ``params``; ``worker`` picks the module
        copy of a :class:`~purer.parallel.WorkerPool` thread."""
        model = self.model if worker is None else self.replicas[worker]
        return functional_call(model, params, (images,))

    def adapt(self, support: Tensor, labels: Tensor, *, create_graph: bool,
              params: Params | None = None, steps: int | None = None,
              lr: float | None = None, worker: int | None = None) -> Params:
        params = self.params() if params is None else params
        steps = self.options.inner_steps if steps is None else steps
        lr = self.options.inner_lr if lr is None else lr
        for _ in range(steps):
            loss = F.cross_entropy(self.predict(params, support, worker), labels)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
        return params

    # ----------------------------------------------------------------- outer loop
    def outer_loss(self, episodes: EpisodeBatch, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        second_order = create_graph and not self.options.first_order
        if not self.options.native_batch_norm and self._batched(self.options.batch_episodes, episodes.support):
            return self._outer_loss_vmap(episodes, second_order)
        total, correct = 0.0, 0.0
        for e in range(episodes.num_episodes):
            loss, accuracy = self._episode_loss(episodes, e, second_order)
            total, correct = total + loss, correct + accuracy
        return total, torch.as_tensor(correct / episodes.num_episodes)

    def _episode_loss(self, episodes: EpisodeBatch, e: int, second_order: bool,
                      worker: int | None = None, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Episode ``e``'s query loss after adaptation, and its query accuracy."""
        adapted = self.adapt(episodes.support[e], episodes.support_labels[e],
                             create_graph=second_order, params=params, worker=worker)
        logits = self.predict(adapted, episodes.query[e], worker)
        accuracy = (logits.argmax(-1) == episodes.query_labels[e]).float().mean().detach()
        return F.cross_entropy(logits, episodes.query_labels[e]), accuracy

    def _outer_loss_vmap(self, episodes: EpisodeBatch, second_order: bool) -> tuple[Tensor, Tensor]:
        """The same sum over episodes, all adapted at once: the inner step is
        ``torch.func.grad`` inside ``vmap``, and ordinary autograd differentiates
        through it (second order) or not (its gradient detached, first order)."""
        base = self.params()

        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            adapted = self._adapt_functional(base, xs, ys, self.options.inner_steps,
                                             self.options.inner_lr, detach_grads=not second_order)
            logits = functional_call(self.model, adapted, (xq,))
            return F.cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean()

        losses, accuracies = vmap(one)(episodes.support, episodes.support_labels,
                                       episodes.query, episodes.query_labels)
        return losses.sum(), accuracies.mean().detach()

    def _adapt_functional(self, params: Params, xs: Tensor, ys: Tensor, steps: int, lr: float,
                          detach_grads: bool = False) -> Params:
        """The inner loop written with ``torch.func.grad``, so that it can run under ``vmap``."""
        def inner_loss(p: Params) -> Tensor:
            return F.cross_entropy(functional_call(self.model, p, (xs,)), ys)

        for _ in range(steps):
            g = grad(inner_loss)(params)
            params = {k: params[k] - lr * (g[k].detach() if detach_grads else g[k]) for k in params}
        return params

    @staticmethod
    def _batched(strategy: str, like: Tensor) -> bool:
        return strategy == "vmap" or (strategy == "auto" and like.device.type != "cpu")

    def _threaded(self, like: Tensor) -> bool:
        """Whether the loop over episodes or tasks runs on the worker pool:
        not under hooks on the model, which its copies would not fire."""
        return self.pool.workers > 1 and like.device.type == "cpu" and not _has_hooks(self.model)

    def meta_step(self, episodes: EpisodeBatch) -> OuterMetrics:
        self.optimizer.zero_grad(set_to_none=True)
        if (self._threaded(episodes.support) and not self.options.native_batch_norm
                and not self._batched(self.options.batch_episodes, episodes.support)):
            loss, accuracy = self._threaded_backward(episodes)
        else:
            loss, accuracy = self.outer_loss(episodes, create_graph=True)
            loss.backward()
        self.optimizer.step()
        return OuterMetrics(loss=loss.detach(), accuracy=accuracy)

    def _threaded_backward(self, episodes: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """``outer_loss(...).backward()`` with each episode differentiated on
        its own worker thread; gradients summed in episode order."""
        second_order = not self.options.first_order
        params = self.params()  # read here: a worker must never read self.model's attributes

        def differentiate(worker: int, e: int) -> tuple[tuple[Tensor | None, ...], Tensor, Tensor]:
            loss, accuracy = self._episode_loss(episodes, e, second_order, worker, params)
            return torch.autograd.grad(loss, list(params.values()), allow_unused=True), loss.detach(), accuracy

        results = self.pool.map(differentiate, range(episodes.num_episodes))
        for k, param in enumerate(params.values()):
            grads = [r[0][k] for r in results if r[0][k] is not None]
            param.grad = sum(grads[1:], grads[0].clone()) if grads else None
        return sum(r[1] for r in results), sum(r[2] for r in results) / episodes.num_episodes

    def prepare_cuda_graph(self) -> None:
        make_capturable(self.optimizer)

    # ----------------------------------------------------------------- meta-test
    def adapt_and_predict(self, support: Tensor, support_labels: Tensor, query: Tensor) -> Tensor:
        steps = self.options.test_inner_steps if self.options.test_inner_steps is not None else self.options.inner_steps
        lr = self.options.test_inner_lr or self.options.inner_lr
        base = {k: v.detach() for k, v in self.params().items()}
        if not self._batched(self.options.test_batching, support):
            def one_task(worker: int | None, t: int) -> Tensor:
                params = {k: v.clone().requires_grad_() for k, v in base.items()}
                with torch.enable_grad():
                    adapted = self.adapt(support[t], support_labels[t], create_graph=False,
                                         params=params, steps=steps, lr=lr, worker=worker)
                with torch.no_grad():
                    return self.predict({k: v.detach() for k, v in adapted.items()}, query[t], worker)

            tasks = range(support.shape[0])
            if self._threaded(support):
                return torch.stack(self.pool.map(one_task, tasks))
            return torch.stack([one_task(None, t) for t in tasks])

        def one_task(params: Params, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            return functional_call(self.model, self._adapt_functional(params, xs, ys, steps, lr), (xq,))

        return vmap(one_task, in_dims=(None, 0, 0, 0))(base, support, support_labels, query)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            load_optimizer_state(self.optimizer, state["optimizer"])


def _has_hooks(model: nn.Module) -> bool:
    """Module hooks anywhere in ``model`` (a worker's copy would not run them)."""
    modules = list(model.modules())
    return hooked(*modules) or any(m._backward_hooks or m._backward_pre_hooks for m in modules)


@purer.hookimpl
def register_meta_learners(register) -> None:
    register("maml", MAML)
