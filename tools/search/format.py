"""Every model-facing string of the search tool, in one place: the description, the examples and the
layout of results and failures."""

from __future__ import annotations

from tools.search.base import Passage

__all__ = ["DESCRIPTION", "EXAMPLES", "clip", "format_failure", "format_results"]

DESCRIPTION = (
    "Search for passages about a topic. Give a short query of keywords or a question; the result is "
    "a numbered list of passages, each with a title, a snippet and its source. Search again with "
    "different words if the passages do not answer the question."
)

_EXAMPLE_RESULT = (
    "[1] Eiffel Tower (wikipedia)\n"
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889."
)
EXAMPLES = (("Eiffel Tower completion year", _EXAMPLE_RESULT),)


def clip(text: str, max_chars: int) -> str:
    """``text`` cut at a word boundary to at most ``max_chars`` characters (``...`` marks a cut)."""
    text = " ".join(text.split())
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[: max(max_chars - 3, 1)]
    head, _, _ = cut.rpartition(" ")
    return (head if len(head) > max_chars // 2 else cut).rstrip(" ,;:") + "..."


def format_results(query: str, passages: list[Passage], max_chars: int) -> str:
    """``[1] Title (source)`` then the snippet, one block per passage, blank line between."""
    if not passages:
        return f"No results for {clip(query, 100)!r}. Try other keywords."
    blocks = []
    for i, p in enumerate(passages, 1):
        head = f"[{i}] {p.title or 'Untitled'}" + (f" ({p.source})" if p.source else "")
        blocks.append(f"{head}\n{clip(p.text, max_chars)}")
    return "\n\n".join(blocks)


def format_failure(reason: str) -> str:
    """What the model reads when a search could not run (empty query, network down, ...)."""
    return f"Search failed: {reason}"
