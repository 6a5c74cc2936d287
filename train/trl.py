"""splice as the tool-rollout engine of TRL's ``GRPOTrainer`` (tested with ``trl`` in ``TESTED_TRL``).

TRL's ``rollout_func`` hook hands over the prompts of a step and takes back token ids; everything
in between is splice's loop with the real tools::

    rollout = SpliceRollout(tools=["python"])
    trainer = trl.GRPOTrainer(model=..., args=GRPOConfig(...), train_dataset=ds,
                              reward_funcs=[trl_reward("accuracy")], rollout_func=rollout)

For each prompt TRL passes (its sampler already repeats a prompt ``num_generations`` times) one
episode is played, with its own seed, concurrently (``agent.concurrency.map_bounded``), and its
``Trajectory`` becomes TRL's fields:

* ``prompt_ids``: the chat prompt splice renders (its system prompt, with the tools' docs);
* ``completion_ids``: everything after it, exactly the ids the backend sampled plus the spliced tool
  results (``Trajectory.completion_ids``; never re-tokenised text);
* ``env_mask``: ``Trajectory.completion_mask`` (1 sampled, 0 tool results and forced text), which
  TRL multiplies into its loss mask, so tool output gets no gradient;
* ``logprobs``: the sampled log-probs (``Trajectory.sampled_logprobs``: the model's unscaled
  distribution; 0.0 at masked positions, as TRL's own tool loop writes; NaN where a backend could
  not say, which TRL leaves out of its importance-sampling correction);
* ``trajectory``: the ``Trajectory`` objects, passed on to reward functions (``trl_reward``).

Where the tokens come from: by default the live policy in the trainer process (``TransformersBackend``
over the unwrapped model, eval mode, no grad: one process, small models, tests), or, with
``GRPOConfig(use_vllm=True, vllm_mode="server")``, TRL's vLLM server through the openai backend
(``/v1/completions`` with token-id prompts, ``return_token_ids`` and ``logprobs``); TRL syncs the
weights to that server before each rollout. ``backend=`` takes any ``(trainer) -> Backend``.
Sampling follows the trainer's ``temperature`` / ``top_p``; ``max_completion_length`` is the budget
of model tokens per episode (tool results come on top, as in ``agent run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agent.backends.base import Backend
from agent.backends.openai import HFTokenizer, OpenAIBackend
from agent.backends.transformers import TransformersBackend
from agent.concurrency import map_bounded
from agent.errors import ConfigError
from agent.runtime import Agent, RuntimeConfig
from agent.trajectory import Trajectory
from train.rewards import REWARDS, RewardFn
from train.rollout import rollout_mode

__all__ = ["SpliceRollout", "TESTED_TRL", "rollout_fields", "trl_reward", "trainer_backend"]

log = logging.getLogger("splice.train.trl")

TESTED_TRL = ">=1.16,<1.17"  # the range pyproject's ``trl`` extra pins; GRPOTrainer's rollout_func API


def _question(prompt: Any) -> tuple[str, list[dict[str, Any]]]:
    """A TRL prompt (text, or chat messages) as (question, history). splice writes its own system
    prompt (the tools' docs), so a system message in the data is left out, with a warning once."""
    if isinstance(prompt, str):
        return prompt, []
    if not isinstance(prompt, list) or not prompt or prompt[-1].get("role") != "user":
        raise ConfigError("a prompt must be text or chat messages ending with a user message; got "
                          f"{str(prompt)[:120]!r}")
    turns = []
    for m in prompt[:-1]:
        if m.get("role") == "system":
            log.warning("the dataset's system message is replaced by splice's system prompt")
            continue
        turns.append({"role": m["role"], "content": _text(m.get("content"))})
    return _text(prompt[-1].get("content")), turns


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # typed content blocks: the text ones
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise ConfigError(f"message content must be text; got {type(content).__name__}")


def rollout_fields(trajectories: Sequence[Trajectory], prompt_ids: Sequence[list[int]] | None = None,
                   end_id: int | None = None) -> dict[str, list[Any]]:
    """TRL's ``rollout_func`` output for played episodes. An episode that failed or sampled nothing
    gets ``prompt_ids[i]`` (its rendered prompt) and one ``end_id`` token with mask 0: no loss, and
    TRL keeps one row per prompt."""
    out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [],
                                 "trajectory": []}
    for i, t in enumerate(trajectories):
        completion = t.completion_ids
        if completion:
            prompt, mask, lps = t.token_ids[:t.prompt_len], t.completion_mask, t.sampled_logprobs(fill=0.0)
        else:
            if prompt_ids is None or end_id is None:
                raise ValueError(f"episode {i} has no completion and no prompt_ids/end_id to stand in")
            prompt, completion, mask, lps = list(prompt_ids[i]), [end_id], [0], [0.0]
        out["prompt_ids"].append(list(prompt))
        out["completion_ids"].append(list(completion))
        out["env_mask"].append(list(mask))
        out["logprobs"].append(list(lps))
        out["trajectory"].append(t)
    return out


def trainer_backend(trainer: Any) -> Backend:
    """The backend a ``SpliceRollout`` uses by default (see the module docstring)."""
    args = trainer.args
    if getattr(args, "use_vllm", False):
        if getattr(args, "vllm_mode", "") != "server":
            raise ConfigError("splice rollouts reach vLLM over HTTP: use GRPOConfig(vllm_mode='server') with "
                              "`trl vllm-serve`, or pass SpliceRollout(backend=...)")
        url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
        return OpenAIBackend(url.rstrip("/") + "/v1", tokenizer=_TokenizerOf(trainer.processing_class),
                             timeout_s=float(getattr(args, "vllm_server_timeout", 240.0)))

    model = trainer.accelerator.unwrap_model(trainer.model)
    return TransformersBackend(model=model, tokenizer=trainer.processing_class)


class _TokenizerOf:
    """The openai backend's local tokenizer from the trainer's own HF tokenizer object."""

    def __init__(self, tok: Any):
        tok = getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
        self._hf = HFTokenizer.__new__(HFTokenizer)  # same methods, no loading
        self._hf.tok = tok
        self.eos_ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        self._hf.eos_ids = self.eos_ids

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self._hf.encode(text, special=special)

    def decode(self, ids: list[int], *, special: bool = False) -> str:
        return self._hf.decode(ids, special=special)

    def special_tokens(self) -> dict[int, str]:
        return self._hf.special_tokens()

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._hf.chat_prompt(messages)


class SpliceRollout:
    """A ``rollout_func`` for ``trl.GRPOTrainer``: splice episodes with real tools per prompt.

    ``tools``/``syntax`` as for ``Agent``; ``config`` a ``RuntimeConfig`` (limits, result size; its
    sampling is replaced by the trainer's ``temperature``/``top_p``/``max_completion_length``);
    ``backend(trainer) -> Backend`` (default ``trainer_backend``), made once and kept; ``concurrency``
    episodes at a time; episode ``n`` of process ``r`` uses seed ``seed + r * 10**9 + n``. Call
    ``close()`` (or use it as a context manager) to free the backend and the event loop."""

    def __init__(self, tools: Sequence[Any] = ("python",), syntax: str = "splice", *,
                 config: RuntimeConfig | None = None, backend: Callable[[Any], Backend] | None = None,
                 concurrency: int = 16, seed: int = 0):
        self.tools, self.syntax, self.config = list(tools), syntax, config or RuntimeConfig()
        self.make_backend = backend or trainer_backend
        self.concurrency, self.seed = concurrency, seed
        self.backend: Backend | None = None
        self._agent: Agent | None = None
        self.runner: asyncio.Runner | None = None
        self.n_played = 0
        self.last: list[Trajectory] = []  # the latest call's episodes, for inspection

    def agent(self, trainer: Any) -> Agent:
        """The one Agent of this rollout (its tools keep their sandbox pools across steps)."""
        if self._agent is None:
            self.backend = self.make_backend(trainer)
            args = trainer.args
            cfg = replace(self.config, temperature=float(args.temperature), top_p=float(args.top_p or 1.0),
                          max_new_tokens=int(args.max_completion_length or self.config.max_new_tokens))
            self._agent = Agent(self.backend, tools=self.tools, syntax=self.syntax, config=cfg)
        return self._agent

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        agent = self.agent(trainer)
        asks = [_question(p) for p in prompts]
        rank = int(getattr(trainer.accelerator, "process_index", 0))
        first = self.seed + rank * 10**9 + self.n_played
        self.n_played += len(asks)

        async def one(i: int) -> Trajectory:
            q, history = asks[i]
            return await agent.run(q, history, seed=first + i)

        if self.runner is None:
            self.runner = asyncio.Runner()
        model = getattr(self.backend, "model", None)
        quiet = _rollout_mode(model) if model is not None and hasattr(model, "train") else contextlib.nullcontext()
        with quiet:
            results = self.runner.run(map_bounded(one, range(len(asks)), self.concurrency))
        trajs = []
        for (q, _), r in zip(asks, results):
            if isinstance(r, Exception):
                log.warning("episode failed, trained as a masked stub: %s", r)
                r = Trajectory.failed(q, r)
            trajs.append(r)
        self.last = trajs
        prompts_ids = [agent.encode_prompt(agent.messages(q, h))[1] if not t.completion_ids else []
                       for (q, h), t in zip(asks, trajs)]
        tok = trainer.processing_class
        end = getattr(tok, "eos_token_id", None)
        end = end if end is not None else min(self.backend.eos_ids)  # type: ignore[union-attr]
        return rollout_fields(trajs, prompts_ids, end)

    def close(self) -> None:
        """Close the tools (sandboxes), the backend and the event loop."""
        agent, backend, runner = self._agent, self.backend, self.runner
        self._agent = self.backend = self.runner = None
        runner = runner or (asyncio.Runner() if agent is not None else None)
        if runner is None:
            return
        try:
            if agent is not None:
                runner.run(agent.aclose())
            if backend is not None:
                runner.run(backend.aclose())
        finally:
            runner.close()

    def __enter__(self) -> SpliceRollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rollout_mode(model: Any) -> Any:
    return rollout_mode(model)


_NO_ANSWERS = {"tool_bonus", "tool_cost"}


def trl_reward(fn: str | RewardFn, *, answers: str | None = "answer", syntax: str = "splice",
               name: str | None = None) -> Callable[..., list[float]]:
    """A splice reward function (a name in ``train.rewards.REWARDS``, or any ``fn(completions,
    answers, syntax=, trajectories=)``, e.g. ``agent.evals.metrics.accuracy_reward``) as a TRL
    reward function. TRL passes dataset columns as keywords: ``answers`` names the gold-answer
    column (None for rewards that need none); the episodes come from ``SpliceRollout``'s
    ``trajectory`` field, so rewards score the model's own final answer, never tool output."""
    if isinstance(fn, str):
        if fn not in REWARDS:
            raise ConfigError(f"unknown reward {fn!r}; choose from {', '.join(sorted(REWARDS))}")
        if fn in _NO_ANSWERS:
            answers = None
        label, fn = fn, REWARDS[fn]
    else:
        label = getattr(fn, "__name__", "reward")
    score: RewardFn = fn

    def reward(prompts: Any = None, completions: Sequence[Any] = (), completion_ids: Any = None,
               **columns: Any) -> list[float]:
        trajs = columns.get("trajectory")
        items = list(trajs) if trajs is not None else list(completions)
        if answers is None:
            gold: list[Any] = [None] * len(items)
        elif answers not in columns:
            raise ConfigError(f"reward {label}: the dataset has no {answers!r} column (TRL passes columns by name); "
                              f"name it with trl_reward(..., answers='COLUMN')")
        else:
            gold = list(columns[answers])
        return [float(x) for x in score(items, gold, syntax=syntax, trajectories=trajs)]

    reward.__name__ = reward.__qualname__ = name or label
    return reward
