"""Datasets (through dataset plugins) and few-shot episodes."""

from __future__ import annotations

from typing import Any

from purer.types import SplitData


def load_split(name: str, split: str, root: str | None = None, **options: Any) -> SplitData:
    """Load one split of dataset plugin ``name`` ("meta_train", "meta_val", "meta_test")."""
    from purer.plugins import get_host

    reader = get_host().create("dataset", name, {"root": root, **options}, section="data")
    return reader.load(split)
