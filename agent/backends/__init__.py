"""Model backends behind one async interface, and the loader that picks one.

``--backend auto`` decides in this order (explicit settings before the environment, a model that
exists on this machine before a server):

1. ``--model`` is an ``http://`` or ``https://`` URL: ``openai`` (that server).
2. ``--base-url`` is given: ``openai`` (``--model`` names the served model; ``default`` = the
   server's own).
3. ``--model`` is ``default`` or an existing path: ``llama_cpp`` for a ``.gguf`` file, else
   ``transformers`` (a Hugging Face model folder).
   ``OPENAI_BASE_URL`` in the environment does not change this, so a variable set for other tools
   never sends ``agent run`` to a server by surprise.
4. ``--model`` is any other name and ``OPENAI_BASE_URL`` is set: ``openai`` (the name is the served
   model). Otherwise the model is not found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.backends.base import Backend, SamplingParams, Sequence, common_prefix
from agent.backends.config import BackendConfig
from agent.backends.models import (
    ADAPTER_DIR,
    DEFAULT_GGUF,
    SHIPPED_ADAPTER,
    default_model_path,
    resolve_model,
    shipped_adapter,
)
from agent.backends.scripted import ScriptedBackend
from agent.errors import ConfigError, MissingDependency, ModelError, ModelNotFound

log = logging.getLogger("splice.backends")

__all__ = ["Backend", "BackendConfig", "SamplingParams", "Sequence", "ScriptedBackend", "common_prefix",
           "load_backend", "default_model_path", "resolve_model", "choose_backend", "shipped_adapter",
           "ADAPTER_DIR", "DEFAULT_GGUF", "SHIPPED_ADAPTER"]


def choose_backend(model: str, cfg: BackendConfig, env: Mapping[str, str] | None = None) -> str:
    """The backend ``cfg.backend`` names, with ``auto`` resolved as the module docstring says."""
    if cfg.backend != "auto":
        return cfg.backend
    env = os.environ if env is None else env
    if model.startswith(("http://", "https://")) or cfg.base_url:
        return "openai"
    if model not in ("default", "base") and not Path(model).expanduser().exists() and env.get("OPENAI_BASE_URL"):
        return "openai"
    return "llama_cpp" if resolve_model(model).suffix == ".gguf" else "transformers"


def load_backend(model: str, cfg: BackendConfig | None = None, *, syntax: str = "splice",
                 tools: Iterable[str] = ()) -> Backend:
    """The backend for ``model`` (``"default"``, a path, a URL or a served name). ``syntax`` and
    ``tools`` give a server backend its stop tags."""
    cfg = cfg or BackendConfig()
    kind = choose_backend(model, cfg)
    # Each backend module is imported only when chosen: they pull in llama_cpp, torch or httpx.
    if kind == "openai":
        from agent.backends.openai import OpenAIBackend  # lazy: heavy (httpx, the llama.cpp vocab reader)

        return OpenAIBackend.from_config(model, cfg, syntax=syntax, tools=list(tools))
    path = resolve_model(model)
    if kind == "llama_cpp":
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if not ggufs:
                raise ModelNotFound(f"no .gguf file in {path}; use --backend transformers for a HF model dir")
            path = ggufs[0]
        from agent.backends.llama_cpp import LlamaCppBackend  # lazy: heavy (llama_cpp)

        adapter = _adapter(model, cfg)
        if adapter is not None and cfg.adapter:  # a user's adapter, checked before llama.cpp sees it:
            from agent.backends.lora_merge import check_adapter  # lazy: heavy (gguf); llama.cpp crashes on a bad one

            try:
                check_adapter(path, adapter)
            except ValueError as e:
                raise ModelError(f"adapter {cfg.adapter}: {e}") from e
        weights, adapter = _merged(path, adapter, model, cfg)
        return LlamaCppBackend(weights, n_ctx=cfg.n_ctx, adapter=adapter, n_seq=cfg.n_seq)
    if cfg.adapter not in ("", "none") or (model == "default" and shipped_adapter() is not None):
        raise ConfigError(f"a LoRA adapter GGUF runs on the llama_cpp backend only (got --backend {kind}); "
                          "use --model base for the default model without its adapter")
    if kind == "transformers":
        from agent.backends.transformers import TransformersBackend  # lazy: heavy (torch, transformers)

        return TransformersBackend(path, device=cfg.device)
    from agent.backends.batched import BatchedTransformersBackend  # lazy: heavy (torch, transformers)

    return BatchedTransformersBackend(path, device=cfg.device, max_batch=cfg.max_batch, max_len=cfg.n_ctx)


def _weights(path: Path, model: str, cfg: BackendConfig) -> Path:
    """The GGUF to load: ``path``, or its cached requantized copy (``--weights``; ``auto`` = Q8_0
    for the embedded default model only, where it was measured: llama_cpp.requantized). A copy that
    cannot be made (disk full, read-only cache) falls back to ``path`` with a warning."""
    fmt = _format(model, cfg)
    if fmt == "as-is":
        return path
    from agent.backends.llama_cpp import requantized  # lazy: heavy (llama_cpp)

    try:
        return requantized(path, fmt)
    except (OSError, RuntimeError) as e:
        if cfg.weights != "auto":
            raise ModelError(f"could not requantize {path.name} to {fmt}: {e}") from e
        log.warning("running %s as is: its %s copy could not be made (%s)", path.name, fmt, e)
        return path


def _format(model: str, cfg: BackendConfig) -> str:
    return ("q8_0" if model in ("default", "base") else "as-is") if cfg.weights == "auto" else cfg.weights


def _merged(path: Path, adapter: Path | None, model: str, cfg: BackendConfig) -> tuple[Path, Path | None]:
    """(weights, adapter) to load. Where the weights would be a requantized copy (``--weights auto``
    on the default model, or ``q8_0``) and an adapter is set: a cached copy with the adapter folded in
    (``llama_cpp.merged``, made straight from ``path``) and no run-time adapter, since llama.cpp's
    unmerged LoRA costs a third of the decode speed. Otherwise, or when that copy cannot be made
    (with a warning), ``_weights`` and the adapter applied at run time; ``--weights as-is`` keeps
    the adapter at run time."""
    fmt = _format(model, cfg)
    if adapter is not None and fmt != "as-is":
        from agent.backends.llama_cpp import merged  # lazy: heavy (llama_cpp, gguf)

        try:
            return merged(path, adapter, fmt), None
        except (OSError, ModelError, MissingDependency) as e:
            log.warning("applying %s at run time (slower decode): its merged copy could not be made (%s)",
                        adapter.name, e)
    return _weights(path, model, cfg), adapter


def _adapter(model: str, cfg: BackendConfig) -> Path | None:
    """``--adapter`` if given ('none': no adapter), else the shipped one for ``--model default``."""
    if cfg.adapter == "none":
        return None
    if cfg.adapter:
        p = Path(cfg.adapter).expanduser()
        if not p.is_file():
            raise ModelNotFound(f"adapter not found: {cfg.adapter} (give a LoRA adapter .gguf file)")
        return p
    return shipped_adapter() if model == "default" else None
