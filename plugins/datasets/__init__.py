"""The built-in dataset readers: ``synthetic-shapes`` (generated, no files),
``cifar-fs`` and ``mini-imagenet`` (read from the files users already have).

This module only declares them (with their options) and adds
``purer data download cifar-fs``; each reader's module is imported the first
time it is used.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from purer.api import DatasetOptions, hookimpl

# 8 shapes x 5 textures x 8 foreground colours x 5 backgrounds
SHAPE_COMBINATIONS = 1600


class SyntheticShapesOptions(DatasetOptions):
    classes: int = Field(100, ge=15, le=SHAPE_COMBINATIONS, description="classes in all splits")
    images_per_class: int = Field(600, ge=1, le=10_000, description="images drawn per "
                                  "class (fewer: faster, e.g. for tests)")


class CifarFSOptions(DatasetOptions):
    layout: Literal["auto", "npz", "pickle", "folders"] = Field(
        "auto", description="file form; auto: npz, then cifar-100-python pickles, then class folders")


class MiniImageNetOptions(DatasetOptions):
    layout: Literal["auto", "npz", "csv", "folders"] = Field(
        "auto", description="file form; auto: npz, then Ravi CSVs with images/, then class folders")
    size: int = Field(84, ge=8, le=512, description="side of the resized square images")
    cache_dir: str | None = Field(None, description="decoded-image cache (default: "
                                  "$PURER_CACHE, else ~/.cache/purer)")
    disk_cache: bool = Field(True, description="keep decoded images as .npy in cache_dir")


@hookimpl
def register_datasets(register) -> None:
    register("synthetic-shapes", "purer_plugins.datasets.synthetic_shapes:SyntheticShapes",
             options=SyntheticShapesOptions)
    register("cifar-fs", "purer_plugins.datasets.cifar_fs:CifarFS", options=CifarFSOptions)
    register("mini-imagenet", "purer_plugins.datasets.mini_imagenet:MiniImageNet",
             options=MiniImageNetOptions)


@hookimpl
def register_commands(cli: Any) -> None:
    from purer_plugins.datasets.download import add_download_command

    add_download_command(cli)
