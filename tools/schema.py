"""Tool argument schemas: built from a Python signature, checked on every call, rendered for prompts.

``function_schema(fn)`` reads type hints, defaults and the docstring (Google ``Args:`` sections or
``:param x:`` lines) into a JSON schema of the shape OpenAI, Hermes and MCP use::

    {"type": "object", "properties": {"city": {"type": "string", "description": "..."}, ...},
     "required": ["city"], "additionalProperties": false}

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``list`` / ``list[X]``, ``dict``,
``Literal[...]``, ``Enum`` subclasses and ``X | None``. Anything else is a ``TypeError`` when the tool
is defined, not when the model calls it.

``check(schema, value)`` validates a call's arguments against such a schema (and the common subset of
JSON schema MCP servers publish: type, enum, properties, required, additionalProperties, items,
anyOf, minimum, maximum). A wrong call raises ``ArgumentError``, whose message is written for the
model: the runtime splices it back as an error result, so the model can retry. ``ArgumentError`` never
reaches a user, which is why it is not part of ``agent.errors``.

``template_accepts_tools`` / ``render_chat`` let a chat template that knows tool calling (Qwen2.5,
Hermes, Llama 3.1: ``apply_chat_template(tools=...)``) render the tool list itself.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from tools.errors import ModelError

__all__ = ["ArgumentError", "function_schema", "check", "signature_hint", "example_arguments",
           "template_accepts_tools", "render_chat", "is_single_string"]

_PY_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
                             dict: "object"}
_JSON_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "an object", "null": "null"}


class ArgumentError(ValueError):
    """The model called a tool with arguments that do not fit its schema (the message says how)."""


# -- schema from a signature --------------------------------------------------------------------
def function_schema(fn: Callable[..., Any], name: str = "") -> tuple[str, dict[str, Any], dict[str, Callable]]:
    """(description, parameters schema, converters) of a plain function. ``converters`` turn a
    checked JSON value into what the function expects (an Enum member, a float)."""
    name = name or getattr(fn, "__name__", "tool")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # NameError for a forward reference nobody defined, and the like
        raise TypeError(f"tool {name}: cannot read its type hints ({type(e).__name__}: {e})") from e
    description, docs = parse_docstring(inspect.getdoc(fn) or "")
    props: dict[str, Any] = {}
    required: list[str] = []
    converters: dict[str, Callable] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"tool {name}: parameter {p.name!r} must be an ordinary named parameter "
                            "(no *args, **kwargs or positional-only parameters)")
        try:
            prop, conv = _annotation_schema(hints.get(p.name, str))
        except TypeError as e:
            raise TypeError(f"tool {name}: parameter {p.name!r}: {e}") from None
        if p.name in docs:
            prop["description"] = docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        else:
            default = p.default.value if isinstance(p.default, enum.Enum) else p.default
            if jsonable(default):
                prop["default"] = default
        props[p.name] = prop
        if conv is not None:
            converters[p.name] = conv
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required,
                              "additionalProperties": False}
    return description or name, schema, converters


def jsonable(v: Any) -> bool:
    """Whether ``json.dumps`` can write ``v``."""
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _annotation_schema(tp: Any) -> tuple[dict[str, Any], Callable | None]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{tp} is not supported; use one type, or one type | None")
        prop, conv = _annotation_schema(inner[0])
        if len(inner) < len(args):
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]
            prop["type"] = [prop["type"], "null"] if isinstance(prop.get("type"), str) else prop.get("type")
        return prop, conv
    if tp in _PY_TYPES:
        return {"type": _PY_TYPES[tp]}, (float if tp is float else None)
    if origin in (list, typing.List):  # noqa: UP006 - both spellings arrive here
        if not args:
            return {"type": "array"}, None
        item, conv = _annotation_schema(args[0])
        return {"type": "array", "items": item}, ((lambda xs, _c=conv: [_c(x) for x in xs]) if conv else None)
    if origin in (dict, typing.Dict):  # noqa: UP006
        return {"type": "object"}, None
    if origin is typing.Literal:
        return _enum_schema(list(args)), None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([m.value for m in tp]), tp
    raise TypeError(f"type {tp!r} is not supported; use str, int, float, bool, list, dict, Literal or an Enum")


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_PY_TYPES.get(type(v)) for v in values}
    if None in kinds or not values:
        raise TypeError(f"choices {values!r} must be strings, numbers or booleans")
    out: dict[str, Any] = {"enum": values}
    if len(kinds) == 1:
        out["type"] = kinds.pop()
    return out


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$", re.I)
_OTHER_SECTION = re.compile(r"^(Returns?|Yields?|Raises?|Examples?|Notes?)\s*:\s*$", re.I)
_ARG_LINE = re.compile(r"^\**([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX = re.compile(r"^:param\s+(?:[^:\s]+\s+)?([A-Za-z_]\w*)\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style (``Args:`` with ``name: text``
    or ``name (type): text`` lines, continuation lines indented deeper) or Sphinx-style
    (``:param name: text``) docstring. The description is the text before any section."""
    desc: list[str] = []
    params: dict[str, str] = {}
    section, current, arg_indent = "desc", "", -1
    for line in doc.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION.match(stripped):
            section, current, arg_indent = "args", "", -1
            continue
        if _OTHER_SECTION.match(stripped) or stripped.startswith((":return", ":raise", ":rtype")):
            section, current = "other", ""
            continue
        sphinx = _SPHINX.match(stripped)
        if sphinx:
            section, current = "continue", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if section == "desc":
            desc.append(line)
            continue
        m = _ARG_LINE.match(stripped) if section == "args" else None
        if m and (arg_indent < 0 or indent <= arg_indent):
            current, arg_indent = m.group(1), indent
            params[current] = m.group(2).strip()
        elif current and stripped and section in ("args", "continue"):
            params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(desc).strip(), params


# -- checking a call ----------------------------------------------------------------------------
def check(schema: dict[str, Any], value: Any, where: str = "") -> Any:
    """``value`` if it fits ``schema``, else ``ArgumentError`` listing what is wrong."""
    errors: list[str] = []
    _check(schema, value, where, errors)
    if errors:
        raise ArgumentError("; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""))
    return value


_JSON_TYPES: dict[str, Any] = {"string": str, "boolean": bool, "array": list, "object": dict, "null": type(None)}


def _is(kind: str, v: Any) -> bool:
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _JSON_TYPES[kind]) if kind in _JSON_TYPES else True  # an unknown type name: no check


def _show(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False) if jsonable(v) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(schema: Any, v: Any, where: str, errors: list[str]) -> None:
    if not isinstance(schema, dict):
        return
    what = f"argument {where!r}" if where else "the arguments"
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        if options and not any(_fits(o, v, where) for o in options):
            errors.append(f"{what} does not match any allowed form (got {_show(v)})")
            return
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if kinds and not any(_is(k, v) for k in kinds):
        want = " or ".join(_JSON_NAMES.get(k, k) for k in kinds)
        errors.append(f"{what} must be {want}, got {_show(v)}")
        return
    if "enum" in schema and v not in schema["enum"]:
        errors.append(f"{what} must be one of {', '.join(_show(c) for c in schema['enum'])}, got {_show(v)}")
        return
    if _is("number", v):
        if "minimum" in schema and v < schema["minimum"]:
            errors.append(f"{what} must be >= {schema['minimum']}, got {_show(v)}")
        if "maximum" in schema and v > schema["maximum"]:
            errors.append(f"{what} must be <= {schema['maximum']}, got {_show(v)}")
    if isinstance(v, list) and isinstance(schema.get("items"), dict):
        for i, x in enumerate(v):
            _check(schema["items"], x, f"{where}[{i}]" if where else f"[{i}]", errors)
    if isinstance(v, dict):
        _check_object(schema, v, where, errors)


def _check_object(schema: dict[str, Any], v: dict[str, Any], where: str, errors: list[str]) -> None:
    props = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in v:
            errors.append(f"missing required argument {_join(where, key)!r}")
    extra = schema.get("additionalProperties", True)
    for key, x in v.items():
        if key in props:
            _check(props[key], x, _join(where, key), errors)
        elif extra is False:
            known = ", ".join(props) or "none"
            errors.append(f"unknown argument {_join(where, key)!r} (arguments: {known})")
        elif isinstance(extra, dict):
            _check(extra, x, _join(where, key), errors)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _fits(schema: Any, v: Any, where: str) -> bool:
    errors: list[str] = []
    _check(schema, v, where, errors)
    return not errors


# -- rendering ----------------------------------------------------------------------------------
def _type_text(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(_show(c) for c in prop["enum"])
    kinds = prop.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ["any"])
    if "array" in kinds and isinstance(prop.get("items"), dict):
        kinds = [f"list of {_type_text(prop['items'])}" if k == "array" else k for k in kinds]
    return " | ".join(kinds)


def signature_hint(name: str, schema: dict[str, Any]) -> str:
    """``weather(city: string, days: integer = 1)``: a one-line reminder for error messages."""
    required = set(schema.get("required") or [])
    parts = []
    for key, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        text = f"{key}: {_type_text(prop)}"
        if key not in required:
            text += f" = {_show(prop['default'])}" if "default" in prop else " (optional)"
        parts.append(text)
    return f"{name}({', '.join(parts)})"


def example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Placeholder arguments for a system-prompt example: the required ones (defaults when given)."""
    placeholders = {"string": "...", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for key in schema.get("required") or list(props)[:1]:
        prop = props.get(key) if isinstance(props.get(key), dict) else {}
        if "default" in prop:
            out[key] = prop["default"]
        elif prop.get("enum"):
            out[key] = prop["enum"][0]
        else:
            kind = prop.get("type")
            kind = kind[0] if isinstance(kind, list) and kind else kind
            out[key] = placeholders.get(kind, "...")
    return out


def is_single_string(schema: dict[str, Any] | None, arg_name: str) -> bool:
    """True for the classic one-string tool: one required string argument called ``arg_name``."""
    if schema is None:
        return True
    props = schema.get("properties") or {}
    return list(props) == [arg_name] and props[arg_name].get("type") == "string" and "enum" not in props[arg_name]


# -- chat templates that render tools themselves ------------------------------------------------
def template_accepts_tools(template: str | None) -> bool:
    """Whether a jinja2 chat template reads a ``tools`` variable (as tool-calling templates do)."""
    if not template or not isinstance(template, str):
        return False
    import jinja2
    from jinja2 import meta

    try:
        return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return False


def render_chat(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                **extra: Any) -> str:
    """``template`` rendered the way ``transformers``' ``apply_chat_template(tools=...)`` does: a
    sandboxed jinja2 environment, ``tojson``, ``raise_exception``, tools in the OpenAI shape
    (``{"type": "function", "function": {...}}``) and ``add_generation_prompt=True``."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ModelError(f"the chat template refused the prompt: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    wrapped = [t if "function" in t else {"type": "function", "function": t} for t in tools]
    return env.from_string(template).render(messages=messages, tools=wrapped, add_generation_prompt=True, **extra)
