"""Finding tools by name: registered ones, the built-ins under ``tools/``, plugins, MCP servers.

Tools come from these places, looked up in this order:

* registered: ``register(name, factory)`` / ``@tool`` in this process (tests, notebooks);
* built-ins: every module or package directly under ``tools/`` that names its tool class at top
  level as ``TOOL = SomeTool`` (the module's name is the tool's name). Adding a built-in is adding
  that one file; ``builtin_tools()`` finds them by reading the files, not importing them;
* plugins: other distributions' ``splice.tools`` entry points, ``name = "pkg.mod:obj"``, obj a
  Tool, a Tool class (built with the tool's options) or a plain function;
* ``mcp:COMMAND``: every tool of an MCP server.

A plugin that fails to import, or that takes a built-in's name, is reported by name (``agent
tools``, and a ToolError naming the distribution when it is asked for), never dropped silently.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools import base
from tools.base import FunctionTool, Tool, tool_schema
from tools.errors import SpliceError, ToolError
from tools.mcp import mcp_tools

__all__ = ["ENTRY_POINT_GROUP", "BUILTIN_TOOLS", "ToolInfo", "available_tools", "builtin_tools", "get_tool",
           "get_tools", "tool_catalog", "tool_options_class", "arg_name_of"]

ENTRY_POINT_GROUP = "splice.tools"
_TOOL_LINE = re.compile(r"^TOOL\s*=", re.MULTILINE)


@functools.cache
def builtin_tools() -> dict[str, str]:
    """``{name: "tools.<name>:TOOL"}`` for each built-in tool module of this package."""
    here = Path(__file__).resolve().parent
    found = {}
    for mod in pkgutil.iter_modules([str(here)]):
        src = here / mod.name / "__init__.py" if mod.ispkg else here / f"{mod.name}.py"
        if not mod.name.startswith("_") and src.is_file() and _TOOL_LINE.search(src.read_text(encoding="utf-8")):
            found[mod.name] = f"tools.{mod.name}:TOOL"
    return found


def tool_options_class(name: str) -> type | None:
    """The options dataclass of built-in tool ``name`` (``Tool.options``), or None."""
    target = builtin_tools().get(name)
    return getattr(_load_target(target, "built-in tool"), "options", None) if target else None


def arg_name_of(name: str) -> str:
    """The JSON argument name of built-in tool ``name`` (``Tool.arg_name``; ``"input"`` for others)."""
    target = builtin_tools().get(name)
    return getattr(_load_target(target, "built-in tool"), "arg_name", "input") if target else "input"


BUILTIN_TOOLS: dict[str, str] = builtin_tools()
@dataclass
class ToolInfo:
    """One entry of the catalog ``agent tools`` prints."""

    name: str
    source: str  # "built-in" | "registered" | "plugin <distribution>" | "mcp <command>"
    target: str = ""  # module:attr
    description: str = ""
    parameters: dict[str, Any] | None = None
    error: str = ""  # why it cannot be loaded (a broken plugin)


def _plugins() -> tuple[dict[str, ToolInfo], list[ToolInfo]]:
    """``splice.tools`` entry points of installed distributions (not imported yet): the usable
    ones by name, and those rejected because their name is taken (with ``error`` saying by whom)."""
    from importlib.metadata import entry_points

    found: dict[str, ToolInfo] = {}
    rejected: list[ToolInfo] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        if dist == "splice":
            continue  # an install made before built-ins were found in tools/ declared them here too
        info = ToolInfo(ep.name, f"plugin {dist}", ep.value)
        if ep.name in BUILTIN_TOOLS:
            info.error = f"its name is taken by the built-in tool {ep.name!r}; rename the entry point"
        elif ep.name in found:
            info.error = f"its name is taken by {found[ep.name].source} ({found[ep.name].target})"
        if info.error:
            rejected.append(info)
        else:
            found[ep.name] = info
    return found, rejected


def available_tools() -> list[str]:
    """Names of every tool that can be asked for by name (nothing is imported)."""
    return sorted(set(base._REGISTRY) | set(BUILTIN_TOOLS) | set(_plugins()[0]))


def _load_target(target: str, what: str) -> Any:
    mod_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except Exception as e:  # ImportError, AttributeError, or whatever the module raises on import
        raise ToolError(f"cannot import {what} {target!r}: {type(e).__name__}: {e}") from e
    return obj


def _from_object(obj: Any, spec: str, options: dict[str, Any], name: str | None = None) -> Tool:
    """A Tool from what an import path or entry point names. ``name``: a plugin's entry-point name,
    which a plain function takes and a Tool must already have (the model calls it by that name)."""
    if isinstance(obj, type) and issubclass(obj, Tool):
        obj = obj(**options)
    if isinstance(obj, Tool):
        if name is not None and obj.name != name:
            raise ToolError(f"entry point {name!r} gives a tool named {obj.name!r}; make the names equal")
        return obj
    if callable(obj):
        try:
            return FunctionTool(obj, name=name)
        except (TypeError, ValueError) as e:  # unsupported parameter types, or no signature (builtins)
            raise ToolError(f"{spec!r} is not usable as a tool: {e}") from e
    raise ToolError(f"{spec!r} is not a Tool, Tool class or function")


def get_tool(spec: str | Tool, **options: Any) -> Tool:
    """A Tool from a registered name (``"python"``), a plugin's name, an import path
    (``"pkg.mod:obj"``) or a Tool. ``"mcp:CMD"`` specs give several tools: use ``get_tools``."""
    if isinstance(spec, Tool):
        return spec
    if spec.startswith("mcp:"):
        found = get_tools(spec, **options)
        if len(found) != 1:
            raise ToolError(f"{spec!r} serves {len(found)} tools; use get_tools() for them")
        return found[0]
    if spec in base._REGISTRY:
        return base._REGISTRY[spec](**options)
    if spec in BUILTIN_TOOLS:
        return _from_object(_load_target(BUILTIN_TOOLS[spec], "built-in tool"), spec, options)
    plugins = _plugins()[0]
    if spec in plugins:
        info = plugins[spec]
        obj = _load_target(info.target, f"tool plugin {spec!r} ({info.source}):")
        return _from_object(obj, spec, options, name=spec)
    if ":" in spec:
        return _from_object(_load_target(spec, "tool"), spec, options)
    raise ToolError(f"unknown tool {spec!r}; available: {', '.join(available_tools())} "
                     "(or give an import path 'module:name', or 'mcp:COMMAND' for an MCP server)")


def get_tools(spec: str | Tool, **options: Any) -> list[Tool]:
    """The tools one spec gives: one, or every tool of an MCP server (``"mcp:python server.py"``)."""
    if isinstance(spec, str) and spec.startswith("mcp:"):
        return list(mcp_tools(spec[len("mcp:"):], **options))
    return [get_tool(spec, **options)]


def _info_of(obj: Any, info: ToolInfo) -> ToolInfo:
    """Description and schema of a loaded catalog object, without building a Tool class."""
    if isinstance(obj, type) and issubclass(obj, Tool):
        if obj.name != info.name:
            raise ToolError(f"entry point {info.name!r} gives a tool named {obj.name!r}; make the names equal")
        schema = tool_schema(obj.name, obj.description, obj.parameters, obj.arg_name)
    else:
        schema = _from_object(obj, info.name, {}, name=info.name).schema()
    info.description, info.parameters = schema["description"], schema["parameters"]
    return info


def tool_catalog(specs: list[str] | None = None) -> list[ToolInfo]:
    """Every available tool (or those ``specs`` name, MCP servers included) with its description and
    schema; a tool that cannot be loaded is listed with ``error`` set."""
    if specs:
        out: list[ToolInfo] = []
        for spec in specs:
            try:
                out += [ToolInfo(t.name, _source_of(spec), spec, **_schema_fields(t)) for t in get_tools(spec)]
            except SpliceError as e:
                out.append(ToolInfo(spec, _source_of(spec), spec, error=str(e)))
        return out
    plugins, rejected = _plugins()
    infos: list[ToolInfo] = []
    for name in available_tools():
        if name in base._REGISTRY:
            infos.append(ToolInfo(name, "registered", **_schema_fields(base._REGISTRY[name]())))
            continue
        info = ToolInfo(name, "built-in", BUILTIN_TOOLS[name]) if name in BUILTIN_TOOLS else plugins[name]
        if not info.error:
            try:
                info = _info_of(_load_target(info.target, f"tool plugin {name!r}"), info)
            except SpliceError as e:
                info.error = str(e)
        infos.append(info)
    return infos + rejected


def _source_of(spec: str) -> str:
    return f"mcp {spec[4:]}" if spec.startswith("mcp:") else "import path" if ":" in spec else "registry"


def _schema_fields(t: Tool) -> dict[str, Any]:
    s = t.schema()
    return {"description": s["description"], "parameters": s["parameters"]}
