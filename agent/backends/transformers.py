"""transformers backend: a HF model directory or a GGUF file, on CPU or GPU, one sequence at a time.

Each sequence keeps its own ``DynamicCache``; a continuation after a splice runs the model only on
the tokens the cache has not seen (the spliced result), never on the whole context again. A GGUF
file is dequantised once and saved as safetensors under ``~/.cache/splice`` so later loads are fast.
Each sampled token's log-prob (log-softmax of the raw logits, before temperature/top-k/top-p) goes to
``Sequence.logprobs``.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import ModelThread, SamplingParams, Sequence, TokenizedBackend, common_prefix
from agent.backends.models import cache_path
from agent.backends.sampling import make_rng, sample_token
from agent.backends.tokenizer import HFTokenizer
from agent.errors import ModelError, ModelNotFound, require

__all__ = ["TransformersBackend", "load_hf", "gguf_to_hf_dir", "cache_kwarg"]


def gguf_to_hf_dir(gguf: Path) -> Path:
    """Dequantise a GGUF file into a HF model dir once (keyed by file name, size and mtime)."""
    transformers = require("transformers", "torch")
    out = cache_path(gguf, "hf")
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the weights are already dequantised to fp32; drop the GGUF marker so they can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def load_hf(path: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a HF dir or a GGUF file."""
    torch = require("torch", "torch")
    transformers = require("transformers", "torch")
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model not found: {path}")
    if path.suffix == ".gguf":
        path = gguf_to_hf_dir(path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        tdtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        tdtype = getattr(torch, dtype)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=tdtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"transformers could not load {path}: {e}") from e
    return model.to(device).eval(), tok


def cache_kwarg(model: Any) -> str:
    """The forward keyword that takes a KV ``Cache`` object: ``cache`` in current transformers,
    ``past_key_values`` (deprecated there, with a FutureWarning) in older ones. Callers pass their
    own ``DynamicCache``, which the model fills in place, so no cache is read back from outputs."""
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # peft passes keywords through to the base model
        model = model.get_base_model()
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class _State:
    cache: Any = None
    cached_ids: list[int] = field(default_factory=list)
    rng: np.random.Generator | None = None
    logprobs: np.ndarray | None = None  # log-softmax of the last forward's logits (temperature 1)


class TransformersBackend(TokenizedBackend):
    name = "transformers"

    def __init__(self, path: str | Path | None = None, device: str = "auto", *, model: Any = None,
                 tokenizer: Any = None, dtype: str = "auto"):
        self.torch = require("torch", "torch")
        if model is None:
            if path is None:
                raise ModelError("TransformersBackend needs a path or a model and tokenizer")
            model, tokenizer = load_hf(path, device, dtype)
        self.model, self.tokenizer = model, tokenizer
        self.model_id = str(path) if path else getattr(model.config, "_name_or_path", "model")
        self.device = next(model.parameters()).device
        self.context_size = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self._eos = eos
        self.tok = HFTokenizer(tokenizer, eos)
        self._lock = threading.Lock()  # one forward at a time on this model
        self._thread = ModelThread("splice-torch")  # every forward runs here (torch's thread team)
        self._cache_kw = cache_kwarg(model)
        self.n_evaluated = 0

    # -- generation -----------------------------------------------------------------------------
    def _forward(self, st: _State, ids: list[int]) -> np.ndarray:
        torch = self.torch
        from transformers import DynamicCache

        keep = min(common_prefix(st.cached_ids, ids), len(ids) - 1)
        if st.cache is None:
            st.cache = DynamicCache()
        if keep < len(st.cached_ids):
            st.cache.crop(keep - st.cache.get_seq_length())  # negative: tokens to drop (transformers 4 and 5)
            st.cached_ids = st.cached_ids[:keep]
        new = ids[keep:]
        with self._lock, torch.inference_mode():
            inp = torch.tensor([new], device=self.device)
            out = self.model(input_ids=inp, use_cache=True, **{self._cache_kw: st.cache})  # filled in place
            row = out.logits[0, -1].float()
            st.logprobs = torch.log_softmax(row, -1).cpu().numpy()
        st.cached_ids = list(ids)
        self.n_evaluated += len(new)
        return row.cpu().numpy()

    def _step(self, seq: Sequence, params: SamplingParams, first: bool) -> int:
        st: _State = seq.state
        before = self.n_evaluated
        logits = self._forward(st, seq.ids)
        if first:  # prefill of this stream call; later steps are one-token decodes
            seq.n_prefilled += self.n_evaluated - before
        return sample_token(logits, params, st.rng)  # type: ignore[arg-type]

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        seq.ids.extend(append)
        if seq.state is None:
            seq.state = _State(rng=make_rng(seq.seed))
        seq.n_cached += common_prefix(seq.state.cached_ids, seq.ids)
        for i in range(min(params.max_tokens, self.context_size - len(seq.ids))):
            tok = await self._thread.run(self._step, seq, params, i == 0)
            lp = seq.state.logprobs
            seq.record(tok, float(lp[tok]) if lp is not None else float("nan"))
            yield tok
            if tok in self._eos:
                return

    async def release(self, seq: Sequence) -> None:
        seq.state = None

    async def aclose(self) -> None:
        self.model = None
        self._thread.shutdown(wait=False)
