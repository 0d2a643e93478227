"""``purer zoo add``: bring your own teacher.

An existing checkpoint (safetensors, or a plain state dict in a .pt/.pth
file) is unwrapped, checked against its architecture, copied into the zoo as
safetensors and appended to ``zoo.json``. A .pt/.pth file is read with
``torch.load(weights_only=True)`` only: anything that needs arbitrary
unpickling is refused, never executed.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from purer.errors import ZooError
from purer.models import head_parameter_names, input_space_of, parameter_count
from purer.rundir import atomic_save_tensors, file_sha256
from purer.zoo.load import build_model, check_state, dry_forward, zoo_dir
from purer.zoo.manifest import (
    MANIFEST_NAME,
    Manifest,
    TeacherEntry,
    load_manifest,
    save_manifest,
)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A flat ``name -> tensor`` dict from a safetensors or weights-only torch file."""
    if not path.is_file():
        raise ZooError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ZooError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ZooError(f"{path}: refused: not a plain tensor checkpoint (only weights_only "
                           f"loading is allowed: {_first_line(exc)})") from None
        except (RuntimeError, EOFError, ValueError, AttributeError, TypeError, KeyError,
                IndexError, OSError, UnicodeDecodeError, zipfile.BadZipFile, MemoryError) as exc:
            raise ZooError(f"{path}: not a readable torch checkpoint (truncated, or not a .pt "
                           f"file: {type(exc).__name__}: {_first_line(exc)})") from None
    while isinstance(state, dict):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state:
        raise ZooError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    flat: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ZooError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
        flat[key[len("module."):] if key.startswith("module.") else key] = value
    return flat


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _head_outputs(arch: str, arch_kwargs: dict[str, Any], state: dict[str, Tensor]) -> int | None:
    """The class count the checkpoint's head implies (None when it has no head)."""
    probe = build_model(_probe_entry(arch, arch_kwargs))
    weights = [k for k in head_parameter_names(probe) if k.endswith("weight") and k in state]
    return int(state[sorted(weights)[0]].shape[0]) if weights else None


def _probe_entry(arch: str, arch_kwargs: dict[str, Any], num_classes: int = 1) -> TeacherEntry:
    return TeacherEntry(name="probe", file="probe.safetensors", arch=arch, arch_kwargs=arch_kwargs,
                        num_classes=num_classes, class_ids=list(range(num_classes)),
                        class_names=[str(i) for i in range(num_classes)], input_size=1,
                        mean=(0, 0, 0), std=(1, 1, 1))


def _fresh_ids(manifest: Manifest, dataset: str, names: list[str]) -> list[int]:
    """Reuse the id of a class another teacher of the same dataset already has
    (so episodes know it is the same class); otherwise ids above all in use."""
    known = {(t.dataset, n): i for t in manifest.teachers for n, i in zip(t.class_names, t.class_ids)}
    next_id = max((i for t in manifest.teachers for i in t.class_ids), default=-1) + 1
    ids = []
    for name in names:
        if (dataset, name) in known:
            ids.append(known[(dataset, name)])
        else:
            ids.append(next_id)
            next_id += 1
    return ids


def add_teacher(zoo: str | Path, arch: str, weights: str | Path, *,
                classes: Sequence[str] | None = None, class_ids: Sequence[int] | None = None,
                dataset: str = "", name: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                input_size: int | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> TeacherEntry:
    """Register the checkpoint ``weights`` of architecture ``arch`` in the zoo.

    The class count comes from ``classes``/``class_ids`` or, when neither is
    given, from the checkpoint's head. Without ``classes`` each output gets a
    placeholder class of this teacher's own (``<name>.class<i>``): teachers
    share a class only when the user says so, by giving the same class name
    (with the same ``dataset``) or id. The input space comes from
    ``input_size``/``mean``/``std`` where given, else from the model (the
    size it was built for, :func:`purer.models.input_space_of`); one forward
    pass checks that the size fits. The zoo folder and its zoo.json are
    created when absent.
    """
    folder = zoo_dir(zoo)
    weights = Path(weights)
    arch_kwargs = dict(arch_kwargs or {})
    manifest = load_manifest(folder) if (folder / MANIFEST_NAME).is_file() else Manifest()
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", weights.name.split(".")[0]).lstrip("._-") or "teacher"
    if manifest.get(name) is not None:
        raise ZooError(f"teacher '{name}' is already in {folder}; pass --name to choose another")
    state = read_checkpoint(weights)

    count = len(classes) if classes else len(class_ids) if class_ids else None
    if classes and class_ids and len(classes) != len(class_ids):
        raise ZooError(f"--classes has {len(classes)} names but --class-ids has {len(class_ids)} ids")
    if count is None:
        count = _head_outputs(arch, arch_kwargs, state)
        if count is None:
            raise ZooError(f"teacher '{name}' ({weights}): cannot tell the class count from the "
                           "checkpoint; pass --classes or --class-ids")
    names = list(classes) if classes else [f"{name}.class{i}" for i in range(count)]
    ids = list(class_ids) if class_ids else _fresh_ids(manifest, dataset, names)

    file = f"{name}.safetensors"
    probe = build_model(_probe_entry(arch, arch_kwargs, count).model_copy(
        update={"name": name, "file": file}))
    space = input_space_of(probe)
    try:
        entry = TeacherEntry(
            name=name, file=file, arch=arch, arch_kwargs=arch_kwargs, num_classes=count,
            dataset=dataset, class_ids=ids, class_names=names,
            input_size=input_size or space.size,
            mean=tuple(mean) if mean else space.mean, std=tuple(std) if std else space.std,
            train={"source": weights.name, "added_by": "purer zoo add"},
            parameters=parameter_count(probe))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "entry"
        raise ZooError(f"teacher '{name}': {field}: {err['msg']}") from None
    given = (f"--classes gives {len(classes)} classes" if classes else
             f"--class-ids gives {len(class_ids)} classes" if class_ids else
             f"the checkpoint's head suggests {count} classes")
    check_state(entry, probe, state, where=f"teacher '{name}' ({weights})", count_from=given)
    probe.load_state_dict(state, strict=True)
    dry_forward(entry, probe)

    target = folder / file
    if target.exists():
        raise ZooError(f"{target} already exists; pass --name to choose another")
    try:
        atomic_save_tensors(target, {k: v.clone() for k, v in state.items()},
                            metadata={"arch": arch, "teacher": name, "format": "pt"})
        entry.sha256 = file_sha256(target)
        manifest.teachers.append(entry)
        save_manifest(folder, manifest)
    except OSError as exc:
        if entry.sha256 is not None:  # the weights went in, the manifest did not: take them out
            target.unlink(missing_ok=True)
        raise ZooError(f"{exc.filename or folder}: cannot write to the zoo "
                       f"({exc.strerror or exc})") from None
    return entry
