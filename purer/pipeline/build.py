"""Turn a resolved configuration into ready components.

Each function takes the configuration section it uses; :func:`build_trainer`
wires a whole run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from purer.cache import cache_dir
from purer.config import InversionSection, PluginSection, RunConfig, TrainSection, ZooSection
from purer.data import read_split
from purer.distributed import World
from purer.engine.trainer import ECITrainer
from purer.errors import ConfigError, PluginError
from purer.interfaces import Calibrator, MetaLearner
from purer.inversion import InversionLoss
from purer.plugins import get_host
from purer.rundir import RunDir, atomic_write_text
from purer.types import Teacher


def zoo_path(zoo: ZooSection, data: PluginSection, device: torch.device,
             world: World | None = None) -> Path:
    """The configured zoo, or a cached one built (once) from ``zoo.build``.

    Runs started together may ask for the same cached zoo: ``build_zoo``
    holds the zoo folder's lock while it trains, so the second one waits and
    then finds every teacher trained and verified instead of training them
    over the first one's files.
    """
    if zoo.path:
        return Path(zoo.path)
    from purer.zoo.build import build_zoo

    recipe = {"data": data.model_dump(), "build": zoo.build.model_dump()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / "zoos" / f"{data.name}-{key}"
    if not (out / ".complete").exists():
        options = data.option_dict()
        root = options.pop("root", None)
        world = world if world is not None else World()
        build_zoo(zoo.build, data.name, root, out, device, data_options=options, world=world)
        if world.is_main:
            atomic_write_text(out / ".complete", json.dumps(recipe))
        world.barrier()
    return out


def load_zoo(zoo: ZooSection, data: PluginSection, device: torch.device,
             world: World | None = None,
             inversion: InversionLoss | None = None) -> list[Teacher]:
    from purer.zoo.load import load_teachers

    return load_teachers(zoo_path(zoo, data, device, world), device, inversion=inversion)


def build_meta_model(train: TrainSection, way: int | None = None) -> torch.nn.Module:
    """A fresh meta-model of ``train.meta_arch`` with a ``way``-class head
    (default: the training way)."""
    from purer.models import create_model

    try:
        return create_model(train.meta_arch, num_classes=way or train.way, **train.meta_arch_kwargs)
    except PluginError as exc:
        raise ConfigError(f"train.meta_arch: {exc}") from None
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # the entry point refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"train.meta_arch_kwargs: cannot build '{train.meta_arch}' with "
                          f"{train.meta_arch_kwargs}: {first}") from None


def initialize(model: torch.nn.Module, init: PluginSection, teachers: Sequence[Teacher],
               section: str = "init") -> None:
    get_host().create("initializer", init.name, init.options, section=section).initialize(model, teachers)


def needs_teachers(init: str) -> bool:
    """Whether initialiser ``init`` reads the zoo (so it has to be loaded)."""
    return get_host().get("initializer", init).needs_teachers


def build_meta_learner(meta: PluginSection, model: torch.nn.Module,
                       device: torch.device) -> MetaLearner:
    learner = get_host().create("meta_learner", meta.name, meta.options, section="meta")
    learner.setup(model, device)
    return learner


def build_inversion(inversion: InversionSection) -> InversionLoss:
    """The run's inversion loss: each configured term, built with its options."""
    host = get_host()
    return InversionLoss([(name, host.create("inversion_term", name, inversion.options_of(name),
                                             section=f"inversion.term_options.{name}"), weight)
                          for name, weight in inversion.terms.items()])


def build_calibrator(calibrator: PluginSection, inversion: InversionSection) -> Calibrator:
    built = get_host().create("calibrator", calibrator.name, calibrator.options, section="calibrator")
    built.setup(build_inversion(inversion))
    return built


def build_trainer(config: RunConfig, run: RunDir, device: torch.device,
                  world: World | None = None) -> ECITrainer:
    """Everything Alg. 1 needs, from the configuration: teachers, the
    initialised meta-model in its learner, the inverter, the curriculum.
    ``world``: the processes sharing the run (each builds the same
    components; the trainer shards the teachers)."""
    host, train = get_host(), config.train
    generator = torch.Generator().manual_seed(config.seed)
    inversion = build_inversion(config.inversion)
    teachers = load_zoo(config.zoo, config.data, device, world, inversion)
    val_split = read_split(config.data, "meta_val")
    torch.manual_seed(config.seed)  # the meta-model's init depends on the seed alone
    model = build_meta_model(train)
    initialize(model, config.init, teachers)
    meta = build_meta_learner(config.meta, model, device)
    inverter = host.create("inverter", config.inverter.name, config.inverter.options, section="inverter")
    inverter.setup(teachers, train.shot + train.query, device, generator, inversion)
    curriculum = host.create("curriculum", config.curriculum.name, config.curriculum.options,
                             section="curriculum")
    return ECITrainer(config, run, device, teachers, meta, inverter, curriculum, val_split.space,
                      val_split, generator, world)
