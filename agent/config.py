"""One dataclass per config drives CLI flags, files and logs.

Fields carry help text in ``field(metadata={"help": ...})``. ``add_arguments`` turns a dataclass
into argparse flags; ``from_args`` builds the dataclass back (its ``__post_init__`` validates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from tools.cli import HelpFormatter
from tools.registry import builtin_tools, tool_options_class

__all__ = ["HelpFormatter", "add_arguments", "from_args", "load_config", "dump_config", "show_default"]

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def show_default(value: Any) -> str:
    """A default as the help text shows it: ``(default: 0.5)``, ``(default: a,b)``, ``(default: unset)``."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if isinstance(value, bool):
        value = str(value).lower()
    return f"(default: {value})" if value not in ("", None) else "(default: unset)"


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if args else str
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), _dest: str = "") -> None:
    """Add one ``--flag`` per dataclass field (defaults left to the dataclass).

    A field with ``metadata["flatten"]`` holds another dataclass whose fields become flags of their own
    names (``RuntimeConfig.llm`` -> ``--n-ctx``; ``metadata["skip"]`` leaves some out); one with
    ``metadata["tool_options"]`` gets ``--<tool>-<option>`` for every built-in tool's options class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_") or not f.init:
            continue
        if f.metadata.get("flatten"):
            add_arguments(parser, _base_type(hints[f.name]), tuple(f.metadata.get("skip", ())), f"{_dest}{f.name}.")
            continue
        if f.metadata.get("tool_options"):
            for name in builtin_tools():
                options = tool_options_class(name)
                if options is not None:
                    group = parser.add_argument_group(f"{name} tool options ({options.__name__})")
                    for g in dataclasses.fields(options):
                        _add_flag(group, f"{name}_{g.name}", f"{_dest}{f.name}.{name}.{g.name}", g,
                                  typing.get_type_hints(options)[g.name])
            continue
        _add_flag(parser, f.name, _dest + f.name, f, hints[f.name])


def _add_flag(parser: Any, name: str, dest: str, f: dataclasses.Field, hint: Any) -> None:
    tp = _base_type(hint)
    # argparse %-formats help text: a literal % (e.g. "to 10%") must be doubled.
    help_ = f"{f.metadata.get('help', '')} {show_default(_field_default(f))}".strip().replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_}
    if tp is not bool:
        kwargs["metavar"] = name.upper()
    if tp is bool:
        parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        return
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        inner = (typing.get_args(tp) or (str,))[0]
        kwargs["type"] = lambda s, _t=inner: [(_t if _t in (int, float) else str)(x) for x in s.split(",") if x]
        kwargs["metavar"] = "A,B"
    elif tp in (int, float, str):
        kwargs["type"] = tp
    elif tp is Path:
        kwargs["type"] = Path
    else:
        kwargs["type"] = str
    parser.add_argument(_flag(name), **kwargs)


def _values(cls: type, flat: dict[str, Any], dest: str = "") -> dict[str, Any]:
    """Constructor arguments of ``cls`` from parsed flags (``flat``: dest -> value), nested ones
    built over the field's default so a trainer's own defaults for its nested config stay."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = dest + f.name
        if f.metadata.get("flatten"):
            inner = _values(_base_type(typing.get_type_hints(cls)[f.name]), flat, key + ".")
            if inner:
                out[f.name] = dataclasses.replace(_field_default(f), **inner)
        elif f.metadata.get("tool_options"):
            given: dict[str, dict[str, Any]] = {}
            for k, v in flat.items():
                if k.startswith(key + "."):
                    tool, _, opt = k[len(key) + 1:].partition(".")
                    given.setdefault(tool, {})[opt] = v
            if given:
                merged = {t: dict(o) for t, o in (_field_default(f) or {}).items()}
                for tool, opts in given.items():
                    merged.setdefault(tool, {}).update(opts)
                out[f.name] = merged
        elif key in flat:
            out[f.name] = flat[key]
    return out


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass from parsed flags; a JSON file in ``ns.config_file`` (if any) fills the rest."""
    values = _values(cls, vars(ns))
    values.update(overrides)
    if getattr(ns, "config_file", ""):
        return load_config(cls, ns.config_file, **values)
    return cls(**values)


def load_config(cls: type[T], path: str | Path, **overrides: Any) -> T:
    data = json.loads(Path(path).read_text())
    data.update(overrides)
    return cls(**data)


def dump_config(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}
