"""Every model comes through timm: one ``create_model`` for teachers and meta-models.

The few-shot backbones (``conv4``, ``cifar_resnet10``, ``cifar_resnet18``)
are timm entry points registered by the built-in ``architectures`` plugin;
third-party plugins add theirs through the ``register_architectures`` hook.
This module makes sure those registrations happened before timm is asked,
and answers the two questions the rest of purer asks of any model: which
parameters form the classifier head (ICFIL retrains it on a frozen backbone)
and which input space the model expects.
"""

from __future__ import annotations

import importlib
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from purer.errors import PluginError
from purer.types import InputSpace

BUILTIN_ARCHITECTURES = "purer_plugins.architectures"


def ensure_registered(name: str) -> None:
    """Make ``name`` known to timm, loading plugins only when needed.

    The built-in backbones are imported directly (cheap, and they work even
    while a broken third-party plugin keeps the host from starting); any
    other name not already in timm makes the plugin host load, so plugin
    modules get their chance to register it.
    """
    if timm.is_model(name):
        return
    importlib.import_module(BUILTIN_ARCHITECTURES)
    if timm.is_model(name):
        return
    from purer.plugins import get_host

    host = get_host()
    if timm.is_model(name):
        return
    entry = host.registries["architecture"].get(name)
    if entry is not None:
        # A plugin registered a factory without timm's decorator: register it now.
        factory = entry.obj
        if getattr(factory, "__name__", None) != name:
            raise PluginError(f"architecture '{name}' (plugin '{entry.plugin}'): the factory "
                              f"must be a function named '{name}' decorated with "
                              "timm.models.register_model")
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


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the classifier head's parameters.

    Everything else is the backbone, so ICFIL can freeze one and retrain the
    other without knowing the architecture.
    """
    heads = _classifier_modules(model)
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if any(module is h for h in heads):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters())
    return names


def input_space_of(model: nn.Module, default_size: int = 32) -> InputSpace:
    """The input space in the model's timm ``pretrained_cfg`` (size, mean, std).

    Falls back to ``default_size`` and ImageNet statistics for a model that
    carries no config.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    side = int(size[-1]) if size else default_size
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return InputSpace(side, mean, std)  # type: ignore[arg-type]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
