"""The tools' errors, under the root that ``sandbox.errors`` defines (``agent.errors`` re-exports them).

SpliceError (sandbox.errors)
 +-- ToolError            a tool could not be built or started (not a failed call: those are results)
 +-- SearchError          a search backend failed in a way no result text can describe
 +-- DataError            an input file (dataset, corpus, preference pairs) is malformed
 +-- ModelError           a model failed (here: a chat template refused a prompt; agent.errors adds ModelNotFound)
"""

from __future__ import annotations

from sandbox.errors import ConfigError, MissingDependency, SpliceError, require

__all__ = ["ToolError", "SearchError", "DataError", "ModelError",
           "SpliceError", "ConfigError", "MissingDependency", "require"]


class ToolError(SpliceError, ValueError):
    pass


class SearchError(SpliceError):
    pass


class DataError(SpliceError, ValueError):
    pass


class ModelError(SpliceError):
    pass
