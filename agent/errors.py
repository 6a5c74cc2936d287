"""The one exception tree of splice. Only the CLI turns these into user messages.

SpliceError
 +-- ConfigError          a bad option or config value (the message says how to fix it)
 +-- MissingDependency    an optional extra is not installed (the message names the pip extra)
 +-- ModelError           a model could not be loaded or failed while generating
 |    +-- ModelNotFound   a model path or name that does not exist
 +-- ToolError            a tool could not be built or started (not a failed call: those are results)
 +-- SandboxError         the sandbox backend itself failed (not the user's code)
 +-- SearchError          a search backend failed in a way no result text can describe
 +-- DataError            an input file (dataset, corpus, preference pairs) is malformed
"""

from __future__ import annotations

__all__ = [
    "SpliceError",
    "ConfigError",
    "MissingDependency",
    "ModelError",
    "ModelNotFound",
    "ToolError",
    "SandboxError",
    "SearchError",
    "DataError",
    "require",
]


class SpliceError(Exception):
    """Base class of every error splice raises on purpose."""


class ConfigError(SpliceError, ValueError):
    pass


class MissingDependency(SpliceError, ImportError):
    pass


class ModelError(SpliceError):
    pass


class ModelNotFound(ModelError, FileNotFoundError):
    pass


class ToolError(SpliceError, ValueError):
    pass


class SandboxError(SpliceError):
    pass


class SearchError(SpliceError):
    pass


class DataError(SpliceError, ValueError):
    pass


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingDependency naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"{module} is not installed: pip install 'splice[{extra}]'  ({e})"
        ) from e
