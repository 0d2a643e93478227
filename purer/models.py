"""Every model comes through timm: one ``create_model`` for teachers and meta-models.

The few-shot backbones (``conv4``, ``cifar_resnet10``, ``cifar_resnet18``)
are timm entry points registered by the built-in ``architectures`` plugin;
third-party plugins add theirs through the ``register_architectures`` hook.
This module makes sure those registrations happened before timm is asked,
and answers the questions the rest of purer asks of any model: which
parameters form the classifier head (ICFIL retrains it on a frozen backbone,
the Average baseline leaves heads of another width out), what the model's
embedding is, and which input space it expects.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torch.func import functional_call

from purer.errors import PluginError
from purer.types import InputSpace


def ensure_registered(name: str) -> None:
    """Make ``name`` known to timm: an architecture a plugin registered is
    imported (and, for a factory without timm's decorator, registered) now."""
    if timm.is_model(name):
        return
    from purer.plugins import get_host

    host = get_host()
    if name not in host.registries["architecture"]:
        return
    factory = host.get("architecture", name)
    if not timm.is_model(name):
        if getattr(factory, "__name__", None) != name:
            entry = host.entry("architecture", name)
            raise PluginError(f"architecture '{name}' ({entry.where}): the factory must be a "
                              f"function named '{name}' decorated with timm.models.register_model")
        timm.models.register_model(factory)


def is_known(name: str) -> bool:
    """Whether ``name`` is a timm model or a purer architecture plugin."""
    try:
        ensure_registered(name)
    except PluginError:
        return timm.is_model(name)
    return timm.is_model(name)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised ``name`` with a ``num_classes``-way head.

    Args:
        name: any timm model name, or one registered by a purer plugin.
        num_classes: outputs of the classifier head (0: no head).
        **kwargs: passed to the timm entry point (e.g. ``width=8``).

    Example:
        >>> model = create_model("conv4", num_classes=5, width=8)
        >>> sorted(head_parameter_names(model))
        ['fc.bias', 'fc.weight']
    """
    ensure_registered(name)
    if not timm.is_model(name):
        raise PluginError(f"unknown architecture '{name}': not a timm model and no plugin "
                          "registers it (see `purer plugins`)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _classifier_modules(model: nn.Module) -> list[nn.Module]:
    get = getattr(model, "get_classifier", None)
    if get is None:
        raise TypeError(f"{type(model).__name__} has no get_classifier(): not a timm-style model")
    head = get()
    heads = head if isinstance(head, (tuple, list)) else (head,)  # distilled ViTs return two
    return [h for h in heads if isinstance(h, nn.Module)]


def _head_prefixes(model: nn.Module) -> list[str]:
    heads = _classifier_modules(model)
    return [prefix for prefix, module in model.named_modules() if any(module is h for h in heads)]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the classifier head's parameters.

    Everything else is the backbone, so ICFIL can freeze one and retrain the
    other without knowing the architecture.
    """
    return {f"{prefix}.{n}" if prefix else n for prefix in _head_prefixes(model)
            for n, _ in model.get_submodule(prefix).named_parameters()}


def head_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (parameters and buffers): the
    entries whose shape follows the class count."""
    prefixes = [p for p in _head_prefixes(model) if p]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


class _PreLogits(nn.Module):
    """``forward`` = timm's pre-logit features, so ``functional_call`` can reach them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def pre_logits(model: nn.Module, params: dict[str, Tensor], images: Tensor) -> Tensor:
    """The embedding of ``images`` (the classifier head's input) with ``model``
    run on ``params`` (names as in ``model.named_parameters()``)."""
    own = {f"model.{k}": v for k, v in params.items()}
    return functional_call(_PreLogits(model), own, (images,), strict=False)


def architecture_of(model: nn.Module) -> str:
    """The timm name a model was created under (its class name if none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def declared_input_size(model: nn.Module) -> int | None:
    """The input side a model was built for, where the model itself says so.

    A timm ``pretrained_cfg`` keeps the architecture's default size even when
    the model was built for another (a ViT with ``img_size=32`` still says
    224), so the model's own ``img_size`` (Conv4) or its patch embedding's
    (ViTs) come first. None for models that accept any size or do not say.
    """
    for owner in (model, getattr(model, "patch_embed", None)):
        size = getattr(owner, "img_size", None) if owner is not None else None
        if isinstance(size, int) and not isinstance(size, bool):
            return size
        if isinstance(size, (tuple, list)) and size and all(isinstance(v, int) for v in size):
            return int(size[-1])
    return None


def input_space_of(model: nn.Module, default_size: int = 32) -> InputSpace:
    """The input space a model expects: its side (:func:`declared_input_size`,
    else the timm ``pretrained_cfg``), mean and std (``pretrained_cfg``).

    Falls back to ``default_size`` and ImageNet statistics for a model that
    carries no config.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    side = declared_input_size(model) or (int(size[-1]) if size else default_size)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return InputSpace(side, mean, std)  # type: ignore[arg-type]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
