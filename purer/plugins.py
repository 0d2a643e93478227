"""The plugin host: a typed facade over pluggy.

Core code asks the host for components by kind and name
(``host.create("curriculum", name, options)``) and never spells a hook name
or a plugin's name. Plugins are found through the ``purer`` entry-point
group; the built-in ones in ``purer_plugins`` are declared there too, so they
load exactly like a third-party package.

A component is registered either as the object itself or lazily, as a
``"module:attribute"`` reference that is imported the first time the
component is used. Lazy registration keeps commands that only list or
configure components (``purer plugins``, ``purer config show``) from
importing torch; the component's ``Options`` model can be given alongside
(``register(name, "pkg.mod:Class", options=ClassOptions)``) so that its
configuration is validated without the import.

``PURER_DISABLE_PLUGINS=name1,name2`` keeps the named entry points (or
distributions) from loading.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import pluggy

from purer import hookspecs
from purer.errors import PluginError
from purer.interfaces import (
    Calibrator,
    Component,
    Curriculum,
    DatasetReader,
    Initializer,
    InversionTerm,
    Inverter,
    MetaLearner,
    Options,
)

ENTRY_POINT_GROUP = "purer"
DISABLE_ENV = "PURER_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Kind:
    """One registry: which hook fills it and what it must hold."""

    name: str
    hook: str
    base: type | None  # None: any callable (architectures)

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("inverter", "register_inverters", Inverter),
    Kind("inversion_term", "register_inversion_terms", InversionTerm),
    Kind("curriculum", "register_curricula", Curriculum),
    Kind("meta_learner", "register_meta_learners", MetaLearner),
    Kind("calibrator", "register_calibrators", Calibrator),
    Kind("dataset", "register_datasets", DatasetReader),
    Kind("architecture", "register_architectures", None),
    Kind("initializer", "register_initializers", Initializer),
]}


@dataclass
class Entry:
    """One registered component: the object, or the reference to import it from."""

    kind: Kind
    name: str
    plugin: str
    distribution: str
    obj: Any = None
    ref: str | None = None
    options: type[Options] | None = None

    @property
    def where(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution})"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)


class PluginHost:
    """Loads plugins, fills one registry per kind, answers look-ups."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.plugins: dict[str, PluginInfo] = {}

    # ------------------------------------------------------------------ loading
    def load_entry_points(self, disabled: set[str] | None = None) -> None:
        disabled = _disabled_from_env() if disabled is None else disabled
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            if ep.name in disabled or dist in disabled:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the host down silently
                raise PluginError(f"plugin '{ep.name}' ({dist}): cannot import {ep.value}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            version = ep.dist.version if ep.dist is not None else "?"
            self.register_plugin(module, ep.name, dist, version)

    def register_plugin(self, module: ModuleType | object, name: str,
                        distribution: str = "(inline)", version: str = "") -> None:
        """Register one plugin object and collect what it registers."""
        if name in self.plugins:
            raise PluginError(f"plugin '{name}' ({distribution}): a plugin of that name is "
                              f"already loaded from {self.plugins[name].distribution}")
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin '{name}' ({distribution}): invalid hook "
                              f"implementation: {_first_line(exc)}") from exc
        info = PluginInfo(name, distribution, version, getattr(module, "__name__", repr(module)))
        self.plugins[name] = info
        try:
            for kind in KINDS.values():
                caller = getattr(self.pm.hook, kind.hook)
                for impl in caller.get_hookimpls():
                    if impl.plugin is module:
                        self._collect(kind, impl.function, info)
        except PluginError:
            self.unregister_plugin(name)
            raise

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered (used on failure and by tests)."""
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for registry in self.registries.values():
            for key in [k for k, e in registry.items() if e.plugin == name]:
                del registry[key]

    def _collect(self, kind: Kind, function: Callable, info: PluginInfo) -> None:
        def register(name: str, obj: Any, *, options: type[Options] | None = None) -> None:
            self._add(kind, name, obj, options, info)

        try:
            result = function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{info.name}' ({info.distribution}): {kind.hook} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        if result is not None:
            raise PluginError(f"plugin '{info.name}' ({info.distribution}): {kind.hook} must "
                              f"call register(name, obj) and return None, not {type(result).__name__}")

    def _add(self, kind: Kind, name: str, obj: Any, options: type[Options] | None,
             info: PluginInfo) -> None:
        entry = Entry(kind, name, info.name, info.distribution)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{entry.where}: {kind.hook} registered a {kind.name} without a name")
        if options is not None and not (inspect.isclass(options) and issubclass(options, Options)):
            raise PluginError(f"{entry.where}: {kind.label} '{name}': options= must be a subclass "
                              f"of purer.api.Options, got {options!r}")
        existing = self.registries[kind.name].get(name)
        if existing is not None:
            raise PluginError(f"{kind.name} '{name}' is registered twice: by {existing.where} "
                              f"and by {entry.where}")
        if isinstance(obj, str):
            if ":" not in obj:
                raise PluginError(f"{entry.where}: {kind.label} '{name}': a lazy reference must "
                                  f"read 'module:attribute', got {obj!r}")
            entry.ref, entry.options = obj, options
        else:
            entry.obj, entry.options = self._checked(entry, obj, options), None
        self.registries[kind.name][name] = entry
        info.registers.setdefault(kind.name, []).append(name)

    def _checked(self, entry: Entry, obj: Any, options: type[Options] | None) -> Any:
        """``obj`` after checking it against its kind; component classes get
        their registered name (an alias gets a class of its own)."""
        kind, name = entry.kind, entry.name
        if kind.base is not None and not (inspect.isclass(obj) and issubclass(obj, kind.base)):
            raise PluginError(f"{entry.where}: {kind.label} '{name}' must be a subclass of "
                              f"purer.api.{kind.base.__name__}, got {obj!r}")
        if kind.base is None and not callable(obj):
            raise PluginError(f"{entry.where}: {kind.label} '{name}' must be callable, got {obj!r}")
        if isinstance(obj, type) and issubclass(obj, Component):
            if options is not None and obj.Options is not options:
                raise PluginError(f"{entry.where}: {kind.label} '{name}' was registered with "
                                  f"options={options.__name__}, but {obj.__name__}.Options is "
                                  f"{obj.Options.__name__}")
            if obj.__dict__.get("name") and obj.__dict__["name"] != name:
                obj = type(obj.__name__, (obj,), {"name": name, "__module__": obj.__module__,
                                                  "__doc__": obj.__doc__})
            else:
                obj.name = name
        return obj

    def _resolve(self, entry: Entry) -> Any:
        if entry.obj is None:
            module_name, _, attribute = entry.ref.partition(":")
            try:
                target: Any = importlib.import_module(module_name)
                for part in attribute.split("."):
                    target = getattr(target, part)
            except Exception as exc:
                raise PluginError(f"{entry.where}: {entry.kind.label} '{entry.name}': cannot "
                                  f"import {entry.ref}: {type(exc).__name__}: {exc}") from exc
            entry.obj = self._checked(entry, target, entry.options)
        return entry.obj

    # ------------------------------------------------------------------ look-ups
    def names(self, kind: str) -> list[str]:
        return sorted(self.registries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self.registries[kind][name]
        except KeyError:
            allowed = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(f"unknown {KINDS[kind].label} '{name}' "
                              f"(installed: {allowed})") from None

    def get(self, kind: str, name: str) -> Any:
        """The registered object (imported now if it was registered lazily)."""
        return self._resolve(self.entry(kind, name))

    def options_model(self, kind: str, name: str) -> type[Options]:
        """A component's ``Options`` model, without importing a lazily
        registered component that declared it."""
        entry = self.entry(kind, name)
        return entry.options if entry.obj is None and entry.options is not None \
            else self._resolve(entry).Options

    def validate(self, kind: str, name: str, options: dict[str, Any] | None, section: str) -> Options:
        """``options`` checked against the component's own schema (one-line error)."""
        from purer.config import validate_options

        return validate_options(self.options_model(kind, name), name, options or {}, section)

    def create(self, kind: str, name: str, options: Options | dict[str, Any] | None = None,
               section: str | None = None) -> Any:
        """Build a component; ``options`` already validated (an ``Options``
        instance, as a resolved config holds) or validated here."""
        cls = self.get(kind, name)
        if not isinstance(options, Options):
            options = self.validate(kind, name, options, section or kind)
        elif not isinstance(options, cls.Options):
            raise PluginError(f"{section or kind}: options of type {type(options).__name__} given "
                              f"to {KINDS[kind].label} '{name}', which takes {cls.Options.__name__}")
        return cls(options)

    def add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            impl.function(cli=cli)


def _disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _first_line(exc: BaseException) -> str:
    """pluggy's multi-line messages as one line (the fault is on a later line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__


@lru_cache(maxsize=1)
def get_host() -> PluginHost:
    """The process-wide host (the only global state in purer)."""
    host = PluginHost()
    host.load_entry_points()
    return host
