"""``EvalConfig``: one dataclass for an eval run; it drives the ``agent eval`` flags and is saved with
every run as ``config.json`` (which is also how a resumed run checks it continues the same run)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.runtime import RuntimeConfig

__all__ = ["EvalConfig", "mode_name", "parse_mode"]

NO_TOOLS = "none"


def parse_mode(spec: str) -> list[str]:
    """Tools of a mode spec: ``none`` -> [], ``python+search`` (or ``python,search``) -> both."""
    tools = [t.strip() for t in re.split(r"[+,]", spec) if t.strip()]
    return [] if tools in ([], [NO_TOOLS]) else tools


def mode_name(tools: list[str]) -> str:
    return "+".join(tools) if tools else NO_TOOLS


def _check_out_dir(out: Path) -> None:
    """The output folder, or the first part of its path that exists, must be a folder."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"cannot hold {out}: it is a file"
                raise ConfigError(f"output directory {p} {what}; give --out a folder path")
            return


@dataclass
class EvalConfig:
    data: str = field(default="", metadata={
        "help": "dataset file (.jsonl/.json: gsm8k, hotpotqa, musique, letter-count or question/answer "
                "records) or generated tasks: gen:arith,count,... (gen:all = every tool family; "
                "@train / @heldout picks a phrasing split, e.g. gen:all@heldout)"})
    out: str = field(default="", metadata={"help": "output directory (default runs/eval-<data>); "
                                                   "an existing run there is resumed"})
    modes: list[str] = field(default_factory=lambda: [NO_TOOLS], metadata={
        "help": "tool modes to compare, comma-separated; tools within a mode joined by '+', "
                "e.g. none,python,python+search (--tools adds one mode per flag)"})
    samples: int = field(default=1, metadata={"help": "samples per question; the answer is their majority "
                                                      "vote (needs --temperature > 0 when > 1)"})
    limit: int = field(default=0, metadata={"help": "questions to evaluate (0 = all; for gen: 100 per family)"})
    concurrency: int = field(default=1, metadata={"help": "episodes in flight at once"})
    format: str = field(default="auto", metadata={"help": "dataset shape: auto, gsm8k, hotpotqa, musique, "
                                                          "letters, generic"})
    question_field: str = field(default="", metadata={"help": "question field name (generic shape)"})
    answer_field: str = field(default="", metadata={"help": "gold answer field: a string or a list of aliases"})
    aliases_field: str = field(default="", metadata={"help": "extra accepted answers field (a list)"})
    id_field: str = field(default="", metadata={"help": "question id field (default: id, _id or the row index)"})
    corpus: str = field(default="", metadata={
        "help": "passages to index for the search tool (a folder, or JSON/JSONL of {title,text} or "
                "title->sentences); default: the dataset's own passages, if it carries any"})
    overwrite: bool = field(default=False, metadata={"help": "discard an existing run in --out instead of "
                                                             "resuming it"})
    report: bool = field(default=True, metadata={"help": "write the plot and the HTML report"})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata={
        "help": "model, sampling and tool settings (its own flags)"})

    def __post_init__(self) -> None:
        if isinstance(self.runtime, dict):
            self.runtime = RuntimeConfig(**self.runtime)
        if isinstance(self.modes, str):
            self.modes = self.modes.split(",")
        self.modes = [mode_name(parse_mode(m)) for m in self.modes]
        if not self.data:
            raise ConfigError("no dataset: give a .jsonl/.json file or gen:arith,count")
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"modes must be non-empty and distinct (got {self.modes}); e.g. --modes none,python")
        for name in ("samples", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.limit < 0:
            raise ConfigError(f"limit must be >= 0 (got {self.limit}); 0 means all questions")
        _check_out_dir(self.out_dir)
        if self.samples > 1 and self.runtime.temperature == 0:
            raise ConfigError(f"--samples {self.samples} with --temperature 0 gives identical greedy samples; "
                              "set e.g. --temperature 0.7 for a majority vote")

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.data.removeprefix("gen:")).stem).strip("-")
        return Path("runs") / f"eval-{slug or 'data'}"

    def fingerprint(self) -> dict[str, Any]:
        """What must not change for a run to be resumed: data, model and sampling."""
        r = self.runtime
        return {"data": self.data, "format": self.format, "model": r.model, "backend": r.llm.backend,
                "syntax": r.syntax, "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed,
                "max_new_tokens": r.max_new_tokens, "max_tool_calls": r.max_tool_calls, "system": r.system}
