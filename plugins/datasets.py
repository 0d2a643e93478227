"""The built-in dataset readers, registered as one plugin.

Each reader lives in a module of its own; this module only names them.
"""

from __future__ import annotations

from purer_plugins.cifar_fs import CifarFS
from purer_plugins.mini_imagenet import MiniImageNet
from purer_plugins.synthetic_shapes import SyntheticShapes

import purer


@purer.hookimpl
def register_datasets(register) -> None:
    register("cifar-fs", CifarFS)
    register("mini-imagenet", MiniImageNet)
    register("synthetic-shapes", SyntheticShapes)
