"""Generate the key reference of docs/configuration.md from the pydantic models.

The tables come from :class:`purer.config.RunConfig` and from the ``Options``
model of every built-in plugin (the ``purer`` distribution), so the reference
cannot drift from the code. ``tests/core/test_docs.py`` fails when the block in
docs/configuration.md is stale.

Usage::

    python docs/gen_config_reference.py           # print the reference
    python docs/gen_config_reference.py --write   # update docs/configuration.md
    python docs/gen_config_reference.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from purer.config import PLUGIN_SECTIONS, PluginSection, RunConfig
from purer.plugins import ENTRY_POINT_GROUP, PluginHost

DOC = Path(__file__).with_name("configuration.md")
BEGIN = "<!-- BEGIN GENERATED: python docs/gen_config_reference.py --write -->"
END = "<!-- END GENERATED -->"
BUILTIN = "purer"
CONSTRAINTS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matches"))


def type_name(annotation: Any) -> str:
    """A short, TOML-minded name of a field's type (``None`` means unset)."""
    origin = get_origin(annotation)
    if origin is Annotated:  # e.g. Annotated[int, Field(ge=1)] inside a union
        base, *metadata = get_args(annotation)
        found = [f"{word} {getattr(m, attr)}" for m in _metadata_items(metadata) for attr, word in CONSTRAINTS
                 if getattr(m, attr, None) is not None]
        return type_name(base) + (f" ({', '.join(found)})" if found else "")
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(annotation) if a is not type(None))
    if origin in (list, tuple, dict):
        inner = ", ".join(type_name(a) for a in get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _metadata_items(metadata: list[Any]) -> list[Any]:
    """Constraint objects of an ``Annotated``: a pydantic ``FieldInfo`` keeps them in ``.metadata``."""
    items = []
    for m in metadata:
        items += list(getattr(m, "metadata", [])) if isinstance(m, FieldInfo) else [m]
    return items


def toml_value(value: Any) -> str:
    if value is None:
        return "*unset*"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {toml_value(v).strip('`')}" for k, v in value.items())
        return f"`{{{inner}}}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(toml_value(v).strip("`") for v in value) + "]`"
    return f"`{json.dumps(value)}`"


def constraints(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for attr, word in CONSTRAINTS:
            if getattr(item, attr, None) is not None:
                found.append(f"{word} {getattr(item, attr)}")
    return f" ({', '.join(found)})" if found else ""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel], prefix: str, skip: set[str] = frozenset()) -> list[str]:
    """One row per scalar key of ``model``; nested sections are left to the caller."""
    rows = []
    for key, field in model.model_fields.items():
        if key in skip:
            continue
        kind = type_name(field.annotation) + constraints(field)
        default = toml_value(field.get_default(call_default_factory=True))
        rows.append(f"| `{prefix}{key}` | {cell(kind)} | {cell(default)} | "
                    f"{cell(field.description or '')} |")
    if not rows:
        return ["No options."]
    return ["| key | type | default | description |", "|---|---|---|---|", *rows]


def summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else ""


def described(cls: type) -> list[str]:
    text = summary(cls)
    return [text, ""] if text else []


def builtin_names(host: PluginHost, kind: str) -> list[str]:
    return [n for n in host.names(kind) if host.registries[kind][n].distribution == BUILTIN]


def plugin_section(host: PluginHost, section: str, kind: str, default: str) -> list[str]:
    names = builtin_names(host, kind)
    lines = [f"### `[{section}]`", "",
             f"`{section}.name` picks the {kind.replace('_', ' ')} plugin (default `{default}`; "
             f"built in: {', '.join(f'`{n}`' for n in names)}). Every other key is an option "
             "of that plugin:", ""]
    for name in names:
        cls = host.get(kind, name)
        lines += [f"#### `{section}.name = \"{name}\"`", "", *described(cls),
                  *table(cls.Options, f"{section}."), ""]
    return lines


def builtin_host() -> PluginHost:
    """A host with only purer's own plugins, whatever else is installed or disabled."""
    host = PluginHost()
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.dist is not None and ep.dist.name == BUILTIN:
            host.register_plugin(ep.load(), ep.name, BUILTIN, ep.dist.version)
    return host


def generate(host: PluginHost | None = None) -> str:
    """The whole reference, as Markdown."""
    host = builtin_host() if host is None else host
    sections = {k for k, f in RunConfig.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    lines = ["### Top level", "", *table(RunConfig, "", skip=sections), ""]
    for key in RunConfig.model_fields:
        if key not in sections:
            continue
        if key in PLUGIN_SECTIONS:
            default = RunConfig.model_fields[key].get_default(call_default_factory=True)
            assert isinstance(default, PluginSection)
            lines += plugin_section(host, key, PLUGIN_SECTIONS[key], default.name)
            continue
        lines += nested(RunConfig.model_fields[key].annotation, key)
        if key == "inversion":
            lines += inversion_terms(host)
    return "\n".join(lines).rstrip() + "\n"


def nested(model: type[BaseModel], prefix: str) -> list[str]:
    subs = {k: f.annotation for k, f in model.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    lines = [f"### `[{prefix}]`", "", *table(model, f"{prefix}.", skip=set(subs)), ""]
    for key, sub in subs.items():
        lines += nested(sub, f"{prefix}.{key}")
    return lines


def inversion_terms(host: PluginHost) -> list[str]:
    lines = ["#### Inversion terms", "",
             "`inversion.terms` maps a registered inversion term to its weight; options of a "
             "term go under `inversion.term_options.<term>`. The same terms shape every "
             "inverter's pseudo data and ICFIL's synthesis:", ""]
    for name in builtin_names(host, "inversion_term"):
        cls = host.get("inversion_term", name)
        lines += [f"##### `{name}`", "", *described(cls),
                  *table(cls.Options, f"inversion.term_options.{name}."), ""]
    return lines


def splice(document: str, reference: str) -> str:
    """``document`` with the text between the markers replaced by ``reference``."""
    head, sep, rest = document.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOC}: markers {BEGIN!r} / {END!r} not found")
    return f"{head}{BEGIN}\n\n{reference}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="update docs/configuration.md")
    group.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    reference = generate()
    if not (args.write or args.check):
        sys.stdout.write(reference)
        return 0
    current = DOC.read_text()
    updated = splice(current, reference)
    if args.check:
        if updated != current:
            print(f"{DOC} is stale: run python docs/gen_config_reference.py --write", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
