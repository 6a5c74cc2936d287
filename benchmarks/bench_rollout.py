"""Rollout throughput of tool-using episodes: splice's batched backend vs a naive loop vs a lockstep batch.

    python benchmarks/bench_rollout.py                # GPU: 64 episodes; CPU: a smaller run (8 episodes)
    python benchmarks/bench_rollout.py --profile      # also profile the batched decode loop

The harness is "a tool every K tokens": each episode generates ``turns`` segments of up to K tokens
(greedy); between segments a tool sleeps ``tool_ms`` and a fixed ``result_tokens``-token result is
spliced. The same prompts, token budget and model (SmolLM2-135M-Instruct) are used by

* splice      BatchedTransformersBackend: continuous batching, a sequence leaves the batch during its
              tool call and rejoins prefilling only the spliced tokens;
* naive       one HF ``generate`` per turn per episode on the whole context (re-encoded each turn);
              episodes run concurrently, so tool sleeps overlap, but forwards run one at a time;
* lockstep    one left-padded batched HF ``generate`` per round for all episodes, then every episode
              waits for the round's tools (TRL's tool loop), whole contexts re-encoded each round.

It also measures (2) an episode with 4 tool calls (tool time 0) against plain generation of the
same number of tokens, and (3) KV memory per concurrent episode. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from agent.backends import SamplingParams, default_model_path
from agent.backends.batched import BatchedTransformersBackend
from agent.backends.transformers import load_hf

TOPICS = ["a lighthouse keeper", "the history of tea", "a robot learning to paint", "volcanoes",
          "a chess tournament", "the moon landing", "bees", "a city under the sea"]
RESULT_TEXT = ("Result: the search returned several documents; the most relevant one says that the "
               "answer depends on the context and gives three numbered examples with dates and places. ")


@dataclass
class Setup:
    episodes: int
    turns: int  # segments per episode; turns - 1 tool calls
    tokens_per_turn: int
    result_tokens: int
    tool_ms: float
    device: str
    max_len: int


@dataclass
class Row:
    method: str
    wall_s: float
    generated: int
    episodes_per_s: float
    tok_per_s: float
    same_tokens_as_naive: bool | None = None


def _prompts(tok, n: int) -> list[list[int]]:
    msgs = [[{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]} (#{i})."}]
            for i in range(n)]
    return [tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for m in msgs]


def _result_ids(tok, n: int) -> list[int]:
    ids = tok(RESULT_TEXT * 8, add_special_tokens=False)["input_ids"]
    return ids[:n]


# -- splice: the batched backend -----------------------------------------------------------------
async def _splice_episode(b: BatchedTransformersBackend, prompt: list[int], result: list[int], s: Setup) -> list[int]:
    seq, append, out = b.new_sequence(0), prompt, []
    for turn in range(s.turns):
        async with contextlib.aclosing(b.stream(seq, append, SamplingParams(max_tokens=s.tokens_per_turn))) as it:
            out += [t async for t in it]
        if turn < s.turns - 1:
            await asyncio.sleep(s.tool_ms / 1000)
            append = result
    await b.release(seq)
    return out


async def run_splice(model, tok, prompts, result, s: Setup) -> tuple[float, list[list[int]]]:
    async with BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=len(prompts), max_len=s.max_len) as b:
        await _splice_episode(b, prompts[0][:8], result, Setup(**{**asdict(s), "turns": 1}))  # warm up
        t0 = time.perf_counter()
        outs = await asyncio.gather(*[_splice_episode(b, p, result, s) for p in prompts])
        return time.perf_counter() - t0, list(outs)


# -- naive: HF generate per turn, whole context --------------------------------------------------
def _generate(model, tok, batch: list[list[int]], n: int) -> list[list[int]]:
    """Greedy HF generate on left-padded contexts; new ids per row, cut after EOS."""
    width = max(map(len, batch))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
    rows = []
    for r in out[:, width:].tolist():
        cut = r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r)
        rows.append(r[:cut])
    return rows


async def run_naive(model, tok, prompts, result, s: Setup) -> tuple[float, list[list[int]]]:
    lock = asyncio.Lock()

    async def episode(prompt: list[int]) -> list[int]:
        ctx, out = list(prompt), []
        for turn in range(s.turns):
            async with lock:
                new = (await asyncio.to_thread(_generate, model, tok, [ctx], s.tokens_per_turn))[0]
            ctx += new
            out += new
            if turn < s.turns - 1:
                await asyncio.sleep(s.tool_ms / 1000)
                ctx += result
        return out

    _generate(model, tok, [prompts[0][:8]], 2)  # warm up
    t0 = time.perf_counter()
    outs = await asyncio.gather(*[episode(p) for p in prompts])
    return time.perf_counter() - t0, list(outs)


async def run_lockstep(model, tok, prompts, result, s: Setup) -> tuple[float, list[list[int]]]:
    ctxs, outs = [list(p) for p in prompts], [[] for _ in prompts]
    t0 = time.perf_counter()
    for turn in range(s.turns):
        new = await asyncio.to_thread(_generate, model, tok, ctxs, s.tokens_per_turn)
        for c, o, n in zip(ctxs, outs, new):
            c += n
            o += n
        if turn < s.turns - 1:
            await asyncio.gather(*[asyncio.sleep(s.tool_ms / 1000) for _ in prompts])  # every tool of the round
            for c in ctxs:
                c += result
    return time.perf_counter() - t0, outs


# -- (2) tool calls vs plain generation, (3) memory --------------------------------------------------
async def tool_overhead(model, tok, prompt, result, s: Setup) -> dict[str, float]:
    five = Setup(**{**asdict(s), "episodes": 1, "turns": 5, "tool_ms": 0.0})
    t_tools, outs = await run_splice(model, tok, [prompt], result, five)
    n = len(outs[0])
    plain = Setup(**{**asdict(five), "turns": 1, "tokens_per_turn": n})
    t_plain, plain_outs = await run_splice(model, tok, [prompt], result, plain)
    return {"tool_calls": 4, "generated": n, "plain_generated": len(plain_outs[0]), "t_with_tools_s": t_tools,
            "t_plain_s": t_plain, "ratio": t_tools / t_plain}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def memory(model, tok, s: Setup) -> dict[str, float]:
    before = torch.cuda.memory_allocated() if model.device.type == "cuda" else _rss_bytes()
    b = BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=s.episodes, max_len=s.max_len)
    after = torch.cuda.memory_allocated() if model.device.type == "cuda" else _rss_bytes()
    per_slot = b.runner.cache_bytes_per_slot
    return {"kv_bytes_per_episode": per_slot, "kv_bytes_per_token": per_slot / (s.max_len + 1),
            "slot_tokens": s.max_len, "measured_bytes_per_episode": (after - before) / s.episodes}


def profile(model, tok, prompts, result, s: Setup, steps: int = 10) -> str:
    """The hot path: the batched decode step for all episodes at their prompt length, profiled in
    this thread (the backend runs it in a worker thread, which the profiler does not follow)."""
    import numpy as np
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from agent.backends._static_cache import StaticLlamaRunner

    r = StaticLlamaRunner(model, len(prompts), s.max_len)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            r.prefill(i, p, 0)
        pos = np.array([len(p) for p in prompts])
        tok_, act = np.full(len(prompts), result[0]), np.ones(len(prompts), bool)
        r.decode(tok_, pos, act)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
        with tprofile(activities=acts) as prof:
            for i in range(steps):
                r.decode(tok_, pos + 1 + i, act)
    key = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=12)


def _load(device: str):
    path = default_model_path()
    try:
        return load_hf(path, device)
    except ValueError:  # transformers 5 cannot save_pretrained a GGUF-loaded model: load it directly
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        return model.to(dev).eval(), tok


# -- main -------------------------------------------------------------------------------------------
def _rate(name: str, wall: float, outs: list[list[int]], n: int, ref: list[list[int]] | None) -> Row:
    gen = sum(map(len, outs))
    return Row(name, round(wall, 3), gen, round(n / wall, 3), round(gen / wall, 1),
               None if ref is None else outs == ref)


async def throughput(model, tok, s: Setup) -> list[Row]:
    prompts, result = _prompts(tok, s.episodes), _result_ids(tok, s.result_tokens)
    err = Console(stderr=True)
    t_naive, naive = await run_naive(model, tok, prompts, result, s)
    err.log(f"naive: {t_naive:.1f}s")
    t_lock, lock = await run_lockstep(model, tok, prompts, result, s)
    err.log(f"lockstep: {t_lock:.1f}s")
    t_splice, spl = await run_splice(model, tok, prompts, result, s)
    err.log(f"splice: {t_splice:.1f}s")
    return [_rate("naive (HF generate per turn)", t_naive, naive, s.episodes, None),
            _rate("lockstep (batched generate per round)", t_lock, lock, s.episodes, naive),
            _rate("splice batched", t_splice, spl, s.episodes, naive)]


def _table(rows: list[Row], s: Setup) -> Table:
    t = Table(title=f"rollout: {s.episodes} episodes x {s.turns - 1} tool calls, {s.tokens_per_turn} tok/turn, "
                    f"{s.result_tokens}-tok results, tool {s.tool_ms:g} ms, {s.device}")
    for col in ("method", "wall s", "gen tok", "episodes/s", "tok/s", "x naive", "same tokens"):
        t.add_column(col, justify="left" if col == "method" else "right")
    base = rows[0].tok_per_s
    for r in rows:
        same = "-" if r.same_tokens_as_naive is None else ("yes" if r.same_tokens_as_naive else "no")
        t.add_row(r.method, f"{r.wall_s:.2f}", str(r.generated), f"{r.episodes_per_s:.2f}", f"{r.tok_per_s:.1f}",
                  f"{r.tok_per_s / base:.2f}", same)
    return t


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=64 if cuda else 8)
    ap.add_argument("--turns", type=int, default=5, help="segments per episode (turns - 1 tool calls)")
    ap.add_argument("--tokens-per-turn", type=int, default=64 if cuda else 16)
    ap.add_argument("--result-tokens", type=int, default=32)
    ap.add_argument("--tool-ms", type=float, default=200.0)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench_rollout.json")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = _load(a.device)
    s = Setup(a.episodes, a.turns, a.tokens_per_turn, a.result_tokens, a.tool_ms, str(model.device), a.max_len)
    rows = asyncio.run(throughput(model, tok, s))
    prompts, result = _prompts(tok, 1), _result_ids(tok, s.result_tokens)
    overhead = asyncio.run(tool_overhead(model, tok, prompts[0], result, s))
    mem = memory(model, tok, s)
    console = Console(width=130)
    console.print(_table(rows, s))
    console.print(f"episode with 4 tool calls vs plain generation of {overhead['generated']} tokens: "
                  f"{overhead['t_with_tools_s']:.2f}s / {overhead['t_plain_s']:.2f}s = {overhead['ratio']:.2f}x")
    console.print(f"KV cache per concurrent episode: {mem['kv_bytes_per_episode'] / 2**20:.1f} MiB "
                  f"({mem['kv_bytes_per_token'] / 1024:.1f} KiB/token x {s.max_len} tokens, "
                  f"{model.dtype}); measured {mem['measured_bytes_per_episode'] / 2**20:.1f} MiB")
    report = {"setup": asdict(s), "throughput": [asdict(r) for r in rows], "tool_overhead": overhead,
              "memory": mem, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.profile:
        report["profile"] = profile(model, tok, _prompts(tok, s.episodes), result, s)
        console.print(report["profile"])
    Path(a.out).write_text(json.dumps(report, indent=2))
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
