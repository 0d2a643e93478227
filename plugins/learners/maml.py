"""MAML (Finn et al. 2017) as a functional meta-learner: Eq. 1a-1b of the paper.

The meta-model is an ordinary (timm) module; adaptation never edits it in
place. ``torch.func.functional_call`` runs it with the adapted parameters, so
the second-order graph of Eq. 1 is plain autograd, and test-time adaptation of
many tasks at once is a ``vmap`` of the same function.

BatchNorm: like the reference, the meta-model always normalises with the
statistics of the batch it sees (support, then query), also at test time.
``batch_stats=False`` keeps running statistics instead.

ANIL, Meta-SGD, Reptile and ProtoNet subclass :class:`MAML`: they share its
execution (episodes and test tasks on worker threads or under ``vmap``,
checkpoints, CUDA graphs) and change it through a few hooks:
:meth:`MAML.inner_loop` (which parameters move, and by how much),
``_adapt`` / ``_adapt_functional`` / ``_predict`` (what adaptation produces
and how an adapted state predicts), :meth:`MAML.init_learned` (meta-parameters
outside the model) and ``_outer_optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from purer_plugins.learners import MAMLOptions
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from purer.api import (
    ConfigError,
    EpisodeBatch,
    MetaLearner,
    OuterMetrics,
    Params,
    WorkerPool,
    copy_sharing_tensors,
    has_module_hooks,
    load_optimizer_state,
    make_capturable,
    pre_logits,
    resolve_workers,
    use_batch_stats_norm,
)

# (params, support, labels) -> the inner loss's gradient, one tensor per parameter
InnerGradient = Callable[[Params, Tensor, Tensor], "list[Tensor]"]


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
        self.learned = self.init_learned()
        self.optimizer = self._outer_optimizer()
        workers = resolve_workers(self.options.cpu_workers, device)
        self.pool = WorkerPool(workers)
        # functional_call swaps a module's tensors for the length of a call, so
        # each worker thread runs its own copy of the module tree and
        # self.model stays untouched while they run. The copies hold the very
        # same parameter and buffer tensors: no memory, nothing to keep in sync.
        self.replicas = [copy_sharing_tensors(self.model, self.model) for _ in range(workers)] \
            if workers > 1 else []

    def init_learned(self) -> dict[str, Tensor]:
        """Meta-parameters outside the model (leaf tensors that require grad),
        called once in :meth:`setup` after the model is placed: the outer
        optimiser learns them with the model, checkpoints hold them. MAML has none."""
        return {}

    def _outer_optimizer(self) -> torch.optim.Optimizer | None:
        return torch.optim.Adam([*self.model.parameters(), *self.learned.values()], lr=self.options.outer_lr)

    def _train_settings(self) -> tuple[int, float]:
        """Inner steps and step size of meta-training."""
        return self.options.inner_steps, self.options.inner_lr

    def _second_order(self) -> bool:
        return not self.options.first_order

    # ----------------------------------------------------------------- inner loop
    def predict(self, params: Params, images: Tensor) -> Tensor:
        return self._predict(params, images, None)

    def _predict(self, params: Params, images: Tensor, worker: int | None) -> Tensor:
        """``worker`` picks the module copy of a :class:`~purer.api.WorkerPool` thread."""
        return functional_call(self._module(worker), params, (images,))

    def _module(self, worker: int | None) -> nn.Module:
        return self.model if worker is None else self.replicas[worker]

    def _features(self, params: Params, images: Tensor, worker: int | None) -> Tensor:
        """:meth:`features` on a worker's module copy."""
        return pre_logits(self._module(worker), params, images)

    def adapt(self, support: Tensor, labels: Tensor, *, create_graph: bool,
              params: Params | None = None) -> Params:
        return self._adapt(support, labels, create_graph, params, *self._train_settings(), None)

    def _adapt(self, support: Tensor, labels: Tensor, create_graph: bool, params: Params | None,
               steps: int, lr: float, worker: int | None) -> Params:
        def gradient(p: Params, xs: Tensor, ys: Tensor) -> list[Tensor]:
            loss = F.cross_entropy(self._predict(p, xs, worker), ys)
            return list(torch.autograd.grad(loss, list(p.values()), create_graph=create_graph))

        return self.inner_loop(self.params() if params is None else params, support, labels,
                               steps, lr, gradient)

    def _adapt_functional(self, params: Params, support: Tensor, labels: Tensor, steps: int, lr: float,
                          detach: bool) -> Params:
        """:meth:`_adapt` written with ``torch.func`` so that it runs under
        ``vmap``; ``detach``: first order (no second-order terms)."""
        return self.inner_loop(params, support, labels, steps, lr, self._functional_gradient(detach))

    def _functional_gradient(self, detach: bool) -> InnerGradient:
        """The inner gradient through ``torch.func.grad``, which also runs
        under ``vmap``; ordinary autograd differentiates through it (second
        order) unless ``detach`` (first order)."""
        def inner_loss(p: Params, xs: Tensor, ys: Tensor) -> Tensor:
            return F.cross_entropy(self._predict(p, xs, None), ys)

        def gradient(p: Params, xs: Tensor, ys: Tensor) -> list[Tensor]:
            grads = grad(inner_loss)(p, xs, ys)
            return [grads[k].detach() if detach else grads[k] for k in p]

        return gradient

    def inner_loop(self, params: Params, support: Tensor, labels: Tensor, steps: int, lr: float,
                   gradient: InnerGradient) -> Params:
        """Eq. 1a: ``steps`` plain gradient steps of size ``lr`` on the
        support loss. Subclasses change which parameters move, and by how much."""
        for _ in range(steps):
            grads = gradient(params, support, labels)
            params = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
        return params

    # ----------------------------------------------------------------- outer loop
    def outer_loss(self, episodes: EpisodeBatch, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        second_order = create_graph and self._second_order()
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
        adapted = self._adapt(episodes.support[e], episodes.support_labels[e], second_order, params,
                              *self._train_settings(), worker)
        logits = self._predict(adapted, episodes.query[e], worker)
        accuracy = (logits.argmax(-1) == episodes.query_labels[e]).float().mean().detach()
        return F.cross_entropy(logits, episodes.query_labels[e]), accuracy

    def _outer_loss_vmap(self, episodes: EpisodeBatch, second_order: bool) -> tuple[Tensor, Tensor]:
        """The same sum over episodes, all adapted at once: the inner step is
        ``torch.func.grad`` inside ``vmap``, and ordinary autograd differentiates
        through it (second order) or not (its gradient detached, first order)."""
        base = self.params()
        steps, lr = self._train_settings()

        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            adapted = self._adapt_functional(base, xs, ys, steps, lr, not second_order)
            logits = self._predict(adapted, xq, None)
            return F.cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean()

        losses, accuracies = vmap(one)(episodes.support, episodes.support_labels,
                                       episodes.query, episodes.query_labels)
        return losses.sum(), accuracies.mean().detach()

    @staticmethod
    def _batched(strategy: str, like: Tensor) -> bool:
        return strategy == "vmap" or (strategy == "auto" and like.device.type != "cpu")

    def _threaded(self, like: Tensor) -> bool:
        """Whether the loop over episodes or tasks runs on the worker pool:
        not under hooks on the model, which its copies would not fire."""
        return self.pool.workers > 1 and like.device.type == "cpu" and not has_module_hooks(self.model)

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
        second_order = self._second_order()
        params = self.params()  # read here: a worker must never read self.model's attributes
        learnable = [*params.values(), *self.learned.values()]

        def differentiate(worker: int, e: int) -> tuple[tuple[Tensor | None, ...], Tensor, Tensor]:
            loss, accuracy = self._episode_loss(episodes, e, second_order, worker, params)
            return torch.autograd.grad(loss, learnable, allow_unused=True), loss.detach(), accuracy

        results = self.pool.map(differentiate, range(episodes.num_episodes))
        for k, param in enumerate(learnable):
            grads = [r[0][k] for r in results if r[0][k] is not None]
            param.grad = sum(grads[1:], grads[0].clone()) if grads else None
        return sum(r[1] for r in results), sum(r[2] for r in results) / episodes.num_episodes

    def prepare_cuda_graph(self) -> None:
        make_capturable(self.optimizer)

    # ----------------------------------------------------------------- meta-test
    def _test_settings(self) -> tuple[int, float]:
        o = self.options
        return (o.inner_steps if o.test_inner_steps is None else o.test_inner_steps,
                o.inner_lr if o.test_inner_lr is None else o.test_inner_lr)

    def test_adapt(self, support: Tensor, labels: Tensor, params: Params | None = None) -> Params:
        return self._test_adapt(support, labels, None, params)

    def _test_adapt(self, support: Tensor, labels: Tensor, worker: int | None,
                    start: Params | None = None) -> Params:
        steps, lr = self._test_settings()
        start = self.params() if start is None else start
        params = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
        with torch.enable_grad():
            adapted = self._adapt(support, labels, False, params, steps, lr, worker)
        return {k: v.detach() for k, v in adapted.items()}

    def adapt_and_predict(self, support: Tensor, support_labels: Tensor, query: Tensor) -> Tensor:
        if not self._batched(self.options.test_batching, support):
            def one_task(worker: int | None, t: int) -> Tensor:
                adapted = self._test_adapt(support[t], support_labels[t], worker)
                with torch.no_grad():
                    return self._predict(adapted, query[t], worker)

            tasks = range(support.shape[0])
            if self._threaded(support):
                return torch.stack(self.pool.map(one_task, tasks))
            return torch.stack([one_task(None, t) for t in tasks])

        steps, lr = self._test_settings()
        base = {k: v.detach() for k, v in self.params().items()}

        def one_task(params: Params, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            return self._predict(self._adapt_functional(params, xs, ys, steps, lr, False), xq, None)

        return vmap(one_task, in_dims=(None, 0, 0, 0))(base, support, support_labels, query)

    # ----------------------------------------------------------------- state
    def test_state_dict(self) -> dict:
        state = {"model": self.model.state_dict()}
        if self.learned:
            state["learned"] = {k: v.detach() for k, v in self.learned.items()}
        return state

    def state_dict(self) -> dict:
        state = self.test_state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        saved = state.get("learned", {})
        missing = sorted(set(self.learned) - set(saved))
        if missing:
            raise ConfigError(f"meta-learner {self.name or type(self).__name__}: the checkpoint holds no "
                              f"learned '{missing[0]}' (written by another meta-learner?)")
        with torch.no_grad():
            for name, value in self.learned.items():
                value.copy_(saved[name])
        if "optimizer" in state and self.optimizer is not None:
            load_optimizer_state(self.optimizer, state["optimizer"])

