"""Model-facing text lives here as jinja2 templates, loaded with importlib.resources."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2

__all__ = ["render", "template_text"]


def template_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda n: template_text(n)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        keep_trailing_newline=False,
        undefined=jinja2.StrictUndefined,
    )


def render(name: str, **context: Any) -> str:
    """Render the template ``name`` (e.g. ``"system.j2"``) with ``context``."""
    return _env().get_template(name).render(**context)
