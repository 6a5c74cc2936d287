"""Run an eval: load questions, run every (question, mode, sample) episode, score, summarise, report.

Output directory layout (``EvalConfig.out_dir``):
- ``config.json``      the run's config (``asdict``), checked when a run is resumed
- ``episodes.jsonl``   one line per finished episode: eval fields + the full trajectory
- ``summary.json``     metrics per mode and per family (``agent.evals.summary``)
- ``report.html``, ``plot.png``   when ``report`` is on
- ``corpus.jsonl``, ``index.sqlite``   the search index built from the dataset's own passages

Resuming: episodes are appended (and flushed) as they finish, so a killed run leaves every finished
episode on disk; a rerun with the same ``--out`` skips the (question id, mode, sample) keys already
written and runs the rest. A torn last line (killed mid-write) is cut off first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import zlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.backends import load_backend
from agent.backends.base import Backend
from agent.concurrency import map_bounded
from agent.config import dump_config
from agent.errors import ConfigError, DataError, SandboxError
from agent.evals import metrics, report
from agent.evals.config import EvalConfig, parse_mode
from agent.evals.data import Example, FieldNames, collect_passages, load_examples, write_corpus
from agent.evals.summary import summarize
from agent.evals.tasks import generate_mix, parse_spec
from agent.runtime import Agent, RuntimeConfig
from agent.trajectory import Trajectory

__all__ = [
    "CONFIG",
    "EPISODES",
    "SUMMARY",
    "evaluate",
    "load_episodes",
    "load_eval_examples",
    "run_eval",
    "score_episode",
]

log = logging.getLogger("splice.evals")

EPISODES, SUMMARY, CONFIG = "episodes.jsonl", "summary.json", "config.json"
GEN_PREFIX = "gen:"
GEN_DEFAULT_PER_FAMILY = 100
JOB_BLOCK = 16  # questions per block of the job order (see plan_jobs)

Progress = Callable[[int, int, "dict[str, Any] | None"], None]  # (done, total, record or None at start)


@dataclass(frozen=True)
class Job:
    example: Example
    mode: str
    sample: int
    seed: int


# -- questions -----------------------------------------------------------------------------------------
def load_eval_examples(cfg: EvalConfig) -> tuple[list[Example], list[Example]]:
    """(questions to run, every question of the source): the second feeds the search index."""
    if cfg.data.startswith(GEN_PREFIX):
        families, phrasing = parse_spec(cfg.data[len(GEN_PREFIX):])
        n = cfg.limit or GEN_DEFAULT_PER_FAMILY * len(families)
        examples = generate_mix(families, n, cfg.runtime.seed, phrasing)
        return examples, examples
    names = FieldNames(cfg.question_field, cfg.answer_field, cfg.aliases_field, cfg.id_field)
    every = load_examples(cfg.data, cfg.format, names)
    return (every[: cfg.limit] if cfg.limit else every), every


def episode_seed(cfg: EvalConfig, example_id: str, sample: int) -> int:
    """Stable per (question, sample): a resumed or reordered run samples the same episode."""
    return (cfg.runtime.seed + zlib.crc32(f"{example_id}:{sample}".encode())) % 2**31


def plan_jobs(cfg: EvalConfig, examples: list[Example], done: set[tuple[str, str, int]]) -> list[Job]:
    """Jobs not yet done, in blocks of questions: within a block mode by mode, so consecutive
    episodes share the mode's system prompt in the KV cache, while a killed run still has every
    mode done for about the same questions."""
    jobs = []
    for start in range(0, len(examples), JOB_BLOCK):
        block = examples[start:start + JOB_BLOCK]
        jobs += [Job(ex, mode, s, episode_seed(cfg, ex.id, s))
                 for mode in cfg.modes for ex in block for s in range(cfg.samples)
                 if (ex.id, mode, s) not in done]
    return jobs


# -- the output directory ------------------------------------------------------------------------------
def prepare_out_dir(cfg: EvalConfig) -> Path:
    out = cfg.out_dir
    if cfg.overwrite and out.exists():
        for name in (EPISODES, SUMMARY, CONFIG, "report.html", "plot.png"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / CONFIG
    if cfg_path.exists() and (out / EPISODES).exists():
        old = EvalConfig(**json.loads(cfg_path.read_text()))
        changed = {k: (v, cfg.fingerprint()[k]) for k, v in old.fingerprint().items() if cfg.fingerprint()[k] != v}
        if changed:
            raise ConfigError(f"{out} holds a run with other settings {changed} (old, new); use a new --out "
                              "or --overwrite to discard it")
    cfg_path.write_text(json.dumps(dump_config(cfg), indent=2) + "\n")
    return out


def load_episodes(path: Path) -> list[dict[str, Any]]:
    """Records of an episodes file; a torn last line (a run killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                if raw.endswith(b"\n"):
                    raise DataError(f"{path}: a corrupt line in the middle; delete the file to start over") from None
                break
            if not raw.endswith(b"\n"):
                break
            records.append(rec)
            good_bytes += len(raw)
    if good_bytes < path.stat().st_size:
        log.warning("cutting a torn last line off %s", path)
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return records


# -- the search index ----------------------------------------------------------------------------------
async def search_runtime(cfg: EvalConfig, every: list[Example], out: Path) -> RuntimeConfig:
    """The runtime config, with a local index built from the data's own passages when search is used
    and no index or other search backend was given."""
    rt = cfg.runtime
    uses_search = any("search" in parse_mode(m) for m in cfg.modes)
    opts = rt.tool_config.get("search", {})
    backend = opts.get("backend", "auto")
    local = backend == "local" or (backend == "auto" and not opts.get("url"))
    if not uses_search or opts.get("index") or not local:
        return rt
    index = out / "index.sqlite"
    if not index.exists():
        source = cfg.corpus or _dataset_corpus(every, out)
        from tools.search import build_index  # lazy: heavy (the search package: SQLite index, web clients)

        tmp = index.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        log.info("building the search index %s from %s", index, source)
        await asyncio.to_thread(build_index, [source], tmp, progress=False)
        tmp.replace(index)
    return replace(rt, tool_config={**rt.tool_config, "search": {**opts, "index": str(index)}})


def _dataset_corpus(every: list[Example], out: Path) -> str:
    passages = collect_passages(every)
    if not passages:
        raise ConfigError("search mode needs passages: this dataset carries none, so give --corpus FILE, "
                          "--search-index PATH, --search-url URL or --search-backend web")
    return str(write_corpus(passages, out / "corpus.jsonl"))


# -- scoring one episode -------------------------------------------------------------------------------
def score_episode(job: Job, traj: Trajectory) -> dict[str, Any]:
    ex, pred = job.example, traj.answer
    return {
        "id": ex.id, "mode": job.mode, "sample": job.sample, "seed": job.seed, "family": ex.family,
        "question": ex.question, "gold": ex.golds, "answerable": ex.answerable, "pred": pred,
        "correct": metrics.is_correct(pred, ex.golds, ex.answerable),
        "em": metrics.exact_match(pred, ex.golds), "f1": metrics.token_f1(pred, ex.golds),
        "refusal": metrics.is_refusal(pred), "n_tool_calls": len(traj.tool_calls),
        "n_malformed": traj.malformed_calls, "n_tokens": traj.n_generated, "seconds": traj.seconds,
        "stop_reason": traj.stop_reason, "trajectory": traj.to_dict(),
    }


# -- running -------------------------------------------------------------------------------------------
async def _run_jobs(cfg: EvalConfig, agents: dict[str, Agent], jobs: list[Job], path: Path,
                    on_record: Callable[[dict[str, Any]], None]) -> None:
    """Run every job, appending its record as it finishes. An episode that raises is recorded as an
    error (``stop_reason="error"``, ``error``: the message; scored as wrong) and the others finish,
    except a ``SandboxError`` (the host's sandbox is broken), which is raised once they are done.
    A failure outside the episodes (writing the file) is raised once every job is done."""

    async def one(job: Job) -> None:
        agent = agents[job.mode]
        try:
            traj = await agent.run(job.example.question, seed=job.seed)
        except SandboxError:
            raise  # a broken host, not a wrong answer: the eval stops with it (after the running jobs)
        except Exception as exc:  # noqa: BLE001 - one bad episode must not lose the run
            traj = agent.failed(job.example.question, exc, job.seed)
        rec = score_episode(job, traj)
        if "error" in traj.meta:
            rec["error"] = traj.meta["error"]
        with path.open("a", encoding="utf-8") as f:  # one write + flush per finished episode
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        on_record(rec)

    errors = [r for r in await map_bounded(one, jobs, cfg.concurrency) if isinstance(r, Exception)]
    if errors:
        raise errors[0]


async def _open_agents(cfg: EvalConfig, runtime: RuntimeConfig, backend: Backend | None,
                       stack: AsyncExitStack) -> dict[str, Agent]:
    if backend is None:
        backend = await asyncio.to_thread(load_backend, runtime.model, runtime.llm, syntax=runtime.syntax,
                                          tools=runtime.tools)
        stack.push_async_callback(backend.aclose)
    agents = {}
    for mode in cfg.modes:
        agent = Agent(backend, tools=parse_mode(mode), syntax=runtime.syntax, config=runtime)
        for t in agent.tools.values():
            stack.push_async_callback(t.aclose)
        agents[mode] = agent
    return agents


async def evaluate(cfg: EvalConfig, backend: Backend | None = None, progress: Progress | None = None
                   ) -> dict[str, Any]:
    """Run (or resume) the eval ``cfg`` describes and return its summary (also written to disk).
    ``backend`` overrides ``cfg.runtime.model`` (tests pass a ScriptedBackend; the caller closes it)."""
    out = prepare_out_dir(cfg)
    examples, every = load_eval_examples(cfg)
    path = out / EPISODES
    wanted = {(ex.id, m, s) for ex in examples for m in cfg.modes for s in range(cfg.samples)}
    done = {(r["id"], r["mode"], r["sample"]) for r in load_episodes(path)} & wanted
    jobs = plan_jobs(cfg, examples, done)
    if done:
        log.info("resumed from %s: %d of %d episodes already done", path, len(done), len(wanted))
    count = {"done": len(done)}
    if progress:
        progress(len(done), len(wanted), None)

    def on_record(rec: dict[str, Any]) -> None:
        count["done"] += 1
        if progress:
            progress(count["done"], len(wanted), rec)

    if jobs:
        runtime = await search_runtime(cfg, every, out)
        async with AsyncExitStack() as stack:
            agents = await _open_agents(cfg, runtime, backend, stack)
            await _run_jobs(cfg, agents, jobs, path, on_record)
    records = [r for r in load_episodes(path) if (r["id"], r["mode"], r["sample"]) in wanted]
    summary = summarize(records, examples, cfg)
    _write_outputs(cfg, out, records, summary)
    return summary


def _write_outputs(cfg: EvalConfig, out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    files = {"episodes": str(out / EPISODES), "summary": str(out / SUMMARY)}
    if cfg.report:
        plot = report.write_plot(summary, out / "plot.png")
        if plot:
            files["plot"] = str(plot)
        files["report"] = str(report.write_html(records, summary, out / "report.html", plot))
    summary["files"] = files
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    shutil.move(str(tmp), str(out / SUMMARY))


def run_eval(cfg: EvalConfig, backend: Backend | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Blocking wrapper of ``evaluate`` (not for use inside a running event loop)."""
    return asyncio.run(evaluate(cfg, backend, progress))
