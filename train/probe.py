"""Knowledge probe: teach the model to search (or say it does not know) exactly where it does not know.

For question/answer pairs grounded in passages of a corpus, the model is asked closed-book
``samples`` times (``Agent(..., tools=[])``, sampling on). An answer is judged correct by the shared
metrics (numeric/alias-aware accuracy, or token F1 >= ``f1_threshold``). Where the share of correct
samples reaches ``known_threshold`` the target answers directly; otherwise the target searches (with
the search tool on; the real search result is spliced in and must contain the answer) or, with search
off, says it does not know.

QA pairs come from a JSONL of ``{question, answer, aliases?}`` or from the MuSiQue decompositions in
a multi-hop dir: every hop is a single-fact question answered by one passage of the corpus.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, DataError
from agent.evals.data import read_records
from agent.evals.metrics import is_correct, token_f1
from agent.runtime import Agent, RuntimeConfig
from train.data import _found, synthesize, write_jsonl
from train.plans import Plan, answer, call, text

__all__ = ["ProbeConfig", "QAPair", "qa_pairs", "judge", "probe", "probe_plans"]

REFUSAL = "I don't know."


@dataclass
class ProbeConfig:
    out: str = field(default="data/probe.jsonl", metadata={"help": "output JSONL of training examples"})
    qa: str = field(default="", metadata={"help": "JSONL of {question, answer, aliases?} (or use --multihop)"})
    multihop: str = field(default="", metadata={"help": "dir with musique_train.json (hops become QA pairs)"})
    model: str = field(default="default", metadata={"help": "the model to probe ('default', .gguf, HF dir)"})
    backend: str = field(default="auto", metadata={"help": "auto | llama_cpp | transformers"})
    syntax: str = field(default="splice", metadata={"help": "tag syntax of the examples"})
    n: int = field(default=200, metadata={"help": "QA pairs to probe"})
    samples: int = field(default=4, metadata={"help": "closed-book answers per question"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the probe"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per closed-book answer"})
    known_threshold: float = field(default=0.5, metadata={"help": "share of correct samples that means 'knows'"})
    f1_threshold: float = field(default=0.6, metadata={"help": "token F1 that counts as correct"})
    search: bool = field(default=True, metadata={"help": "unknown -> search (else: say I don't know)"})
    index: str = field(default="", metadata={"help": "local search index for the search targets"})
    seed: int = field(default=0, metadata={"help": "pair sampling and probe seed"})
    multihop_holdout: float = field(default=0.2, metadata={"help": "skip the questions `train data` held out"})

    def __post_init__(self) -> None:
        if not (self.qa or self.multihop):
            raise ConfigError("give --qa FILE.jsonl or --multihop DIR as the source of QA pairs")
        if self.search and not self.index:
            raise ConfigError("--search needs --index (the local search index over the passages)")
        if self.samples < 1 or not 0 < self.known_threshold <= 1:
            raise ConfigError("--samples must be >= 1 and --known-threshold in (0, 1]")


@dataclass
class QAPair:
    id: str
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)

    @property
    def golds(self) -> list[str]:
        return [self.answer, *self.aliases]


def qa_pairs(cfg: ProbeConfig) -> list[QAPair]:
    """QA pairs from ``cfg.qa`` or the MuSiQue hops, a seeded sample of ``cfg.n``."""
    pairs: list[QAPair] = []
    if cfg.qa:
        for i, r in enumerate(read_records(cfg.qa)):
            if "question" not in r or "answer" not in r:
                raise DataError(f"{cfg.qa} record {i}: needs 'question' and 'answer'")
            pairs.append(QAPair(str(r.get("id", f"qa-{i}")), r["question"], str(r["answer"]),
                                list(r.get("aliases", []))))
    if cfg.multihop:
        pairs += musique_hops(Path(cfg.multihop) / "musique_train.json", cfg.multihop_holdout)
    rng = random.Random(f"probe:{cfg.seed}")
    return rng.sample(pairs, min(cfg.n, len(pairs)))


def musique_hops(path: Path, holdout: float = 0.0) -> list[QAPair]:
    """Each hop of each MuSiQue decomposition, ``#k`` replaced by the earlier hop's answer; records
    held out by ``train.data`` (same id hash) are skipped."""
    import zlib


    out = []
    for i, rec in enumerate(read_records(path)):
        if zlib.crc32(str(rec.get("id", i)).encode()) % 1000 < holdout * 1000:
            continue
        answers: list[str] = []
        for hop in rec.get("question_decomposition", []):
            q = hop["question"]
            for j, a in enumerate(answers, 1):
                q = q.replace(f"#{j}", a)
            answers.append(hop["answer"])
            if ">>" in q or "#" in q:
                continue  # relation-style hops ("X >> country") are not natural questions
            out.append(QAPair(f"hop-{hop['id']}", re.sub(r"\s+\?$", "?", q.strip()), hop["answer"]))
    return out


def judge(pred: str | None, golds: Sequence[str], f1_threshold: float) -> bool:
    return is_correct(pred, list(golds)) or token_f1(pred, list(golds)) >= f1_threshold


async def probe(pairs: Sequence[QAPair], agent: Any, samples: int, f1_threshold: float) -> list[float]:
    """The share of correct closed-book answers per pair (``samples`` runs each, distinct seeds)."""
    questions = [p.question for p in pairs for _ in range(samples)]
    trajs = await agent.run_many(questions, concurrency=1)
    scores = []
    for i, p in enumerate(pairs):
        got = trajs[i * samples:(i + 1) * samples]
        scores.append(sum(judge(t.answer, p.golds, f1_threshold) for t in got) / samples)
    return scores


def probe_plans(pairs: Sequence[QAPair], scores: Sequence[float], threshold: float, search: bool) -> list[Plan]:
    """Targets: known -> answer directly; unknown -> search then answer, or say you don't know."""
    plans = []
    for p, s in zip(pairs, scores):
        if s >= threshold:
            plans.append(Plan(f"probe-known-{p.id}", "probe_known", p.question, [answer(p.answer)], p.answer))
        elif search:
            parts = [text("I'm not sure about this, so I'll search.\n"), call("search", p.question),
                     text(f"The result says {p.answer}.\n"), answer(p.answer)]
            plans.append(Plan(f"probe-search-{p.id}", "probe_search", p.question, parts, p.answer,
                              check=_found_any(p.golds)))
        else:
            parts = [text("I don't know this and cannot look it up here.\n"), answer(REFUSAL)]
            plans.append(Plan(f"probe-refuse-{p.id}", "probe_refuse", p.question, parts, REFUSAL, tools=("python",)))
    return plans


def _found_any(golds: Sequence[str]):
    return lambda results: any(_found(g, r) for g in golds for r in results)


async def run_probe(cfg: ProbeConfig, tools: dict[str, Any]) -> dict[str, Any]:
    """Probe the model, execute the target plans with the real tools, write ``cfg.out``."""
    pairs = qa_pairs(cfg)
    rcfg = RuntimeConfig(model=cfg.model, backend=cfg.backend, tools=[], syntax=cfg.syntax, seed=cfg.seed,
                         temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    async with Agent(cfg.model, tools=[], syntax=cfg.syntax, config=rcfg) as agent:
        scores = await probe(pairs, agent, cfg.samples, cfg.f1_threshold)
    plans = probe_plans(pairs, scores, cfg.known_threshold, cfg.search)
    rows = await synthesize(plans, tools, cfg.syntax)
    write_jsonl(rows, cfg.out)
    known = sum(s >= cfg.known_threshold for s in scores)
    return {"pairs": len(pairs), "known": known, "unknown": len(pairs) - known, "examples": len(rows),
            "out": cfg.out}
