"""Model-facing text lives in prompts/: every error message the model reads is a macro of
``messages.j2``, and no code outside prompts/ spells one itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prompts import message, template_text

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for pkg in ("agent", "tools", "train") for p in (ROOT / pkg).rglob("*.py")]


def _macros() -> set[str]:
    return set(re.findall(r"{%-?\s*macro\s+(\w+)\(", template_text("messages.j2")))


def _message_names(tree: ast.AST) -> set[str]:
    return {c.args[0].value for c in ast.walk(tree)
            if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "message"
            and c.args and isinstance(c.args[0], ast.Constant)}


def _starts_with_error(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):
        node = node.values[0] if node.values else node
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("error:")


def test_every_message_is_used_and_every_use_has_a_message():
    used = set().union(*(_message_names(ast.parse(p.read_text(encoding="utf-8"))) for p in CODE))
    assert used == _macros()


def test_no_model_facing_error_text_is_spelled_in_code():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in CODE
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if _starts_with_error(n)]
    assert not found, f"model-facing error text belongs in prompts/messages.j2: {found}"


def test_messages_render_their_fields_verbatim():
    assert message("timed_out", tool="python", seconds="5") == "error: python timed out after 5 s"
    assert message("empty_json_call", tool="python", key="code") == 'error: empty python call; pass {"code": ...} in "arguments"'
    assert message("unknown_tool", word="'calc'", available="python, search") == (
        "error: unknown tool 'calc'; available tools: python, search")
    assert message("tool_failed", tool="t", error="<b>{{x}}</b>") == "error: t failed: <b>{{x}}</b>"  # no escaping
