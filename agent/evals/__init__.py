"""Tool-augmented evaluation: datasets and task generators, metrics and rewards, the eval runner,
summaries and reports. ``run_eval(EvalConfig(data="gen:arith", modes=["none", "python"]))``.

``agent.evals.metrics`` (rewards) and ``agent.evals.tasks`` (generators) are light and are meant to
be imported by training code too; plotting and HTML are loaded only when a report is written.
"""

from agent.evals.config import EvalConfig, mode_name, parse_mode
from agent.evals.data import Example, FieldNames, detect_format, load_examples
from agent.evals.metrics import (
    accuracy_reward,
    exact_match,
    exact_match_reward,
    f1_reward,
    is_correct,
    is_refusal,
    majority_vote,
    normalize_answer,
    pass_at_k,
    token_f1,
)
from agent.evals.runner import evaluate, load_episodes, run_eval
from agent.evals.summary import compare, summarize
from agent.evals.tasks import FAMILIES, generate, generate_mix

__all__ = [
    "FAMILIES",
    "EvalConfig",
    "Example",
    "FieldNames",
    "accuracy_reward",
    "compare",
    "detect_format",
    "evaluate",
    "exact_match",
    "exact_match_reward",
    "f1_reward",
    "generate",
    "generate_mix",
    "is_correct",
    "is_refusal",
    "load_episodes",
    "load_examples",
    "majority_vote",
    "mode_name",
    "normalize_answer",
    "parse_mode",
    "pass_at_k",
    "run_eval",
    "summarize",
    "token_f1",
]
