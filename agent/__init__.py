"""splice: a tool-use runtime for language models. ``from agent import Agent``.

Importing this package needs neither torch nor llama.cpp; backends import them when loaded.
"""

from agent.backends import Backend, SamplingParams, ScriptedBackend, Sequence, load_backend
from agent.errors import (
    ConfigError,
    DataError,
    MissingDependency,
    ModelError,
    ModelNotFound,
    SandboxError,
    SearchError,
    SpliceError,
    ToolError,
)
from agent.runtime import (
    Agent,
    Conversation,
    DoneEvent,
    Event,
    RuntimeConfig,
    TokenEvent,
    ToolCallStarted,
    ToolResultEvent,
)
from agent.syntax import PRESETS, StreamParser, ToolSyntax, extract_answer, get_syntax
from agent.trajectory import Segment, ToolCall, Trajectory

__all__ = [
    "Agent",
    "Backend",
    "ConfigError",
    "Conversation",
    "DataError",
    "DoneEvent",
    "Event",
    "MissingDependency",
    "ModelError",
    "ModelNotFound",
    "PRESETS",
    "RuntimeConfig",
    "SamplingParams",
    "SandboxError",
    "ScriptedBackend",
    "SearchError",
    "Segment",
    "Sequence",
    "SpliceError",
    "StreamParser",
    "TokenEvent",
    "ToolCall",
    "ToolCallStarted",
    "ToolError",
    "ToolResultEvent",
    "ToolSyntax",
    "Trajectory",
    "extract_answer",
    "get_syntax",
    "load_backend",
]
