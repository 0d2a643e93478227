"""Checkpoints: every tensor in safetensors, everything else in JSON, no pickle.

A training checkpoint is a pair ``step-<N>.safetensors`` + ``step-<N>.json``;
``last.json`` names the newest complete pair and is written last, so a kill
at any moment leaves either the old or the new checkpoint, never half of one.
The val-selected model is kept the same way under ``best``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from purer.errors import ConfigError
from purer.rundir import atomic_save_tensors, atomic_write_text, load_tensors

TENSOR = "__tensor__"


def flatten_state(state: Any, tensors: dict[str, Tensor], prefix: str = "s") -> Any:
    """Replace every tensor in a nested dict/list with a reference into ``tensors``."""
    if isinstance(state, Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {TENSOR: prefix}
    if isinstance(state, dict):
        return {"__dict__": [[_key(k), flatten_state(v, tensors, f"{prefix}.{i}")]
                             for i, (k, v) in enumerate(state.items())]}
    if isinstance(state, (list, tuple)):
        kind = "__tuple__" if isinstance(state, tuple) else "__list__"
        return {kind: [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(state)]}
    if isinstance(state, float) and state != state:
        return {"__float__": "nan"}
    if isinstance(state, float) and state in (float("inf"), float("-inf")):
        return {"__float__": "inf" if state > 0 else "-inf"}
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"cannot checkpoint a {type(state).__name__}")


def _key(key: Any) -> Any:
    if isinstance(key, (str, int)):
        return key
    raise TypeError(f"checkpoint keys must be str or int, not {type(key).__name__}")


def unflatten_state(node: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, dict):
        if TENSOR in node:
            return tensors[node[TENSOR]]
        if "__dict__" in node:
            return {k: unflatten_state(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [unflatten_state(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(unflatten_state(v, tensors) for v in node["__tuple__"])
        if "__float__" in node:
            return float(node["__float__"])
    return node


def save_state(folder: Path, stem: str, state: dict[str, Any], pointer: str | None = None,
               info: dict[str, Any] | None = None) -> None:
    """Write ``stem.safetensors`` + ``stem.json``; then, if given, the pointer file."""
    tensors: dict[str, Tensor] = {}
    skeleton = flatten_state(state, tensors)
    atomic_save_tensors(folder / f"{stem}.safetensors", tensors)
    atomic_write_text(folder / f"{stem}.json", json.dumps({"info": info or {}, "state": skeleton}))
    if pointer:
        atomic_write_text(folder / f"{pointer}.json", json.dumps({"stem": stem, **(info or {})}))


def load_state(folder: Path, pointer: str, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """Read the checkpoint a pointer names: (state, info)."""
    path = folder / f"{pointer}.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no '{pointer}' checkpoint in this run")
    stem = json.loads(path.read_text())["stem"]
    meta = json.loads((folder / f"{stem}.json").read_text())
    tensors = load_tensors(folder / f"{stem}.safetensors", device)
    return unflatten_state(meta["state"], tensors), meta["info"]


def prune(folder: Path, keep: set[str], prefix: str) -> None:
    """Remove older checkpoint pairs of ``prefix`` that no pointer names."""
    for path in folder.glob(f"{prefix}-*.safetensors"):
        if path.stem not in keep:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Tensor], generator: torch.Generator) -> None:
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
