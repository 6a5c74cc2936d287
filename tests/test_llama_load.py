"""Loading a GGUF with llama.cpp: the extra CPU buffers (AMX) stay off where they are not safe."""

from __future__ import annotations

import pytest

from agent.backends import default_model_path
from agent.backends.llama_cpp import extra_buffers_allowed, load_llama


def _cpuinfo(tmp_path, flags: str):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return p


def test_amx_cpus_keep_extra_buffers_off_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLICE_LLAMA_EXTRA_BUFTS", raising=False)
    assert not extra_buffers_allowed(_cpuinfo(tmp_path, "amx_bf16 amx_tile amx_int8"))
    assert extra_buffers_allowed(_cpuinfo(tmp_path, "avx512f"))
    assert extra_buffers_allowed(tmp_path / "missing")
    monkeypatch.setenv("SPLICE_LLAMA_EXTRA_BUFTS", "1")
    assert extra_buffers_allowed(_cpuinfo(tmp_path, "amx_tile"))
    monkeypatch.setenv("SPLICE_LLAMA_EXTRA_BUFTS", "0")
    assert not extra_buffers_allowed(_cpuinfo(tmp_path, "avx512f"))


def test_load_llama_turns_extra_buffers_off_and_restores_the_defaults(monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setenv("SPLICE_LLAMA_EXTRA_BUFTS", "0")
    llm = load_llama(model_path=str(default_model_path()), n_ctx=256, n_batch=64, verbose=False)
    try:
        assert llm.model_params.use_extra_bufts is False
        assert llama_cpp.llama.llama_cpp.llama_model_default_params().use_extra_bufts is True  # not leaked
        ids = llm.tokenize(b"A prompt of several tokens, evaluated as one batch. " * 4)
        llm.eval(ids)  # a multi-token batch: where AMX traps, this is what died with SIGILL
        assert llm.n_tokens == len(ids)
    finally:
        llm.close()
