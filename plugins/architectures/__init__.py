"""The paper's few-shot backbones as timm models: ``conv4``, ``cifar_resnet10``
and ``cifar_resnet18`` (CIFAR-style: stride-1 stem, no max-pool).

Registered by reference: ``purer_plugins.architectures.backbones`` (and timm
with it) is imported only when one of them is created.
"""

from __future__ import annotations

from purer.api import hookimpl

BACKBONES = ("conv4", "cifar_resnet10", "cifar_resnet18")


@hookimpl
def register_architectures(register) -> None:
    for name in BACKBONES:
        register(name, f"purer_plugins.architectures.backbones:{name}")
