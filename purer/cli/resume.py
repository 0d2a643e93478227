"""What ``purer run --resume`` may change in a run's configuration.

A resumed run continues the run's own configuration. Options and ``--set``
given with ``--resume`` are applied on top of it and compared key by key:
values that never alter the training trajectory (how long to train, how
often to validate or checkpoint, where the zoo and the data live, the
final evaluation) are taken and said; any other change would make the run
silently follow another trajectory than the one it started, so it is
refused in one line unless ``--force`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from purer.cli.options import RUN_OPTIONS, options_layer
from purer.config import RunConfig, build_config
from purer.errors import ConfigError

# Keys a resume may change freely: bookkeeping and evaluation (never the
# trajectory of the training state), and locations (the same files elsewhere).
FREE_KEYS = ("train.steps", "train.val_every", "train.val_tasks", "train.checkpoint_every",
             "train.image_every", "train.max_memory_abs", "device", "zoo.path")
FREE_PREFIXES = ("eval.", "calibrator.")
# Options that pick a new run folder or a whole new configuration.
NEW_RUN_OPTIONS = {"config_path": "--config", "preset": "--preset", "name": "--name",
                   "out": "--out"}


def is_location(key: str) -> bool:
    """A data option that names a place (``data.root``, ``data.cache_dir``)."""
    section, _, option = key.partition(".")
    return section == "data" and (option == "root" or option.endswith("_dir"))


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with its paths (zoo, output folder, data locations) made
    absolute, so a resume or an eval started from another folder finds them."""
    from purer.plugins import get_host

    tree = config.model_dump(mode="json")

    def absolute(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        return os.path.abspath(os.path.expanduser(value))

    tree["out"] = absolute(tree["out"])
    tree["zoo"]["path"] = absolute(tree["zoo"]["path"])
    for option in list(tree["data"]):
        if is_location(f"data.{option}"):
            tree["data"][option] = absolute(tree["data"][option])
    return build_config(tree, host=get_host())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every leaf key whose value differs: key -> (old, new)."""
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_free(key: str) -> bool:
    return key in FREE_KEYS or key.startswith(FREE_PREFIXES) or is_location(key)


def describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())


def resume_config(saved: RunConfig, given: dict[str, Any], force: bool
                  ) -> tuple[RunConfig, dict[str, tuple[Any, Any]]]:
    """The configuration a resume continues with, and what it changes.

    ``given`` are ``purer run``'s configuration options (``--steps``,
    ``--set``, ...). Raises a one-line ConfigError for options that do not
    apply to a resume, and for trajectory-changing values without ``force``.
    """
    from purer.plugins import get_host

    for option, flag in NEW_RUN_OPTIONS.items():
        if given.get(option):
            raise ConfigError(f"{flag}: --resume continues the run in its own folder with its own "
                              "configuration; change single values with options such as --steps "
                              "or with --set")
    layer = options_layer({k: v for k, v in given.items() if v != ""}, RUN_OPTIONS)
    config = absolute_paths(build_config(saved.model_dump(mode="json"), layer,
                                         assignments=tuple(given.get("assignments") or ()),
                                         host=get_host()))
    changes = changed_keys(saved, config)
    refused = {k: v for k, v in changes.items() if not is_free(k)}
    if refused and not force:
        raise ConfigError(f"--resume: {describe(refused)} would change the run's trajectory "
                          "(it no longer replays the run it continues); leave "
                          f"{'it' if len(refused) == 1 else 'them'} as the run has "
                          f"{'it' if len(refused) == 1 else 'them'}, or pass --force")
    return config, changes
