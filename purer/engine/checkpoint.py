"""Checkpoints: every tensor in safetensors, everything else in JSON, no pickle.

A training checkpoint is a pair ``step-<N>.safetensors`` + ``step-<N>.json``;
the JSON records the sha256 of the tensors file and of its own content, so
a changed or damaged byte is caught on load instead of resuming on another
trajectory. ``last.json`` names the newest pair and is written last, after
the pair was read back and verified, so a kill at any moment leaves either
the old or the new checkpoint, never half of one. The newest older pair is
kept as well: a checkpoint damaged later falls back to it. The val-selected
model is kept the same way under ``best``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from safetensors import SafetensorError
from safetensors.torch import save as save_tensors
from torch import Tensor

from purer.errors import ConfigError, RunError
from purer.rundir import atomic_write_bytes, atomic_write_text, file_sha256, load_tensors

TENSOR = "__tensor__"
DIGESTS = "sha256"
# pointer file -> the stem prefix of the pairs it points at
POINTERS = {"last": "step", "best": "best"}
_STEM = re.compile(r"(?P<prefix>[a-z]+)-(?P<n>[0-9]+)")



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
    """Write ``stem.safetensors`` + ``stem.json`` with their digests, read them
    back, and only then point ``pointer`` (if given) at them and prune the
    older pairs of the same kind (the newest older one stays, as a fallback).

    A failed write (e.g. a full disk) raises a one-line :class:`RunError`;
    the previous checkpoint and its pointer are untouched.
    """
    tensors: dict[str, Tensor] = {}
    skeleton = flatten_state(state, tensors)
    payload = save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    body = {"info": info or {}, "state": skeleton}
    document = {**body, DIGESTS: {"tensors": hashlib.sha256(payload).hexdigest(),
                                  "body": _body_digest(body)}}
    target = folder / f"{stem}.safetensors"
    try:
        atomic_write_bytes(target, payload)
        target = folder / f"{stem}.json"
        atomic_write_text(target, json.dumps(document))
        verify_pair(folder, stem)  # what is on disk, before anything points at it
        if pointer:
            target = folder / f"{pointer}.json"
            point(folder, pointer, stem, info)
    except OSError as exc:
        kept = pointed_stem(folder, pointer) if pointer else None
        intact = f"; the previous checkpoint ({kept}) is intact" if kept else ""
        raise RunError(f"{target}: cannot write the checkpoint ({exc.strerror or exc}){intact}") \
            from None
    prune(folder, stem)


def _body_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def verify_pair(folder: Path, stem: str) -> dict[str, Any]:
    """The JSON document of a checkpoint pair, after checking both files
    against its digests. Any fault (missing, empty, truncated, changed) is a
    one-line :class:`RunError` naming the file."""
    meta_path, tensor_path = folder / f"{stem}.json", folder / f"{stem}.safetensors"
    try:
        document = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RunError(f"{meta_path}: checkpoint file missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{meta_path}: truncated or corrupt checkpoint ({_one_line(exc)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("state"), dict):
        raise RunError(f"{meta_path}: not a purer checkpoint")
    if not tensor_path.is_file():
        raise RunError(f"{tensor_path}: checkpoint file missing")
    digests = document.get(DIGESTS)
    if digests is not None:  # checkpoints of purer versions before digests have none
        body = {"info": document.get("info", {}), "state": document["state"]}
        if not isinstance(digests, dict) or digests.get("body") != _body_digest(body):
            raise RunError(f"{meta_path}: sha256 mismatch (file changed or corrupt)")
        if file_sha256(tensor_path) != digests.get("tensors"):
            raise RunError(f"{tensor_path}: sha256 mismatch (file changed or corrupt)")
    return document


def read_pair(folder: Path, stem: str, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """One checkpoint pair, verified (:func:`verify_pair`) and loaded: (state, info)."""
    document = verify_pair(folder, stem)
    tensor_path = folder / f"{stem}.safetensors"
    try:
        tensors = load_tensors(tensor_path, device)
    except FileNotFoundError:
        raise RunError(f"{tensor_path}: checkpoint file missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunError(f"{tensor_path}: not a readable safetensors file "
                       f"({_one_line(exc)})") from None
    try:
        state = unflatten_state(document["state"], tensors)
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{folder / f'{stem}.json'}: does not match {tensor_path.name}") from None
    info = document.get("info", {})
    return state, info if isinstance(info, dict) else {}


def point(folder: Path, pointer: str, stem: str, info: dict[str, Any] | None = None) -> None:
    """Make ``pointer`` (``best``, ``last``) name the pair ``stem``, with its info."""
    atomic_write_text(folder / f"{pointer}.json", json.dumps({"stem": stem, **(info or {})}))


def pointed_stem(folder: Path, pointer: str) -> str | None:
    """The stem a pointer file names; None when it is missing or broken."""
    try:
        stem = json.loads((folder / f"{pointer}.json").read_text())["stem"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return stem if isinstance(stem, str) and _STEM.fullmatch(stem) else None


def load_state(folder: Path, pointer: str, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """Read the checkpoint a pointer names: (state, info).

    When that checkpoint or the pointer itself is damaged, the newest intact
    pair of the same kind is used instead, with one warning line naming the
    damaged file; with none intact, a one-line :class:`RunError`.
    """
    prefix = POINTERS.get(pointer, pointer)
    named = pointed_stem(folder, pointer)
    candidates = ([named] if named else []) + [s for s in stems(folder, prefix) if s != named]
    if not candidates:
        if (folder / f"{pointer}.json").exists():
            raise RunError(f"{folder / f'{pointer}.json'}: broken pointer and no checkpoint to "
                           "fall back to")
        raise ConfigError(f"{folder / f'{pointer}.json'}: no '{pointer}' checkpoint in this run")
    problems = [] if named else [f"{folder / f'{pointer}.json'}: missing or broken pointer"]
    for stem in candidates:
        try:
            state, info = read_pair(folder, stem, device)
        except RunError as exc:
            problems.append(str(exc))
            continue
        if problems:
            _warn(f"{problems[0]}; using the newest intact checkpoint, {stem}, instead")
        return state, info
    raise RunError(f"{problems[0]}; no intact '{pointer}' checkpoint to fall back to")


def _warn(message: str) -> None:
    from purer.progress import console

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def stems(folder: Path, prefix: str) -> list[str]:
    """Stems ``<prefix>-<N>`` that have a JSON file, newest (largest N) first."""
    found = []
    for path in folder.glob(f"{prefix}-*.json"):
        match = _STEM.fullmatch(path.stem)
        if match and match["prefix"] == prefix:
            found.append((int(match["n"]), path.stem))
    return [s for _, s in sorted(found, reverse=True)]


def prune(folder: Path, current: str) -> None:
    """Remove the pairs of ``current``'s kind except ``current`` and the newest
    one before it (kept as a fallback should ``current`` be damaged later).
    Pairs numbered after ``current`` (left by a run resumed from an older
    checkpoint) go too."""
    match = _STEM.fullmatch(current)
    if match is None:
        return
    prefix, n = match["prefix"], int(match["n"])
    older = [s for s in stems(folder, prefix) if int(_STEM.fullmatch(s)["n"]) < n]
    keep = {current, *older[:1]}
    for path in [*folder.glob(f"{prefix}-*.safetensors"), *folder.glob(f"{prefix}-*.json")]:
        if path.stem not in keep and _STEM.fullmatch(path.stem):
            path.unlink(missing_ok=True)


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
