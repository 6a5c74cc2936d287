"""Tools the model calls from inside its token stream: a plain registry of typed tools, plugins by
entry point (``splice.tools``) and MCP servers (``mcp:CMD``)."""

from tools.base import FunctionTool, Tool, ToolCallable, ToolOutput, register, tool, truncate_middle
from tools.registry import (
    BUILTIN_TOOLS,
    ENTRY_POINT_GROUP,
    ToolInfo,
    available_tools,
    builtin_tools,
    get_tool,
    get_tools,
    tool_catalog,
)
from tools.schema import ArgumentError, function_schema

__all__ = [
    "ArgumentError",
    "BUILTIN_TOOLS",
    "ENTRY_POINT_GROUP",
    "FunctionTool",
    "Tool",
    "ToolCallable",
    "ToolInfo",
    "ToolOutput",
    "available_tools",
    "builtin_tools",
    "function_schema",
    "get_tool",
    "get_tools",
    "register",
    "tool",
    "tool_catalog",
    "truncate_middle",
]
