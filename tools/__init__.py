"""Tools the model calls from inside its token stream: a plain registry of typed tools."""

from tools.base import (
    FunctionTool,
    Tool,
    ToolCallable,
    ToolOutput,
    available_tools,
    get_tool,
    register,
    tool,
    truncate_middle,
)

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolCallable",
    "ToolOutput",
    "available_tools",
    "get_tool",
    "register",
    "tool",
    "truncate_middle",
]
