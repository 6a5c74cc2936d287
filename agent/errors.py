"""The one exception tree of splice. Only the CLI turns these into user messages.

Each layer owns its errors (``sandbox.errors``: the root, config, missing extras, sandbox;
``tools.errors``: tools, search, data; this module: models) and this module re-exports them all, so
``from agent.errors import X`` is the one place to get any of them.

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

from sandbox.errors import ConfigError, MissingDependency, SandboxError, SpliceError, require
from tools.errors import DataError, ModelError, SearchError, ToolError

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


class ModelNotFound(ModelError, FileNotFoundError):
    pass
