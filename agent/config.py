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


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field (defaults left to the dataclass)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_") or not f.init:
            continue
        tp = _base_type(hints[f.name])
        # argparse %-formats help text: a literal % (e.g. "to 10%") must be doubled.
        help_ = f"{f.metadata.get('help', '')} {show_default(_field_default(f))}".strip().replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
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
        parser.add_argument(_flag(f.name), **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass from parsed flags; a JSON file in ``ns.config_file`` (if any) fills the rest."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(ns).items() if k in names}
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
