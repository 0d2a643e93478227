"""ICFIL: inversion calibration following the inner loop (paper §4.3, Alg. 2).

After the inner loop, for each target task:

1. synthesise ``pseudo_per_class`` images per class from the *adapted* model
   with the run's inversion loss (Eq. 2: the registered terms of
   ``[inversion]``, CE + TV + l2 + BN statistics by default), starting from
   N(0, 1) noise, ``synthesis_steps`` Adam steps;
2. calibrate the backbone (every parameter outside the classifier head) with
   the supervised-contrastive loss of Eq. 7 (anchors: the real support
   images; positives: pseudo images of the anchor's class; negatives: the
   other pseudo images), ``calib_steps`` Adam steps of ``calib_lr``;
3. freeze the backbone, train a fresh linear head on the support features
   (``head_steps`` Adam steps of ``head_lr``, cross entropy) and predict the
   queries. With ``classifier="learner"`` instead, rerun the meta-learner's
   own test-time adaptation (``test_adapt``) from the meta-parameters with
   the calibrated backbone in place of theirs, and predict with the result:
   the learner's classifier (MAML's adapted head, ProtoNet's prototypes) on
   the calibrated embedding.

The BN term. Eq. 4 matches the pseudo batch's per-layer feature statistics to
a BN layer's running statistics, but the meta-model normalises with batch
statistics (MAML, like the reference) and has none. ``bn_target="support"``
hands the terms the only real statistics a task has as targets: the
per-channel mean and (biased) variance of every BN layer's input over the
real support batch, measured under the adapted parameters. ``"none"`` hands
none, so the ``bn`` term is zero. Only the support
set is used; ICFIL never looks at the queries (paper §4.3).

BatchNorm with batch statistics also means every forward normalises over its
own batch: the support set, the pseudo set and the query set each go through
the network on their own, as standard meta-testing does with support and
query.

Batching: the tasks of a batch are optimised with one optimiser. Their
parameters and images are stacked on a leading task axis and the per-task
losses are summed, so each task gets its own gradient, and Adam
(element-wise) makes exactly the per-task updates. ``batching="vmap"`` runs
the network over all tasks under ``torch.func.vmap``; ``"loop"`` runs steps
1-2 one task at a time (on CPU, vmapped convolutions with per-task weights
become grouped convolutions, slower than the loop). The new heads of
step 3 are always trained for all tasks at once (``baddbmm``).

Threads. While a batch of tasks is adapted and calibrated, the evaluating
thread runs ``threads`` intra-op threads (default 1: a task's ops, a Conv4
over 5-80 small images, are too small to split over cores, and two
OpenMP threads stall each other when another process takes one of the
cores). On the loop path the tasks of a batch can also be spread over
``cpu_workers`` threads (``purer.api.WorkerPool``), each with
``threads // cpu_workers`` (at least one) intra-op threads. Every
worker runs its own copy of the learner's module tree (same tensors), since
a functional call edits the module it runs through. Each task draws its
noise and jitter from its own generator, seeded by ``seed`` and the task's
position in the calibrator's stream of tasks, so the numbers do not depend
on which worker ran a task, nor on the batch size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from purer_plugins.calibration import ICFILOptions
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_map

from purer.api import (
    Calibrator,
    InversionContext,
    MetaLearner,
    Params,
    WorkerPool,
    batch_moments,
    copy_sharing_tensors,
    has_module_hooks,
    resolve_workers,
    supcon_loss,
)


class ICFIL(Calibrator):
    """Alg. 2: synthesise from the adapted model, calibrate, retrain the head."""

    Options = ICFILOptions

    def __init__(self, options: ICFILOptions | None = None) -> None:
        super().__init__(options)
        self.generator = torch.Generator().manual_seed(self.options.seed)  # head init
        self.tasks_seen = 0  # position of the next task in this calibrator's stream
        self.pool: WorkerPool | None = None
        self.replicas: dict[int, list[MetaLearner]] = {}  # id(learner) -> one per worker

    # ----------------------------------------------------------------- API
    def threads(self) -> int | None:
        return None if self.options.threads == "all" else self.options.threads

    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        stacked = {k: v.unsqueeze(0) for k, v in params.items()}
        return self.predict_tasks(learner, stacked, support[None], support_labels[None],
                                  query[None])[0]

    def predict_tasks(self, learner: MetaLearner, params: Params, support: Tensor,
                      support_labels: Tensor, query: Tensor) -> Tensor:
        batching = self.options.batching
        if batching == "auto":
            batching = "loop" if support.device.type == "cpu" else "vmap"
        if self.options.classifier == "learner":
            return self.predict_with_learner(learner, params, support, support_labels, query,
                                             batching == "loop")
        first = self.tasks_seen
        self.tasks_seen += support.shape[0]
        if batching == "loop" and support.shape[0] > 1:
            replicas = self._replicas(learner, support)

            def one_task(worker: int, t: int) -> tuple[Tensor, Tensor]:
                return self.calibrated_features(
                    replicas[worker] if replicas else learner,
                    {k: v[t:t + 1] for k, v in params.items()}, support[t:t + 1],
                    support_labels[t:t + 1], query[t:t + 1], first + t)

            tasks = range(support.shape[0])
            parts = (self.pool.map(one_task, tasks) if replicas
                     else [one_task(0, t) for t in tasks])
            fs, fq = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            fs, fq = self.calibrated_features(learner, params, support, support_labels, query,
                                              first)
        return self.train_head(fs, support_labels, fq)  # the head is cheap: all tasks at once

    def _replicas(self, learner: MetaLearner, like: Tensor) -> list[MetaLearner]:
        """One copy of ``learner`` per worker thread (its module tree copied,
        sharing the tensors), or none when the tasks run on this thread."""
        if self.pool is None:  # auto counts the process's threads, not the evaluator's limit
            workers = self.options.cpu_workers
            if workers == "auto" and self.options.threads != "all":
                workers = self.options.threads
            self.pool = WorkerPool(resolve_workers(workers, like.device))
        if self.pool.workers == 1 or has_module_hooks(learner.model):
            return []
        if id(learner) not in self.replicas:
            self.replicas = {id(learner): [_replica(learner) for _ in range(self.pool.workers)]}
        return self.replicas[id(learner)]

    def calibrated_features(self, learner: MetaLearner, params: Params, support: Tensor,
                            labels: Tensor, query: Tensor, first: int = 0
                            ) -> tuple[Tensor, Tensor]:
        """Steps 1-2 for stacked tasks (``first``: the first one's position in
        the stream); the calibrated backbone's support and query features
        ``[T, N, D]``."""
        params = {k: v.detach() for k, v in params.items()}
        if self.options.channels_last:
            params = {k: _channels_last(v) if v.dim() == 5 else v for k, v in params.items()}
            support, query = _channels_last(support), _channels_last(query)
        with torch.enable_grad():
            pseudo, pseudo_labels = self.synthesize(learner, params, support, labels, first)
            backbone = self.calibrate(learner, params, support, labels, pseudo, pseudo_labels)
        features = _over_tasks(learner.features)
        with torch.no_grad():
            return features(backbone, support), features(backbone, query)

    def predict_with_learner(self, learner: MetaLearner, params: Params, support: Tensor,
                             labels: Tensor, query: Tensor, one_by_one: bool) -> Tensor:
        """Steps 1-2, then step 3 with ``classifier="learner"``: query logits
        ``[T, NQ, way]`` of the learner re-adapted from the calibrated backbone."""
        params = {k: v.detach() for k, v in params.items()}
        names = _backbone_names(learner, params)
        start = {k: v.detach() for k, v in learner.params().items()}
        logits = []
        first = self.tasks_seen
        self.tasks_seen += support.shape[0]
        for part in ([slice(t, t + 1) for t in range(support.shape[0])] if one_by_one
                     else [slice(None)]):
            task_params = {k: v[part] for k, v in params.items()}
            with torch.enable_grad():
                pseudo, pseudo_labels = self.synthesize(learner, task_params, support[part],
                                                        labels[part], first + (part.start or 0))
                backbone = self.calibrate(learner, task_params, support[part], labels[part], pseudo,
                                          pseudo_labels)
            for t in range(pseudo.shape[0]):
                adapted = learner.test_adapt(support[part][t], labels[part][t],
                                             params={**start, **{k: backbone[k][t] for k in names}})
                with torch.no_grad():
                    logits.append(learner.predict(adapted, query[part][t]))
        return torch.stack(logits)

    # ----------------------------------------------------------------- step 1
    def synthesize(self, learner: MetaLearner, params: Params, support: Tensor,
                   labels: Tensor, first: int = 0) -> tuple[Tensor, Tensor]:
        """Pseudo images ``[T, way*P, C, H, W]`` (detached) and their labels
        ``[T, way*P]``; ``first``: the first task's position in the stream,
        which seeds its noise (jitter: the first task's generator for all)."""
        o = self.options
        tasks, way = support.shape[0], int(labels.max()) + 1
        pseudo_labels = torch.arange(way, device=support.device).repeat_interleave(o.pseudo_per_class)
        pseudo_labels = pseudo_labels.expand(tasks, -1)
        shape = (pseudo_labels.shape[1], *support.shape[2:])
        generators = [self.task_generator(first + t) for t in range(tasks)]
        images = torch.stack([torch.randn(shape, generator=g) for g in generators])
        images = images.to(support.device, support.dtype)
        if support.stride()[-3] == 1:  # the support is channels_last: so are the pseudo images
            images = _channels_last(images)
        if o.synthesis_steps == 0:
            return images, pseudo_labels
        images.requires_grad_()
        with_moments = o.bn_target == "support"
        run_one = _logits_and_moments(learner, with_moments)
        with torch.no_grad():
            _, targets = _over_tasks(run_one)(params, support)

        def task_loss(p: Params, stored: Tensor, seen: Tensor, wanted: Tensor,
                      target: list[tuple[Tensor, Tensor]]) -> Tensor:
            logits, moments = run_one(p, seen)
            stats = [(m, v, tm, tv) for (m, v), (tm, tv) in zip(moments, target)]
            return self.inversion(InversionContext(None, stored, seen, logits, wanted, stats))[0]

        loss_per_task = _over_tasks(task_loss, stacked_args=5)
        optimizer = torch.optim.Adam([images], lr=o.synthesis_lr)
        for _ in range(o.synthesis_steps):
            losses = loss_per_task(params, images, self._jitter(images, generators[0]),
                                   pseudo_labels, targets)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
        return images.detach(), pseudo_labels

    def task_generator(self, position: int) -> torch.Generator:
        """The generator of the task at ``position`` in the stream."""
        return torch.Generator().manual_seed(self.options.seed * 1_000_003 + position)

    def _jitter(self, images: Tensor, generator: torch.Generator) -> Tensor:
        j = self.options.jitter
        if j == 0:
            return images
        dx, dy = torch.randint(-j, j + 1, (2,), generator=generator).tolist()
        return torch.roll(images, shifts=(dx, dy), dims=(-1, -2))

    # ----------------------------------------------------------------- step 2
    def calibrate(self, learner: MetaLearner, params: Params, support: Tensor, labels: Tensor,
                  pseudo: Tensor, pseudo_labels: Tensor) -> Params:
        """The adapted state after ``calib_steps`` Adam steps of the backbone
        on Eq. 7 (the head, and anything that is not a model parameter, stays)."""
        o = self.options
        trainable = _backbone_names(learner, params)
        backbone = {k: v.clone().requires_grad_(k in trainable) for k, v in params.items()}
        if o.calib_steps == 0 or not trainable:
            return {k: v.detach() for k, v in backbone.items()}
        features = _over_tasks(learner.features)
        optimizer = torch.optim.Adam([backbone[k] for k in trainable], lr=o.calib_lr)
        for _ in range(o.calib_steps):
            loss = supcon_loss(features(backbone, support), labels, features(backbone, pseudo),
                               pseudo_labels, o.temperature).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {k: v.detach() for k, v in backbone.items()}

    # ----------------------------------------------------------------- step 3
    def train_head(self, fs: Tensor, labels: Tensor, fq: Tensor) -> Tensor:
        """``head_steps`` Adam steps of a fresh linear head per task on support
        features ``fs [T, NS, D]`` (cross entropy), batched with ``baddbmm``;
        query logits ``[T, NQ, way]``."""
        o = self.options
        tasks, dim, way = fs.shape[0], fs.shape[-1], int(labels.max()) + 1
        weight, bias = self._new_head(tasks, way, dim, fs)
        optimizer = torch.optim.Adam([weight, bias], lr=o.head_lr)
        with torch.enable_grad():
            for _ in range(o.head_steps):
                logits = torch.baddbmm(bias.unsqueeze(1), fs, weight.transpose(1, 2))
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                       reduction="none").view(tasks, -1).mean(1).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return torch.baddbmm(bias.unsqueeze(1), fq, weight.transpose(1, 2))

    def _new_head(self, tasks: int, way: int, dim: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.options.head_init == "zero":
            weight = torch.zeros(tasks, way, dim)
            bias = torch.zeros(tasks, way)
        else:  # nn.Linear's default: U(-1/sqrt(dim), 1/sqrt(dim)) for both
            bound = 1.0 / math.sqrt(dim)
            weight = (torch.rand(tasks, way, dim, generator=self.generator) * 2 - 1) * bound
            bias = (torch.rand(tasks, way, generator=self.generator) * 2 - 1) * bound
        return (weight.to(like.device, like.dtype).requires_grad_(),
                bias.to(like.device, like.dtype).requires_grad_())


def _replica(learner: MetaLearner) -> MetaLearner:
    """A shallow copy of ``learner`` running its own copy of the module tree
    (the same parameter and buffer tensors): what one worker thread calls."""
    replica = copy.copy(learner)
    replica.model = copy_sharing_tensors(learner.model, learner.model)
    return replica


def _backbone_names(learner: MetaLearner, params: Params) -> set[str]:
    """The entries of an adapted state that calibration may move: the model's
    parameters outside the classifier head."""
    own = {name for name, _ in learner.model.named_parameters()}
    return {k for k in params if k in own} - learner.head_names()


def _over_tasks(fn: Callable[..., Any], stacked_args: int = 2) -> Callable[..., Any]:
    """Run a one-task function over tasks stacked on a leading axis of its
    first ``stacked_args`` arguments: ``vmap`` for several, a plain call for
    one (keeps channels_last and cheap kernels on the CPU loop path)."""
    batched = vmap(fn)

    def run(*args: Any) -> Any:
        if args[1].shape[0] != 1:
            return batched(*args)
        out = fn(*tree_map(lambda t: t[0], args[:stacked_args]), *args[stacked_args:])
        return tree_map(lambda t: t.unsqueeze(0), out)

    return run


def _logits_and_moments(learner: MetaLearner, with_moments: bool
                        ) -> Callable[[Params, Tensor], tuple[Tensor, list[tuple[Tensor, Tensor]]]]:
    """One task's ``(params, images) -> (logits [B, way], moments)``; ``moments``
    holds, per BN layer, the per-channel mean and biased variance of the
    layer's input (each ``[C]``), when ``with_moments``."""
    layers = [m for m in learner.model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)] if with_moments else []

    def one(params: Params, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        moments: list[tuple[Tensor, Tensor]] = []

        def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            moments.append(batch_moments(inputs[0]))

        handles = [m.register_forward_pre_hook(record) for m in layers]
        try:
            logits = learner.predict(params, x)
        finally:
            for h in handles:
                h.remove()
        return logits, moments

    return one


def _channels_last(x: Tensor) -> Tensor:
    """NHWC strides for every 4-D image/weight inside a stacked tensor."""
    if x.dim() < 4:
        return x
    flat = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
    return flat.view(x.shape)
