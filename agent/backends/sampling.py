"""Token sampling from a logits row (numpy), shared by the single-sequence backends."""

from __future__ import annotations

import numpy as np

from agent.backends.base import SamplingParams

__all__ = ["sample_token", "make_rng"]


def make_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy when temperature is 0, else temperature + top-k + top-p (nucleus) sampling; never a
    ``params.banned`` id."""
    if params.banned:
        logits = logits.copy()  # a backend's buffer (llama.cpp's logits) stays as the model wrote it
        logits[list(params.banned)] = -np.inf
    if params.greedy:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))
