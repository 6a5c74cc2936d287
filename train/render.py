"""Training examples -> token ids and a loss mask, exactly as the runtime would have produced them.

An example is a chat whose last assistant message is a list of *parts*:

    {"type": "text", "text": "Let me compute it.\\n"}           model text          (mask 1)
    {"type": "call", "tool": "python", "arg": "print(2+2)"}     a tool call         (mask 1)
    {"type": "result", "text": "4\\n"}                          the tool's output    (mask 0)
    {"type": "answer", "text": "4"}                             the final answer    (mask 1)

``ChatRenderer.trajectory`` turns it into a ``Trajectory`` built the way ``Agent`` builds one: the
chat template's prompt (source ``prompt``), model text with calls (``model``), the spliced result
with its tags, escaped and truncated like the runtime does (``result``). The mask then comes from
``Trajectory.loss_mask``, the one place it is defined, so SFT and GRPO train on the same mask the
runtime records. Tags can be added to the tokenizer as special tokens (``add_tag_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.backends.base import encode_chat
from agent.backends.tokenizer import HFTokenizer
from agent.errors import DataError
from agent.syntax import ToolSyntax, get_syntax
from agent.trajectory import Segment, Trajectory
from tools.base import truncate_tokens
from tools.registry import BUILTIN_TOOLS, arg_name_of

__all__ = ["ChatRenderer", "Features", "splice_pieces", "truncate_tokens", "add_tag_tokens",
           "features_from_trajectory", "IGNORE_INDEX", "DEFAULT_TOOLS", "final_parts"]

IGNORE_INDEX = -100
DEFAULT_TOOLS = tuple(BUILTIN_TOOLS)  # the built-ins (tools/): their tags are recognised in example text


def splice_pieces(syntax: ToolSyntax, prefix: str, result: str, tools: Iterable[str]) -> list[tuple[str, bool]]:
    """The text spliced after a call (the runtime's own ``ToolSyntax.splice_pieces``)."""
    return syntax.splice_pieces(prefix, result, tools)


def final_parts(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of the example's last (trained) assistant message."""
    last = example["messages"][-1]
    if last["role"] != "assistant":
        raise DataError(f"example {example.get('id', '?')}: the last message must be the assistant's")
    content = last["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the mask is 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def features_from_trajectory(traj: Trajectory, max_len: int = 0) -> Features:
    """input_ids and labels (-100 where ``loss_mask`` is 0), cut to ``max_len`` when > 0."""
    ids, mask = traj.token_ids, traj.loss_mask()
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    if max_len > 0:
        ids, labels = ids[:max_len], labels[:max_len]
    return Features(ids, labels)


class ChatRenderer:
    """Renders examples with one tokenizer, tag syntax and tool set (the ones the runtime will use).

    ``eos=True`` ends the trained turn with the template's end-of-turn token (trained, mask 1): the
    runtime stops at the answer's closing tag, chat use stops at end of turn, so both are learnt."""

    def __init__(self, tokenizer: Any, syntax: str | ToolSyntax = "splice", tools: Sequence[str] = DEFAULT_TOOLS,
                 *, max_result_tokens: int = 256, eos: bool = True):
        self.tok = tokenizer
        self.vocab = HFTokenizer(tokenizer)  # the runtime's tokenizer adapter (agent.backends.tokenizer)
        self.syntax = get_syntax(syntax)
        self.tools = list(tools)
        self.max_result_tokens = max_result_tokens
        self.eos = eos
        self._eot = self._end_of_turn() if eos else []

    # -- tokenizer: the adapter TransformersBackend uses ---------------------------------------------
    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.vocab.encode(text, special=special) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.vocab.decode(ids)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        return self._template([{"role": m["role"], "content": _plain(m["content"], self.syntax)} for m in messages])

    def chat_ids(self, messages: list[dict[str, Any]], tools: Sequence[str]) -> tuple[str, list[int]]:
        """The prompt as (text, ids), tokenised as the runtime does (``encode_chat``): template markup
        and the system prompt may be special tokens, other content never (a tool result in history
        printing ``<|im_start|>`` stays text); an earlier assistant turn given as parts gets exactly
        the ids the runtime recorded for it."""
        msgs = []
        for m in messages:
            msg = {"role": m["role"], "content": _plain(m["content"], self.syntax), "special": m["role"] == "system"}
            if not isinstance(m["content"], str):
                msg["token_ids"] = self._parts(Trajectory(""), m["content"], tools).token_ids
            msgs.append(msg)
        return encode_chat(self._template, self.encode, msgs)

    def _template(self, msgs: list[dict[str, str]]) -> str:
        return self.vocab.chat_prompt(msgs)

    def _end_of_turn(self) -> list[int]:
        """Ids the template puts after an assistant message, up to and including the EOS id."""
        eos_id = self.tok.eos_token_id
        if not getattr(self.tok, "chat_template", None):
            return [eos_id] if eos_id is not None else []
        marker = "\u2063XYZZY\u2063"
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
        text = self.tok.apply_chat_template(msgs, tokenize=False)
        ids = self.encode(text.split(marker, 1)[1], special=True)
        if eos_id in ids:
            return ids[: ids.index(eos_id) + 1]
        return ids[:1] or ([eos_id] if eos_id is not None else [])

    # -- rendering ------------------------------------------------------------------------------
    def trajectory(self, example: dict[str, Any]) -> Trajectory:
        """The example as the runtime would record it (plus the end-of-turn token when ``eos``)."""
        tools = example.get("tools", self.tools)
        prompt, ids = self.chat_ids(example["messages"][:-1], tools)
        traj = Trajectory(question=_question(example), answer=example.get("answer"), syntax=self.syntax.name,
                          meta={"id": example.get("id", ""), "family": example.get("family", "")})
        traj.segments.append(Segment("prompt", prompt, ids))
        return self._parts(traj, final_parts(example), tools, end=self._eot)

    def _parts(self, traj: Trajectory, parts: Sequence[dict[str, Any]], tools: Sequence[str],
               end: list[int] | None = None) -> Trajectory:
        """Append an assistant turn's parts as model and result segments."""
        model_text = ""
        for part in parts:
            if part["type"] == "result":
                self._add_model(traj, model_text)
                model_text = ""
                self._add_result(traj, part["text"], tools)
            else:
                model_text += self.part_text(part)
        self._add_model(traj, model_text, end=end)
        return traj

    def part_text(self, part: dict[str, Any]) -> str:
        kind, s = part["type"], self.syntax
        if kind == "text":
            return part["text"]
        if kind == "call":
            return s.render_call(part["tool"], part["arg"], part.get("arg_name") or arg_name_of(part["tool"]))
        if kind == "answer":
            return s.render_answer(part["text"])

        raise DataError(f"unknown part type {kind!r}; use text, call, result or answer")

    def features(self, example: dict[str, Any], max_len: int = 0) -> Features:
        return features_from_trajectory(self.trajectory(example), max_len)

    def _add_model(self, traj: Trajectory, text: str, end: list[int] | None = None) -> None:
        ids = self.encode(text, special=self.tags_special()) + list(end or [])
        if ids:
            traj.segments.append(Segment("model", text, ids))

    def _add_result(self, traj: Trajectory, result: str, tools: Sequence[str]) -> None:
        result = truncate_tokens(result, self.encode, self.decode, self.max_result_tokens)
        pieces = splice_pieces(self.syntax, "", result, tools)
        ids = [i for text, special in pieces for i in self.encode(text, special)]
        traj.segments.append(Segment("result", "".join(t for t, _ in pieces), ids))

    def tags_special(self) -> bool:
        """True when the syntax's tags are single special tokens of this tokenizer."""
        added = set(getattr(self.tok, "all_special_tokens", []) or [])
        added |= {str(t) for t in getattr(self.tok, "added_tokens_decoder", {}).values()}
        return self.syntax.answer_open in added


def _plain(content: Any, syntax: ToolSyntax) -> str:
    """A history message's content as text (list contents are rendered without a tokenizer)."""
    if isinstance(content, str):
        return content
    out = []
    for p in content:
        if p["type"] == "text":
            out.append(p["text"])
        elif p["type"] == "call":
            out.append(syntax.render_call(p["tool"], p["arg"], p.get("arg_name") or arg_name_of(p["tool"])))
        elif p["type"] == "result":
            out.append("".join(t for t, _ in splice_pieces(syntax, "", p["text"], DEFAULT_TOOLS)))
        else:
            out.append(syntax.render_answer(p["text"]))
    return "".join(out)


def _question(example: dict[str, Any]) -> str:
    users = [m for m in example["messages"] if m["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


def add_tag_tokens(tokenizer: Any, model: Any, syntax: str | ToolSyntax,
                   tools: Sequence[str] = DEFAULT_TOOLS) -> list[int]:
    """Add the syntax's tags as special tokens, resize the embeddings and initialise the new rows
    to the mean embedding. Returns the new ids (to make trainable: ``trainable_token_indices``)."""
    import torch

    tags = [t for t in get_syntax(syntax).all_tags(tools) if t.strip()]
    before = len(tokenizer)
    tokenizer.add_tokens(tags, special_tokens=True)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in tags]
    new_ids = [i for i in new_ids if i >= before]
    if not new_ids:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        layers = (model.get_input_embeddings(), model.get_output_embeddings())
        for emb in {id(e): e for e in layers if e is not None}.values():  # once when tied
            w = emb.weight
            w[new_ids] = w[:before].mean(0, keepdim=True).to(w.dtype)
    return new_ids
