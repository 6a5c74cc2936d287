"""Model-facing text lives here as jinja2 templates, loaded with importlib.resources: the system
prompt (``system.j2``), every error message the model reads (``messages.j2``, one macro each,
rendered by ``message``), and the eval report (``report.html.j2``). jinja2 loads on first use."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

__all__ = ["message", "render", "template_text"]


def template_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _env() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda n: template_text(n)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        keep_trailing_newline=False,
        undefined=jinja2.StrictUndefined,
    )


def render(name: str, **context: Any) -> str:
    """Render the template ``name`` (e.g. ``"system.j2"``) with ``context``."""
    return _env().get_template(name).render(**context)


@functools.cache
def _messages() -> Any:
    return _env().get_template("messages.j2").module


def message(name: str, **fields: Any) -> str:
    """The model-facing message ``name`` of ``messages.j2`` with ``fields`` filled in."""
    return str(getattr(_messages(), name)(**fields))
