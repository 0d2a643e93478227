"""Teachers from a zoo, checked, frozen and resident on the device.

Loading verifies every teacher before any work starts: the weights file's
sha256, that it parses as safetensors, that the architecture exists, that
the tensors match the architecture key for key and shape for shape (the head's
width against the manifest's class count) and hold finite numbers, and, with
one forward pass on a blank image, that the architecture takes the input
size the manifest gives and answers with finite logits, one per class. A
fault is one line naming the teacher, its file and the field.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from purer.errors import PluginError, ZooError
from purer.inversion import InversionLoss
from purer.models import create_model, declared_input_size, head_parameter_names, is_known
from purer.rundir import file_sha256
from purer.types import Teacher, find_bn_layers
from purer.zoo.manifest import Manifest, TeacherEntry, load_manifest, manifest_path

log = logging.getLogger("purer.zoo")

__all__ = ["load_manifest", "load_teachers", "read_weights", "build_model", "check_state",
           "dry_forward", "load_teacher_model"]


def zoo_dir(zoo: str | Path) -> Path:
    return manifest_path(zoo).parent


def read_weights(zoo: str | Path, entry: TeacherEntry) -> dict[str, Tensor]:
    """The teacher's tensors on the CPU, after the sha256 check (no pickle involved)."""
    path = zoo_dir(zoo) / entry.file
    if not path.is_file():
        raise ZooError(f"{entry.where()}: weights file not found at {path}")
    if entry.sha256 is not None:
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise ZooError(f"{entry.where()}: sha256 mismatch (file changed or corrupt): "
                           f"zoo.json says {entry.sha256[:12]}..., file is {actual[:12]}...")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ZooError(f"{entry.where()}: not a readable safetensors file "
                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def build_model(entry: TeacherEntry) -> nn.Module:
    """A fresh, randomly initialised model of the entry's architecture."""
    if not is_known(entry.arch):
        raise ZooError(f"{entry.where()}: unknown architecture '{entry.arch}' "
                       "(not a timm model and no purer plugin registers it)")
    try:
        return create_model(entry.arch, num_classes=entry.num_classes, **entry.arch_kwargs)
    except PluginError as exc:
        raise ZooError(f"{entry.where()}: {exc}") from None
    except Exception as exc:  # bad arch_kwargs surface as TypeError/ValueError from timm
        raise ZooError(f"{entry.where()}: cannot build '{entry.arch}' with arch_kwargs "
                       f"{entry.arch_kwargs}: {type(exc).__name__}: {exc}") from None


def check_state(entry: TeacherEntry, model: nn.Module, state: dict[str, Tensor], *,
                where: str | None = None, count_from: str | None = None) -> None:
    """Raise a one-line ZooError unless ``state`` fits ``model`` exactly.

    ``where`` names the teacher in messages and ``count_from`` says who gave
    its class count (default: the zoo's zoo.json), so that `zoo add` speaks of
    the options and the file the user gave, not of a zoo.json not yet written.
    """
    label = where or entry.where()
    count_from = count_from or f"zoo.json says {entry.num_classes} classes"
    expected = model.state_dict()
    arch = f"'{entry.arch}'" + (f" {entry.arch_kwargs}" if entry.arch_kwargs else "")
    heads = head_parameter_names(model)
    for key in sorted(heads):
        if key in state and key in expected and state[key].shape[:1] != expected[key].shape[:1]:
            raise ZooError(f"{label}: {count_from} but the "
                           f"head '{key}' in the weights has {state[key].shape[0]} outputs")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. '{extra[0]}')")
        raise ZooError(f"{label}: weights do not match architecture {arch}: "
                       f"{', '.join(parts)} keys")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ZooError(f"{label}: '{key}' has shape {tuple(state[key].shape)} in the "
                           f"weights but {tuple(value.shape)} in {arch}")
        if state[key].dtype.is_floating_point != value.dtype.is_floating_point:
            raise ZooError(f"{label}: '{key}' has dtype {state[key].dtype}, "
                           f"expected {value.dtype}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ZooError(f"{label}: weight '{key}' holds NaN or infinite values")


@torch.no_grad()
def dry_forward(entry: TeacherEntry, model: nn.Module) -> None:
    """The entry's input size against the model: the size the model says it
    was built for, if it says, and one forward pass on a blank image of that
    size, which must give finite logits, one per class.

    Catches a wrong ``input_size`` (a ViT's patch grid or Conv4's head are
    fixed at construction) when the zoo is made or loaded, not minutes into a
    run.
    """
    size = entry.input_size
    arch = f"'{entry.arch}'" + (f" {entry.arch_kwargs}" if entry.arch_kwargs else "")
    built_for = declared_input_size(model)
    if built_for is not None and built_for != size:
        raise ZooError(f"{entry.where()}: input_size: {size} px, but {arch} was built for "
                       f"{built_for} px")
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.zeros(1, 3, size, size))
    except Exception as exc:  # whatever the architecture raises on a wrong size
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZooError(f"{entry.where()}: input_size: {size} px does not fit {arch} "
                       f"({type(exc).__name__}: {first[:200]})") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (1, entry.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ZooError(f"{entry.where()}: a {size} px input gives outputs of shape {shape}, "
                       f"expected (1, {entry.num_classes})")
    if not bool(torch.isfinite(logits).all()):
        raise ZooError(f"{entry.where()}: its logits on a blank {size} px image are not finite")


def load_teacher_model(zoo: str | Path, entry: TeacherEntry) -> nn.Module:
    """Build, check and load one teacher (CPU, training mode untouched)."""
    state = read_weights(zoo, entry)
    model = build_model(entry)
    check_state(entry, model, state)
    model.load_state_dict(state, strict=True)
    dry_forward(entry, model)
    return model


def load_teachers(zoo_path: str | Path, device: torch.device | str = "cpu",
                  channels_last: bool = False, inversion: InversionLoss | None = None) -> list[Teacher]:
    """Every teacher of the zoo, frozen, in eval mode, moved to ``device`` once.

    Args:
        zoo_path: the zoo folder (or its zoo.json).
        device: where the teachers live for the whole run.
        channels_last: store conv weights NHWC (faster convolutions on CPU/GPU).
        inversion: the run's inversion loss, if known: then the notice names
            the terms each teacher gets (``InversionTerm.applies_to``).

    When the zoo has teachers without BatchNorm layers, one log line says
    so (the BN-statistics term skips them, ``Teacher.has_bn``), with the
    inversion terms each group of teachers gets when ``inversion`` is given.
    """
    manifest: Manifest = load_manifest(zoo_path)
    if not manifest.teachers:
        raise ZooError(f"{zoo_dir(zoo_path)}: the zoo has no teachers")
    teachers: list[Teacher] = []
    for entry in manifest.teachers:
        model = load_teacher_model(zoo_path, entry)
        model.requires_grad_(False).eval()
        model = model.to(device, memory_format=torch.channels_last) if channels_last \
            else model.to(device)
        teachers.append(Teacher(name=entry.name, model=model, class_ids=list(entry.class_ids),
                                class_names=list(entry.class_names), space=entry.space,
                                arch=entry.arch, dataset=entry.dataset,
                                bn_layers=find_bn_layers(model)))
    without_bn = [t.name for t in teachers if not t.has_bn]
    if without_bn and inversion is None:
        _note(f"{len(without_bn)} teacher(s) without BatchNorm, the BN-statistics term skips "
              f"them: {', '.join(without_bn)}")
    elif without_bn:
        groups: dict[tuple[str, ...], list[str]] = {}
        for t in teachers:
            groups.setdefault(tuple(inversion.names_for(t)), []).append(t.name)
        _note("teachers without BatchNorm in the zoo; inversion terms per teacher: " + "; ".join(
            f"{', '.join(names) or 'none'} for {len(group)} ({_first(group)})"
            for names, group in groups.items()))
    return teachers


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", +{len(names) - shown}" if len(names) > shown else "")


def _note(message: str) -> None:
    """One line on the rich console (stderr) and in the log."""
    from purer.progress import console

    log.info(message)
    console.print(f"[yellow]note:[/yellow] {message}", highlight=False)
