"""The zoo on disk: ``zoo.json`` plus one ``<teacher>.safetensors`` per teacher.

The manifest is plain JSON validated by pydantic, so users can write it by
hand (docs/zoo.md) and a zoo from elsewhere is checked before any weight is
used. Nothing here unpickles: weights are safetensors, the manifest is JSON.
Every fault is a one-line :class:`purer.errors.ZooError` that names the
teacher and its file, because a zoo of a hundred teachers is otherwise hard
to debug.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from purer.errors import ZooError
from purer.rundir import atomic_write_text
from purer.types import InputSpace

FORMAT_VERSION = 1
MANIFEST_NAME = "zoo.json"
# The largest teacher input side accepted: a run keeps shot + query images of
# this side per class and teacher in memory, so an edited or mistaken size
# would otherwise ask for terabytes. Large ImageNet models use 224 to 518.
MAX_INPUT_SIZE = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TeacherEntry(BaseModel):
    """One teacher: where its weights are and what its outputs mean."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique inside the zoo; letters, digits, _ . -")
    file: str = Field(description="weights file, relative to the zoo folder")
    arch: str = Field(description="timm model name (or one a purer plugin registers)")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(ge=1)
    dataset: str = ""
    class_ids: list[int] = Field(description="global class id of each output, in output order")
    class_names: list[str]
    input_size: int = Field(ge=1, le=MAX_INPUT_SIZE)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    heldout_accuracy: float | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    sha256: str | None = Field(None, description="of the weights file; unset: not checked")
    parameters: int | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must start with a letter or digit and hold only letters, "
                             "digits, '_', '.', '-'")
        return value

    @field_validator("file")
    @classmethod
    def _inside_zoo(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value or not value:
            raise ValueError("must be a relative path inside the zoo folder")
        if not value.endswith(".safetensors"):
            raise ValueError("must be a .safetensors file")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError(f"must be finite numbers, got {list(value)}")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _classes_agree(self) -> TeacherEntry:
        if len(self.class_ids) != self.num_classes or len(self.class_names) != self.num_classes:
            raise ValueError(f"num_classes is {self.num_classes} but there are "
                             f"{len(self.class_ids)} class_ids and {len(self.class_names)} class_names")
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError("class_ids repeat a class")
        return self

    @property
    def space(self) -> InputSpace:
        return InputSpace(self.input_size, tuple(self.mean), tuple(self.std))  # type: ignore[arg-type]

    def where(self) -> str:
        return f"teacher '{self.name}' ({self.file})"


class Manifest(BaseModel):
    """``zoo.json``: the format version, the teachers, and how they were built."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    teachers: list[TeacherEntry] = Field(default_factory=list)
    build: dict[str, Any] | None = Field(
        None, description="options of `purer zoo build`, so an interrupted build can resume")

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        seen_names: set[str] = set()
        seen_files: set[str] = set()
        for t in self.teachers:
            if t.name in seen_names:
                raise ValueError(f"teacher name '{t.name}' appears twice")
            if t.file in seen_files:
                raise ValueError(f"weights file '{t.file}' is used by two teachers")
            seen_names.add(t.name)
            seen_files.add(t.file)
        return self

    def get(self, name: str) -> TeacherEntry | None:
        return next((t for t in self.teachers if t.name == name), None)


def manifest_path(zoo: str | Path) -> Path:
    """``zoo`` may name the folder or its ``zoo.json``."""
    zoo = Path(zoo)
    return zoo if zoo.suffix == ".json" else zoo / MANIFEST_NAME


def _explain(exc: ValidationError, data: Any) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = ".".join(str(p) for p in loc) or "manifest"
    if len(loc) >= 2 and loc[0] == "teachers" and isinstance(loc[1], int):
        try:
            name = data["teachers"][loc[1]].get("name", f"#{loc[1]}")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = f"#{loc[1]}"
        field = ".".join(str(p) for p in loc[2:]) or "entry"
        where = f"teacher '{name}': {field}"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] == "literal_error" and loc == ["format_version"]:
        msg = f"unsupported format version {err.get('input')!r} (this purer reads {FORMAT_VERSION})"
    return f"{where}: {msg}"


def load_manifest(zoo: str | Path) -> Manifest:
    """Read and validate ``zoo.json``; never touches the weights."""
    path = manifest_path(zoo)
    if not path.is_file():
        raise ZooError(f"{path.parent}: not a teacher zoo (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: not valid JSON: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ZooError(f"{path}: {_explain(exc, data)}") from None


def save_manifest(zoo: str | Path, manifest: Manifest) -> Path:
    """Write ``zoo.json`` atomically (a killed build never leaves half a file)."""
    path = manifest_path(zoo)
    atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return path

