"""The run configuration: one pydantic model, one section per component.

Sources, later wins: the schema's defaults (the paper's values), a preset or
TOML file, CLI options, then ``--set section.key=value``. Sections backed by a
plugin (``inverter``, ``curriculum``, ``meta``, ``init``, ``calibrator``,
``data``) hold ``name`` plus that plugin's own options, validated against the
plugin's ``Options`` model, so a typo is caught before any work starts.
"""

from __future__ import annotations

import json
import math
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from purer.errors import ConfigError
from purer.interfaces import Options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginSection(BaseModel):
    """``name`` picks the plugin; every other key is one of its options.

    :func:`resolve_plugin_options` validates the keys once against the
    plugin's own ``Options`` model and keeps the instance, which is what
    :attr:`options` then returns and what the host builds the component from.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    _resolved: Options | None = PrivateAttr(default=None)

    @property
    def options(self) -> Options | dict[str, Any]:
        """The validated ``Options`` instance once resolved; the raw keys before."""
        return self._resolved if self._resolved is not None else self.option_dict()

    def option_dict(self) -> dict[str, Any]:
        """The options as plain keys and values (all of them once resolved)."""
        return dict(self.model_extra or {})


class ZooBuildOptions(Section):
    """How to train a zoo of teachers (method.md §1); defaults = the paper's SS protocol."""

    scenario: Literal["ss", "sh", "mh"] = "ss"
    teachers: int = Field(13, ge=1)
    way: int = Field(5, ge=2)
    assign: Literal["disjoint", "random"] = "disjoint"
    arch: list[str] = Field(default_factory=lambda: ["conv4"])
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    extra_data: list[str] = Field(default_factory=list,
                                  description="MH: more datasets as NAME or NAME=ROOT")
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float | None = Field(None, gt=0, description="default: 0.01")
    adam_archs: list[str] = Field(default_factory=lambda: ["conv4"],
                                  description="architectures trained with Adam; the others with SGD "
                                              "(momentum 0.9, weight decay 5e-4)")
    holdout: float = Field(0.2, gt=0, lt=1)
    augment: bool = False
    seed: int = 0


class ZooSection(Section):
    path: str | None = Field(None, description="an existing zoo; unset: build (or reuse) one from `build`")
    build: ZooBuildOptions = Field(default_factory=ZooBuildOptions)


DEFAULT_TERMS = {"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01}


class InversionSection(Section):
    """The inversion loss (Eq. 2-4) shared by the inverter and ICFIL's synthesis."""

    terms: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TERMS),
                                    description="inversion term name -> weight")
    term_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-term options, e.g. {bn = {first_multiplier = 1}}")
    _resolved: dict[str, Options] = PrivateAttr(default_factory=dict)

    @field_validator("terms")
    @classmethod
    def _weights_finite(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of '{name}' must be a finite number >= 0")
        return value

    def options_of(self, term: str) -> Options | dict[str, Any]:
        """A term's validated options once resolved; its raw keys before."""
        return self._resolved.get(term, self.term_options.get(term, {}))


class TrainSection(Section):
    steps: int = Field(60_000, ge=0)
    episode_batch: int = Field(4, ge=1)
    way: int = Field(5, ge=2)
    shot: int = Field(1, ge=1)
    query: int = Field(15, ge=1)
    meta_arch: str = "conv4"
    meta_arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    val_every: int = Field(1000, ge=1)
    val_tasks: int = Field(200, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    image_every: int = Field(5000, ge=1)
    max_memory_abs: float = Field(1e3, gt=0, description="divergence guard on |memory|")
    cuda_graph: bool | Literal["auto"] = Field(
        "auto", description="replay each outer step's GPU work from a CUDA graph (one per switch "
                            "state); auto: on for CUDA when the inverter and meta-learner support it")


class EvalSection(Section):
    tasks: int = Field(600, ge=1)
    query: int = Field(15, ge=1)
    way: int | None = Field(None, ge=2)  # None: the training way
    # empty: the training shot
    shots: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    split: Literal["meta_test", "meta_val"] = "meta_test"
    seed: int = 2023
    baselines: list[str] = Field(default_factory=lambda: ["random", "average"],
                                 description="initialisers scored beside the trained model, and "
                                             "'real': the run's learner trained on real data")
    batch_tasks: int = Field(50, ge=1)
    extra_data: list[str] = Field(
        default_factory=list,
        description="MH: more datasets as NAME or NAME=ROOT; the tasks are shared out between "
                    "the data dataset and these, and each method gets a row per dataset and a "
                    "pooled row")
    real_steps: int | None = Field(None, ge=0, description="outer steps of the 'real' baseline "
                                                           "(default: train.steps)")
    real_images_per_class: int | None = Field(
        None, ge=2, description="real images per class the 'real' baseline sees (default: shot + "
                                "train.query, the size of ECI's memory)")


class RunConfig(Section):
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    data: PluginSection = Field(default_factory=lambda: PluginSection(name="synthetic-shapes"))
    zoo: ZooSection = Field(default_factory=ZooSection)
    inverter: PluginSection = Field(default_factory=lambda: PluginSection(name="deepinv"))
    inversion: InversionSection = Field(default_factory=InversionSection)
    curriculum: PluginSection = Field(default_factory=lambda: PluginSection(name="gradient-switch"))
    meta: PluginSection = Field(default_factory=lambda: PluginSection(name="maml"))
    init: PluginSection = Field(default_factory=lambda: PluginSection(name="random"))
    calibrator: PluginSection = Field(default_factory=lambda: PluginSection(name="none"))
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _device_known(self) -> RunConfig:
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, not {self.device!r}")
        return self


# Which registry each plugin-backed section is looked up in.
PLUGIN_SECTIONS = {
    "data": "dataset",
    "inverter": "inverter",
    "curriculum": "curriculum",
    "meta": "meta_learner",
    "init": "initializer",
    "calibrator": "calibrator",
}


# ---------------------------------------------------------------------- loading
def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("purer.presets").iterdir()
                  if p.name.endswith(".toml"))


def preset_description(name: str) -> str:
    """A preset's leading comment, on one line: what it runs and what it needs."""
    text = resources.files("purer.presets").joinpath(f"{name}.toml").read_text()
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"--preset: unknown preset '{name}' (available: {', '.join(preset_names())})")
    return tomllib.loads(resources.files("purer.presets").joinpath(f"{name}.toml").read_text())


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as TOML/JSON
    when it parses (numbers, booleans, lists) and as a string otherwise."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    return path, value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; choosing another plugin ``name`` drops the old plugin's options."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            old = out[key]
            if "name" in value and old.get("name") not in (None, value["name"]) and key in PLUGIN_SECTIONS:
                old = {}
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
    if path[-1] == "name" and len(path) == 2 and path[0] in PLUGIN_SECTIONS and node.get("name") != value:
        node.clear()
    node[path[-1]] = value


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the section at ``loc`` (the path of a key inside ``model``) takes."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return list(model.model_fields)


def _explain(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        keys = _keys_at(model, err["loc"]) if model is not None else None
        if keys:
            section = ".".join(str(p) for p in err["loc"][:-1]) or "the top level"
            msg += f"; {section} takes: {', '.join(keys)}"
    elif err["type"] == "literal_error":
        msg = f"must be one of {err['ctx']['expected']}"
    got = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    return f"{where or 'config'}: {msg}{shown}"


def validate_options(model: type[Options], name: str, options: dict[str, Any], section: str) -> Options:
    """Validate component ``name``'s options against its ``Options`` model."""
    try:
        return model(**options)
    except ValidationError as exc:
        message = _explain(exc, section)
        if exc.errors()[0]["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields) or "no options"
            message += f"; {name} takes: {allowed}"
        raise ConfigError(message) from None


def build_config(*layers: dict[str, Any], assignments: tuple[str, ...] = (),
                 host: Any = None) -> RunConfig:
    """Merge the layers, apply ``--set`` assignments and validate everything,
    plugin options included. Returns the config with every default filled in."""
    # Plugin sections start from their default plugin, so options given
    # without a name (a layer or --set) belong to that plugin.
    tree: dict[str, Any] = {section: {"name": RunConfig.model_fields[section].get_default(
        call_default_factory=True).name} for section in PLUGIN_SECTIONS}
    for layer in layers:
        tree = merge(tree, layer)
    for text in assignments:
        path, value = parse_assignment(text)
        set_path(tree, path, value)
    try:
        config = RunConfig(**tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, model=RunConfig)) from None
    if host is not None:
        resolve_plugin_options(config, host)
    return config


def resolve_plugin_options(config: RunConfig, host: Any) -> None:
    """Check every plugin section (and every inversion term) against its
    plugin, once: unknown names and keys are one-line errors; defaults are
    filled in and the validated ``Options`` instances kept for the host."""
    for section, kind in PLUGIN_SECTIONS.items():
        value: PluginSection = getattr(config, section)
        try:
            host.entry(kind, value.name)
        except Exception as exc:
            raise ConfigError(f"{section}.name: {exc}") from None
        resolved = host.validate(kind, value.name, value.option_dict(), section)
        fresh = PluginSection(name=value.name, **resolved.model_dump())
        fresh._resolved = resolved
        setattr(config, section, fresh)
    inversion = config.inversion
    for name, given in list(inversion.term_options.items()):
        if name in inversion.terms:
            continue
        # a resolved config lists every term's defaults: those may outlive their term
        if name in host.registries["inversion_term"] and \
                given == host.validate("inversion_term", name, {}, name).model_dump():
            del inversion.term_options[name]
            continue
        raise ConfigError(f"inversion.term_options.{name}: not in inversion.terms "
                          f"({', '.join(inversion.terms)})")
    resolved_terms = {}
    for name in inversion.terms:
        try:
            host.entry("inversion_term", name)
        except Exception as exc:
            raise ConfigError(f"inversion.terms: {exc}") from None
        resolved_terms[name] = host.validate("inversion_term", name, inversion.term_options.get(name, {}),
                                             f"inversion.term_options.{name}")
    inversion.term_options = {name: opts.model_dump() for name, opts in resolved_terms.items()
                              if opts.model_dump()}
    inversion._resolved = resolved_terms


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: RunConfig) -> str:
    """A small TOML writer for the resolved config: sections as tables,
    free-form dicts inside a section (e.g. ``arch_kwargs``) as inline tables."""
    data = config.model_dump(mode="python")
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str, model: Any) -> None:
        fields = getattr(type(model), "model_fields", {})
        sub_models = {k for k in table if k in fields and isinstance(getattr(model, k, None), BaseModel)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for key, value in table.items():
            if key not in sub_models and value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key in [k for k in table if k in sub_models]:  # in the schema's order
            emit(table[key], f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key), getattr(model, key))

    emit(data, "", config)
    return "\n".join(lines).lstrip() + "\n"
