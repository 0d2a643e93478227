"""``purer zoo build``: train a zoo of teachers per method.md §1, resumably.

The zoo folder gets its ``zoo.json`` (with the build options) before the
first teacher trains and again, atomically, after each teacher, so a killed
build resumes at the first unfinished teacher; a later build with more
``--teachers`` extends the zoo (see :mod:`purer.zoo.plan` for why the first
teachers are the same).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from purer.config import ZooBuildOptions
from purer.distributed import World, local_device
from purer.errors import ConfigError, ZooError
from purer.models import create_model, is_known, parameter_count
from purer.progress import console, progress
from purer.rundir import FileLock, atomic_save_tensors, file_sha256, resolve_device
from purer.types import SplitData
from purer.zoo.manifest import (
    MANIFEST_NAME,
    Manifest,
    TeacherEntry,
    load_manifest,
    save_manifest,
)
from purer.zoo.plan import TeacherPlan, arch_kwargs_for, make_plan, resolve_archs
from purer.zoo.train import FitResult, TrainSettings, fit

# (dataset name, root) -> its meta_train split
SplitLoader = Callable[[str, "str | None"], SplitData]


def load_meta_train(name: str, root: str | None, **options: Any) -> SplitData:
    from purer.data import load_split

    return load_split(name, "meta_train", root, **options)


def parse_extra_data(items: list[str]) -> list[tuple[str, str | None]]:
    """``NAME`` or ``NAME=ROOT`` -> (name, root)."""
    out = []
    for item in items:
        name, _, root = item.partition("=")
        if not name.strip():
            raise ConfigError(f"--extra-data {item!r}: expected NAME or NAME=ROOT")
        out.append((name.strip(), root.strip() or None))
    return out


def build_record(options: ZooBuildOptions, data: str,
                 data_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must match for a build to resume in an existing zoo (not --teachers,
    which may grow, and not roots, which differ between machines)."""
    record = options.model_dump(mode="json", exclude={"teachers"})
    record["arch"] = resolve_archs(options)
    record["extra_data"] = [n for n, _ in parse_extra_data(options.extra_data)]
    record["data"] = data
    if data_options:
        record["data_options"] = data_options
    return json.loads(json.dumps(record, default=str))


def build_zoo(options: ZooBuildOptions, data: str, root: str | None, out: str | Path,
              device: torch.device | str = "cpu",
              loader: SplitLoader | None = None,
              data_options: dict[str, Any] | None = None, world: World | None = None) -> Manifest:
    """Train (or finish training) the zoo described by ``options`` into ``out``.

    Args:
        options: scenario, teachers, way, assignment, architectures, training.
        data: the dataset plugin the teachers learn from (meta_train split).
        root: that dataset's root folder (None: the plugin's default).
        out: the zoo folder; an existing zoo built with the same options is
            resumed or extended, one built otherwise is refused.
        device: where training runs ("auto", "cpu", "cuda", ...).
        loader: ``(name, root) -> SplitData``; defaults to the dataset plugins.
        data_options: more options of the ``data`` plugin (e.g.
            ``images_per_class`` of synthetic-shapes), for the default loader.
        world: the ranks of a build across processes: each round, rank r
            trains the r-th teacher still to do, and rank 0 alone holds the
            folder's lock and writes the manifest, after the round's barrier.

    Returns:
        The manifest as written to ``out/zoo.json``.
    """
    out = Path(out)
    device = resolve_device(device) if isinstance(device, str) else device
    extra = {k: v for k, v in (data_options or {}).items() if k != "root" and v is not None}
    if loader is None:

        def loader(name: str, r: str | None) -> SplitData:
            return load_meta_train(name, r, **(extra if name == data else {}))

    archs = resolve_archs(options)
    for arch in archs:
        if not is_known(arch):
            raise ConfigError(f"zoo.build.arch: unknown architecture '{arch}' (a timm model name "
                              "or one registered by a plugin, see `purer plugins`)")
    splits = _load_datasets(options, data, root, loader)
    plans = make_plan(options, {n: s.class_names for n, s in splits.items()}, data)

    record = build_record(options, data, extra)
    world = world if world is not None else World()
    if world.distributed:
        return _build_distributed(out, record, plans, options, archs, splits, device, world)
    with _build_lock(out):
        return _build(out, record, plans, options, archs, splits, device)


def _build_distributed(out: Path, record: dict[str, Any], plans: list[TeacherPlan],
                       options: ZooBuildOptions, archs: list[str], splits: dict[str, SplitData],
                       device: torch.device, world: World) -> Manifest:
    """:func:`_build` with the teachers still to train dealt out in rounds:
    teacher i of the to-do list on rank i mod N; the manifest grows (rank 0)
    once per round, so an interrupted build resumes as in one process."""
    device = local_device(device, world)
    lock = _build_lock(out) if world.is_main else None
    try:
        world.barrier()  # rank 0 holds the folder
        manifest, todo = _resume(out, record, plans)
        world.barrier()  # everyone read the same manifest before it changes
        for first in range(0, len(todo), world.size):
            mine = todo[first + world.rank] if first + world.rank < len(todo) else None
            entry = None
            if mine is not None:
                entry = _train_teacher(mine, splits[mine.dataset], options, archs, out, device,
                                       lambda epoch, acc: None)
                console.print(f"{entry.name}: {entry.arch} on {entry.dataset} held-out "
                              f"{entry.heldout_accuracy:.1%} (rank {world.rank})", markup=False,
                              highlight=False)
            entries = world.gather_objects(entry)  # a barrier: the round's weights are written
            for plan, built in zip(todo[first:first + world.size], entries):
                manifest.teachers.insert(_position(manifest, plans, plan), built)
            if world.is_main:
                save_manifest(out, manifest)
        world.barrier()  # the manifest is complete before any rank returns
        return manifest
    finally:
        if lock is not None:
            lock.release()


BUILD_LOCK = ".build.lock"


def _build_lock(out: Path) -> FileLock:
    """The zoo folder's lock, taken (waiting for another build of the same
    folder to finish first: it then resumes with nothing left to train)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"{out}: cannot create the zoo folder ({exc.strerror or exc})") from None
    lock = FileLock(out / BUILD_LOCK)
    if not lock.acquire(wait=False):
        console.print(f"{out}: another process ({lock.holder()}) is building this zoo; waiting "
                      "for it", highlight=False, markup=False, soft_wrap=True)
        lock.acquire(wait=True)
    return lock


def _build(out: Path, record: dict[str, Any], plans: list[TeacherPlan], options: ZooBuildOptions,
           archs: list[str], splits: dict[str, SplitData], device: torch.device) -> Manifest:
    """Train the planned teachers that ``out`` does not hold yet (lock held)."""
    manifest, todo = _resume(out, record, plans)
    if len(plans) < options.teachers:
        console.print(f"note: {options.assign} assignment gives {len(plans)} teachers "
                      f"(asked for {options.teachers})", highlight=False)
    with progress() as bar:
        t_task = bar.add_task("teachers", total=len(plans), completed=len(plans) - len(todo),
                              status="")
        e_task = bar.add_task("epochs", total=options.epochs, status="")
        for plan in todo:
            bar.reset(e_task, total=options.epochs,
                      status=f"{plan.name} {plan.arch} on {plan.dataset}")

            def on_epoch(epoch: int, acc: float, plan: TeacherPlan = plan) -> None:
                bar.update(e_task, completed=epoch,
                           status=f"{plan.name} {plan.arch} held-out {acc:.1%}")

            entry = _train_teacher(plan, splits[plan.dataset], options, archs, out, device, on_epoch)
            manifest.teachers.insert(_position(manifest, plans, plan), entry)
            save_manifest(out, manifest)
            console.print(f"{entry.name}: {entry.arch} on {entry.dataset} "
                          f"[{', '.join(entry.class_names)}] held-out "
                          f"{entry.heldout_accuracy:.1%} (epoch {entry.train['best_epoch']}, "
                          f"{entry.train['seconds']:.0f}s)", markup=False, highlight=False)
            bar.advance(t_task)  # after the teacher's line: the count includes it
    return manifest


def _load_datasets(options: ZooBuildOptions, data: str, root: str | None,
                   loader: SplitLoader) -> dict[str, SplitData]:
    """meta_train of --data, plus each --extra-data dataset for MH."""
    sources = [(data, root)]
    if options.scenario == "mh":
        sources += parse_extra_data(options.extra_data)
        if len(sources) < 2:
            raise ConfigError("zoo.build.extra_data: scenario mh needs at least one "
                              "--extra-data dataset besides --data")
    names = [n for n, _ in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"zoo.build.extra_data: a dataset is listed twice: {names}")
    return {name: loader(name, r) for name, r in sources}


def _position(manifest: Manifest, plans: list[TeacherPlan], plan: TeacherPlan) -> int:
    """Built teachers stay in plan order, ahead of any added with `zoo add`."""
    planned = {p.name for p in plans}
    return sum(1 for t in manifest.teachers if t.name in planned and t.name < plan.name)


def _resume(out: Path, record: dict[str, Any], plans: list[TeacherPlan]
            ) -> tuple[Manifest, list[TeacherPlan]]:
    """The manifest to extend and the teachers still to train."""
    if not (out / MANIFEST_NAME).is_file():
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise ZooError(f"{out}: folder exists, is not empty and holds no {MANIFEST_NAME}; "
                           "choose another --out")
        manifest = Manifest(teachers=[], build=record)
        save_manifest(out, manifest)
        return manifest, list(plans)
    manifest = load_manifest(out)
    if manifest.build != record:
        old = manifest.build or {}
        diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        what = f"options differ in: {', '.join(diff)}" if manifest.build else "not made by `zoo build`"
        raise ZooError(f"{out}: holds a zoo built with other options ({what}); "
                       "choose another --out to build a new zoo")
    done: set[str] = set()
    for plan in plans:
        entry = manifest.get(plan.name)
        if entry is None or entry.arch != plan.arch or entry.dataset != plan.dataset \
                or tuple(entry.class_names) != plan.class_names:
            break
        path = out / entry.file
        if not path.is_file() or (entry.sha256 and file_sha256(path) != entry.sha256):
            break
        done.add(plan.name)
    # Anything planned but not verified is retrained; its stale entry goes.
    planned = {p.name for p in plans}
    manifest.teachers = [t for t in manifest.teachers if t.name in done or t.name not in planned]
    if done:
        console.print(f"resuming {out}: {len(done)} of {len(plans)} teachers already trained",
                      highlight=False)
    return manifest, [p for p in plans if p.name not in done]


def _make_model(arch: str, num_classes: int, kwargs: dict[str, Any], size: int
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Create the teacher; pass ``img_size`` when the architecture's default
    input differs from the dataset's and the entry point accepts it (Conv4's
    head width and ViT's patch grid depend on it)."""
    default = timm.models.get_pretrained_cfg(arch)
    default_size = default.input_size[-1] if default is not None and default.input_size else None
    if "img_size" not in kwargs and default_size != size:
        try:
            return create_model(arch, num_classes, img_size=size, **kwargs), {**kwargs, "img_size": size}
        except TypeError:
            pass
    return create_model(arch, num_classes, **kwargs), dict(kwargs)


def _split_indices(split: SplitData, names: tuple[str, ...], holdout: float,
                   generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per class, a seeded ``1-holdout`` / ``holdout`` split of its images."""
    label_of = {n: i for i, n in enumerate(split.class_names)}
    train, held = [], []
    for name in names:
        idx = (split.labels == label_of[name]).nonzero().flatten()
        if len(idx) < 2:
            raise ZooError(f"class '{name}' has {len(idx)} image(s); a teacher needs at least 2 "
                           "per class (train + held-out)")
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = min(len(idx) - 1, max(1, round(len(idx) * holdout)))
        held.append(idx[:k])
        train.append(idx[k:])
    return train, held


def _train_teacher(plan: TeacherPlan, split: SplitData, options: ZooBuildOptions,
                   archs: list[str], out: Path, device: torch.device,
                   on_epoch: Callable[[int, float], None]) -> TeacherEntry:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(plan.seed)
    train_idx, held_idx = _split_indices(split, plan.class_names, options.holdout, generator)

    def tensors(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = split.space.normalize(split.images[torch.cat(parts)])
        y = torch.cat([torch.full((len(p),), j, dtype=torch.long) for j, p in enumerate(parts)])
        return x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)

    train_x, train_y = tensors(train_idx)
    held_x, held_y = tensors(held_idx)
    settings = TrainSettings.for_arch(plan.arch, options.epochs, options.batch_size, options.lr,
                                      options.augment, options.adam_archs)
    kwargs = arch_kwargs_for(plan.arch, options.arch_kwargs, archs)
    with torch.random.fork_rng(devices=[]):  # model init seeded, global RNG untouched
        torch.manual_seed(plan.seed)
        model, kwargs = _make_model(plan.arch, len(plan.class_names), kwargs, split.space.size)
    model = model.to(device, memory_format=torch.channels_last)
    try:
        result: FitResult = fit(model, train_x, train_y, held_x, held_y, settings, generator,
                                on_epoch)
    except FloatingPointError as exc:
        raise ZooError(f"teacher '{plan.name}' ({plan.arch}): training diverged: {exc}") from None

    file = f"{plan.name}.safetensors"
    atomic_save_tensors(out / file, result.best_state,
                        metadata={"arch": plan.arch, "teacher": plan.name, "format": "pt"})
    label_of = {n: i for i, n in enumerate(split.class_names)}
    ids = split.class_ids
    class_ids = [int(ids[label_of[n]]) if ids is not None else label_of[n] for n in plan.class_names]
    train_info = {**settings.to_dict(), "holdout": options.holdout, "seed": plan.seed,
                  "best_epoch": result.best_epoch, "heldout_curve": [round(a, 4) for a in result.accuracies],
                  "train_images": len(train_y), "heldout_images": len(held_y),
                  "device": device.type, "seconds": round(time.perf_counter() - start, 2)}
    return TeacherEntry(
        name=plan.name, file=file, arch=plan.arch, arch_kwargs=kwargs,
        num_classes=len(plan.class_names), dataset=plan.dataset, class_ids=class_ids,
        class_names=list(plan.class_names), input_size=split.space.size,
        mean=split.space.mean, std=split.space.std,
        heldout_accuracy=round(result.best_accuracy, 6), train=train_info,
        sha256=file_sha256(out / file), parameters=parameter_count(model))
