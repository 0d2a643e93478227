"""Turn a validated RunConfig into ready components (teachers, meta-model, plugins)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from purer.config import RunConfig
from purer.interfaces import MetaLearner
from purer.plugins import get_host
from purer.types import InputSpace, Teacher


def cache_dir() -> Path:
    """Where purer keeps reusable artefacts (default ~/.cache/purer; PURER_CACHE overrides)."""
    return Path(os.environ.get("PURER_CACHE", Path.home() / ".cache" / "purer"))


def zoo_path(config: RunConfig, device: torch.device) -> Path:
    """The configured zoo, or a cached one built (once) from ``zoo.build``."""
    if config.zoo.path:
        return Path(config.zoo.path)
    from purer.zoo.build import build_zoo

    recipe = {"data": config.data.model_dump(), "build": config.zoo.build.model_dump()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / "zoos" / f"{config.data.name}-{key}"
    if not (out / ".complete").exists():
        options = {k: v for k, v in config.data.options.items() if k != "root"}
        build_zoo(config.zoo.build, config.data.name, config.data.options.get("root"), out, device,
                  data_options=options)
        (out / ".complete").write_text(json.dumps(recipe))
    return out


def load_zoo(config: RunConfig, device: torch.device) -> list[Teacher]:
    from purer.zoo.load import load_teachers

    return load_teachers(zoo_path(config, device), device)


def meta_space(config: RunConfig) -> InputSpace:
    """The meta-model's input space: that of the dataset it is tested on."""
    from purer.data import load_split

    return load_split(config.data.name, "meta_val", **config.data.options).space


def build_meta_model(config: RunConfig) -> torch.nn.Module:
    from purer.models import create_model

    return create_model(config.train.meta_arch, num_classes=config.train.way,
                        **config.train.meta_arch_kwargs)


def initialize(model: torch.nn.Module, name: str, options: dict, teachers: Sequence[Teacher]) -> None:
    get_host().create("initializer", name, options, section="init").initialize(model, teachers)


def build_meta_learner(config: RunConfig, device: torch.device,
                       model: torch.nn.Module | None = None) -> MetaLearner:
    learner = get_host().create("meta_learner", config.meta.name, config.meta.options, section="meta")
    learner.setup(model if model is not None else build_meta_model(config), device)
    return learner
