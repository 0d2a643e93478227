"""ICFIL: inversion calibration following the inner loop (paper §4.3, Alg. 2).

After the inner loop, for each target task:

1. synthesise ``pseudo_per_class`` images per class from the *adapted* model
   with the inversion loss of Eq. 2 (CE + TV + l2 + a BN term), starting from
   N(0, 1) noise, ``synthesis_steps`` Adam steps;
2. calibrate the backbone (every parameter outside the classifier head) with
   the supervised-contrastive loss of Eq. 7 (anchors: the real support
   images; positives: pseudo images of the anchor's class; negatives: the
   other pseudo images), ``calib_steps`` Adam steps of ``calib_lr``;
3. freeze the backbone, train a fresh linear head on the support features
   (``head_steps`` Adam steps of ``head_lr``, cross entropy) and predict the
   queries.

The BN term. Eq. 4 matches the pseudo batch's per-layer feature statistics to
a BN layer's running statistics, but the meta-model normalises with batch
statistics (MAML, like the reference) and has none. ``bn_target="support"``
uses the only real statistics a task has: the per-channel mean and (biased)
variance of every BN layer's input over the real support batch, measured
under the adapted parameters. ``"none"`` drops the term. Only the support
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
become grouped convolutions, 2-3x slower than the loop). The new heads of
step 3 are always trained for all tasks at once (``baddbmm``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from purer.evaluation.supcon import supcon_loss
from purer.interfaces import Calibrator, MetaLearner, Options, Params
from purer.models import head_parameter_names


class ICFILOptions(Options):
    pseudo_per_class: int = Field(4, ge=1, description="pseudo images synthesised per class")
    synthesis_steps: int = Field(30, ge=0, description="Adam steps on the pseudo images")
    synthesis_lr: float = Field(0.1, gt=0, description="Adam lr of the pseudo images (init N(0,1))")
    ce_weight: float = Field(1.0, ge=0, description="Eq. 2 cross-entropy weight")
    tv_weight: float = Field(1e-4, ge=0, description="Eq. 3 total-variation weight")
    l2_weight: float = Field(1e-5, ge=0, description="Eq. 3 l2 weight")
    bn_target: Literal["support", "none"] = Field(
        "support", description="stand-in for Eq. 4's running statistics: the real support "
        "batch's per-layer feature mean/var, or no BN term")
    bn_weight: float = Field(0.01, ge=0, description="weight of the BN term")
    jitter: int = Field(2, ge=0, description="random circular shift (px) inside the inversion loss")
    temperature: float = Field(0.1, gt=0, description="Eq. 7 temperature")
    calib_steps: int = Field(1, ge=0, description="Adam steps of the backbone calibration")
    calib_lr: float = Field(1e-3, gt=0, description="Adam lr of the backbone calibration")
    head_steps: int = Field(100, ge=0, description="Adam steps of the new linear head")
    head_lr: float = Field(0.01, gt=0, description="Adam lr of the new linear head")
    head_init: Literal["zero", "default"] = Field(
        "zero", description="new head's init: zeros, or nn.Linear's default (seeded)")
    batching: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="tasks together (vmap) or one by one; auto: loop on CPU, vmap else")
    channels_last: bool = Field(False, description="NHWC images and weights (no faster for Conv4 on the 2-core CPUs)")
    seed: int = Field(0, description="seed of the pseudo-image noise, jitter and head init")


class _Features(nn.Module):
    """``forward`` = the model's pre-logit features (timm's ``forward_head(...,
    pre_logits=True)``), so ``functional_call`` can reach them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _tv(x: Tensor) -> Tensor:
    """Eq. 3's total variation per task of ``x [T, B, C, H, W]``: the plain l2
    norm of the differences in four directions (as in the ECI inversion)."""
    diffs = (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
             x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])
    return sum(d.flatten(1).norm(dim=1) for d in diffs)


class ICFIL(Calibrator):
    """Alg. 2: synthesise from the adapted model, calibrate, retrain the head."""

    Options = ICFILOptions

    def __init__(self, options: ICFILOptions | None = None) -> None:
        super().__init__(options)
        self.generator = torch.Generator().manual_seed(self.options.seed)

    # ----------------------------------------------------------------- API
    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        stacked = {k: v.unsqueeze(0) for k, v in params.items()}
        return self.predict_tasks(learner, stacked, support[None], support_labels[None],
                                  query[None])[0]

    def predict_tasks(self, learner: MetaLearner, params: Params, support: Tensor,
                      support_labels: Tensor, query: Tensor) -> Tensor:
        """Query logits ``[T, NQ, way]`` for T tasks whose adapted parameters
        are stacked on a leading axis."""
        batching = self.options.batching
        if batching == "auto":
            batching = "loop" if support.device.type == "cpu" else "vmap"
        if batching == "loop" and support.shape[0] > 1:
            parts = [self.calibrated_features(learner.model, {k: v[t:t + 1] for k, v in params.items()},
                                              support[t:t + 1], support_labels[t:t + 1],
                                              query[t:t + 1])
                     for t in range(support.shape[0])]
            fs, fq = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            fs, fq = self.calibrated_features(learner.model, params, support, support_labels, query)
        return self.train_head(fs, support_labels, fq)  # the head is cheap: all tasks at once

    def calibrated_features(self, model: nn.Module, params: Params, support: Tensor,
                            labels: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """Steps 1-2 for stacked tasks; the calibrated backbone's support and
        query features ``[T, N, D]``."""
        params = {k: v.detach() for k, v in params.items()}
        if self.options.channels_last:
            params = {k: _channels_last(v) if v.dim() == 5 else v for k, v in params.items()}
            support, query = _channels_last(support), _channels_last(query)
        with torch.enable_grad():
            pseudo, pseudo_labels = self.synthesize(model, params, support, labels)
            backbone = self.calibrate(model, params, head_parameter_names(model), support, labels,
                                      pseudo, pseudo_labels)
        features = _features(model)
        with torch.no_grad():
            return features(backbone, support), features(backbone, query)

    # ----------------------------------------------------------------- step 1
    def synthesize(self, model: nn.Module, params: Params, support: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
        """Pseudo images ``[T, way*P, C, H, W]`` (detached) and their labels ``[T, way*P]``."""
        o = self.options
        tasks, way = support.shape[0], int(labels.max()) + 1
        pseudo_labels = torch.arange(way, device=support.device).repeat_interleave(o.pseudo_per_class)
        pseudo_labels = pseudo_labels.expand(tasks, -1)
        shape = (tasks, pseudo_labels.shape[1], *support.shape[2:])
        images = torch.randn(shape, generator=self.generator).to(support.device, support.dtype)
        if support.stride()[-3] == 1:  # the support is channels_last: so are the pseudo images
            images = _channels_last(images)
        if o.synthesis_steps == 0:
            return images, pseudo_labels
        images.requires_grad_()
        use_bn = o.bn_target == "support" and o.bn_weight > 0 and bool(_batch_norms(model))
        run = _logits_and_stats(model, with_stats=use_bn)
        targets: list[Tensor] = []
        if use_bn:
            with torch.no_grad():
                _, targets = run(params, support)
        optimizer = torch.optim.Adam([images], lr=o.synthesis_lr)
        for _ in range(o.synthesis_steps):
            shifted = self._jitter(images)
            logits, stats = run(params, shifted)
            per_task = o.ce_weight * F.cross_entropy(logits.flatten(0, 1), pseudo_labels.flatten(),
                                                     reduction="none").view(tasks, -1).mean(1)
            per_task = per_task + o.tv_weight * _tv(images) + o.l2_weight * images.flatten(1).norm(dim=1)
            if use_bn:
                per_task = per_task + o.bn_weight * sum(
                    (s - t).flatten(1).norm(dim=1) for s, t in zip(stats, targets))
            optimizer.zero_grad(set_to_none=True)
            per_task.sum().backward()
            optimizer.step()
        return images.detach(), pseudo_labels

    def _jitter(self, images: Tensor) -> Tensor:
        j = self.options.jitter
        if j == 0:
            return images
        dx, dy = torch.randint(-j, j + 1, (2,), generator=self.generator).tolist()
        return torch.roll(images, shifts=(dx, dy), dims=(-1, -2))

    # ----------------------------------------------------------------- step 2
    def calibrate(self, model: nn.Module, params: Params, head: set[str], support: Tensor,
                  labels: Tensor, pseudo: Tensor, pseudo_labels: Tensor) -> Params:
        """Backbone parameters after ``calib_steps`` Adam steps on Eq. 7
        (the head's parameters come back unchanged; features never use them)."""
        o = self.options
        backbone = {k: v.clone().requires_grad_(k not in head) for k, v in params.items()}
        trainable = [v for k, v in backbone.items() if k not in head]
        if o.calib_steps == 0 or not trainable:
            return {k: v.detach() for k, v in backbone.items()}
        features = _features(model)
        optimizer = torch.optim.Adam(trainable, lr=o.calib_lr)
        for _ in range(o.calib_steps):
            loss = supcon_loss(features(backbone, support), labels, features(backbone, pseudo),
                               pseudo_labels, o.temperature).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {k: v.detach() for k, v in backbone.items()}

    # ----------------------------------------------------------------- step 3
    def fit_head(self, model: nn.Module, params: Params, support: Tensor, labels: Tensor,
                 query: Tensor) -> Tensor:
        """Step 3 on stacked backbones: a new head per task on frozen support
        features; returns the query logits."""
        features = _features(model)
        with torch.no_grad():
            fs, fq = features(params, support), features(params, query)
        return self.train_head(fs, labels, fq)

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


def _over_tasks(fn: Callable[[Params, Tensor], Any]) -> Callable[[Params, Tensor], Any]:
    """Run a one-task function over stacked tasks: ``vmap`` for several, a plain
    call for one (keeps channels_last and cheap kernels on the CPU loop path)."""
    batched = vmap(fn)

    def run(params: Params, x: Tensor) -> Any:
        if x.shape[0] != 1:
            return batched(params, x)
        out = fn({k: v[0] for k, v in params.items()}, x[0])
        return tree_map(lambda t: t.unsqueeze(0), out)

    return run


def _features(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    """``(stacked params, images [T, B, ...]) -> features [T, B, D]``."""
    wrapper = _Features(model)

    def one(params: Params, x: Tensor) -> Tensor:
        return functional_call(wrapper, {f"model.{k}": v for k, v in params.items()}, (x,))

    return _over_tasks(one)


def _logits_and_stats(model: nn.Module, with_stats: bool
                      ) -> Callable[[Params, Tensor], tuple[Tensor, list[Tensor]]]:
    """``(stacked params, images) -> (logits [T, B, way], stats)``; ``stats``
    holds, per BN layer, the per-channel mean and biased variance of the
    layer's input (each ``[T, C]``), when ``with_stats``."""
    layers = _batch_norms(model) if with_stats else []

    def one(params: Params, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        stats: list[Tensor] = []

        def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            mean, var = _channel_moments(inputs[0])
            stats.extend((mean, var))

        handles = [m.register_forward_pre_hook(record) for m in layers]
        try:
            logits = functional_call(model, params, (x,))
        finally:
            for h in handles:
                h.remove()
        return logits, stats

    return _over_tasks(one)


def _channel_moments(h: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``h [N, C, ...]``. Summing the
    contiguous spatial axes first is 4x faster on CPU than ``var`` over
    (0, 2, 3); E[x^2] - E[x]^2 is exact enough for activations."""
    flat = h.flatten(2) if h.dim() > 2 else h.unsqueeze(-1)
    count = flat.shape[0] * flat.shape[2]
    mean = flat.sum(2).sum(0) / count
    var = (flat * flat).sum(2).sum(0) / count - mean * mean
    return mean, var.clamp_min(0)


def _channels_last(x: Tensor) -> Tensor:
    """NHWC strides for every 4-D image/weight inside a stacked tensor."""
    if x.dim() < 4:
        return x
    flat = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
    return flat.view(x.shape)
