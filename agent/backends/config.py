"""``BackendConfig``: how a model is loaded and served (which backend, context, batching, server).

What model to run is ``RuntimeConfig.model``; everything about *how* lives here, so a backend never
needs the runtime's config. ``RuntimeConfig.llm`` holds one; its fields are top-level CLI flags
(``--backend``, ``--n-ctx``, ``--n-seq`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import ConfigError

__all__ = ["BackendConfig", "BACKENDS", "WEIGHTS"]

BACKENDS = ("auto", "llama_cpp", "transformers", "batched", "openai")
WEIGHTS = ("auto", "as-is", "q8_0")


@dataclass
class BackendConfig:
    backend: str = field(default="auto", metadata={"help": " | ".join(BACKENDS)})
    adapter: str = field(default="", metadata={
        "help": "llama_cpp: a LoRA adapter GGUF applied over the model (default: the shipped one for "
                "--model default; 'none' for no adapter)"})
    device: str = field(default="auto", metadata={"help": "transformers device: auto | cpu | cuda"})
    n_ctx: int = field(default=4096, metadata={"help": "context size (llama.cpp n_ctx; batched slot length)"})
    weights: str = field(default="auto", metadata={
        "help": "llama_cpp weight format: auto (the default model runs from a cached Q8_0 copy of its Q4_1 "
                "file: same decode speed, faster batches) | as-is | q8_0"})
    n_seq: int = field(default=1, metadata={"help": "llama_cpp: concurrent episodes decoded in one batch (n_ctx each)"})
    max_batch: int = field(default=8, metadata={"help": "batched backend: concurrent sequences (slots)"})
    base_url: str = field(default="", metadata={"help": "openai backend: server URL when --model is a model name "
                          "(else OPENAI_BASE_URL)"})
    api_key: str = field(default="", metadata={"help": "openai backend: API key (else OPENAI_API_KEY)"})
    tokenizer: str = field(default="", metadata={"help": "openai backend: local tokenizer: 'default', a .gguf or "
                           "a HF dir"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"unknown weights {self.weights!r}; choose {', '.join(WEIGHTS)}")
        for name in ("n_ctx", "n_seq", "max_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
