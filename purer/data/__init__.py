"""Datasets (through dataset plugins) and few-shot episodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from purer.config import PluginSection
    from purer.types import SplitData


def load_split(name: str, split: str, root: str | None = None, **options: Any) -> SplitData:
    """Load one split of dataset plugin ``name`` ("meta_train", "meta_val", "meta_test")."""
    from purer.plugins import get_host

    reader = get_host().create("dataset", name, {"root": root, **options}, section="data")
    return reader.load(split)


def read_split(data: PluginSection, split: str) -> SplitData:
    """One split of the dataset a config's ``[data]`` section describes."""
    from purer.plugins import get_host

    return get_host().create("dataset", data.name, data.options, section="data").load(split)
