"""The root of splice's exception tree and the sandbox's own errors.

The sandbox is the bottom layer (it imports nothing else of the project), so the root of the one
documented tree lives here; ``tools.errors`` adds the tools' errors and ``agent.errors`` re-exports
every class as the tree users see (``from agent.errors import SandboxError`` stays the way to get them).

SpliceError
 +-- ConfigError          a bad option or config value (the message says how to fix it)
 +-- MissingDependency    an optional extra is not installed (the message names the pip extra)
 +-- SandboxError         the sandbox backend itself failed (not the user's code)
"""

from __future__ import annotations

import importlib

__all__ = ["SpliceError", "ConfigError", "MissingDependency", "SandboxError", "require"]


class SpliceError(Exception):
    """Base class of every error splice raises on purpose."""


class ConfigError(SpliceError, ValueError):
    pass


class MissingDependency(SpliceError, ImportError):
    pass


class SandboxError(SpliceError):
    pass


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"{module} is not installed: pip install 'splice[{extra}]'  ({e})"
        ) from e
