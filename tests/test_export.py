"""Export: LoRA merge round-trips; GGUF model and GGUF LoRA adapter load in llama.cpp and agree with HF."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from train.export import ExportConfig, export, load_trained, write_gguf, write_lora_gguf  # noqa: E402
from train.sft import SFTConfig, train_sft  # noqa: E402

PROMPT_IDS = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]


def _rows(n: int = 8) -> list[dict]:
    parts = lambda i: [{"type": "text", "text": f"Sum {i}.\n"},  # noqa: E731
                       {"type": "call", "tool": "python", "arg": f"print({i}+{i})"},
                       {"type": "result", "text": f"{2 * i}\n"}, {"type": "answer", "text": str(2 * i)}]
    return [{"id": f"x{i}", "tools": ["python"], "messages": [{"role": "user", "content": f"{i}+{i}?"},
             {"role": "assistant", "content": parts(i)}]} for i in range(n)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    train_sft(SFTConfig(model=str(tiny_model_dir), output_dir=str(out), tools=["python"], batch_size=2, max_steps=8,
                        lr=2e-2, warmup_steps=1, eval_fraction=0.0, eval_every=0, save_every=0, progress=False,
                        lora_r=4, lora_alpha=8, threads=1, precision="fp32"), _rows())
    return out


def _hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([PROMPT_IDS])).logits[0].float().numpy()


def _llama_logits(path, lora=None) -> np.ndarray:
    pytest.importorskip("llama_cpp")
    from agent.backends.llama_cpp import load_llama

    llm = load_llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False,
                     lora_path=str(lora) if lora else None, n_threads=1)
    llm.eval(PROMPT_IDS)
    out = np.array(llm.scores[: len(PROMPT_IDS)])
    llm.close()
    return out


def test_lora_merge_round_trips(trained):
    model, _, is_lora = load_trained(trained)
    assert is_lora
    lora_logits = _hf_logits(model)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    merged = model.merge_and_unload()
    np.testing.assert_allclose(_hf_logits(merged), lora_logits, rtol=1e-4, atol=1e-4)


def test_export_writes_hf_and_gguf_that_llama_cpp_runs(trained, tmp_path):
    done = export(ExportConfig(src=str(trained), out=str(tmp_path / "m"), dtype="f32"))
    from agent.backends.transformers import load_hf

    hf, tok = load_hf(tmp_path / "m", device="cpu", dtype="float32")
    ref = _hf_logits(hf)
    np.testing.assert_allclose(_llama_logits(done["gguf"]), ref, rtol=2e-3, atol=2e-3)
    pytest.importorskip("llama_cpp")
    from agent.backends.llama_cpp import load_llama

    llm = load_llama(model_path=done["gguf"], n_ctx=64, verbose=False, n_threads=1)
    assert llm.tokenize(b"print(2+2)", add_bos=False) == tok("print(2+2)", add_special_tokens=False)["input_ids"]
    out = llm.create_completion("Let me compute", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
    llm.close()


def test_f16_gguf_generates(tiny_model_dir, tmp_path):
    from agent.backends.transformers import load_hf

    model, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    path = write_gguf(model, tok, tmp_path / "tiny-f16.gguf", dtype="f16")
    np.testing.assert_allclose(_llama_logits(path), _hf_logits(model), rtol=2e-2, atol=2e-2)


def test_gguf_lora_adapter_matches_peft(trained, tiny_model_dir, tmp_path):
    from agent.backends.transformers import load_hf

    base, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    base_gguf = write_gguf(base, tok, tmp_path / "base.gguf", dtype="f32")
    model, _, _ = load_trained(trained)
    adapter = write_lora_gguf(model, tmp_path / "adapter.gguf", dtype="f32")
    want = _hf_logits(model)
    assert not np.allclose(_hf_logits(base), want, atol=1e-3)  # the adapter matters
    np.testing.assert_allclose(_llama_logits(base_gguf, lora=adapter), want, rtol=2e-3, atol=2e-3)


def test_gguf_adapter_of_the_top_layers_only_matches_peft(tiny_model_dir, tmp_path):
    """``--lora-layers``: an adapter on part of the layers exports and applies in llama.cpp as in HF."""
    from agent.backends.transformers import load_hf

    train_sft(SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "sft"), tools=["python"], batch_size=2,
                        max_steps=8, lr=2e-2, warmup_steps=1, eval_fraction=0.0, eval_every=0, save_every=0,
                        progress=False, lora_r=4, lora_alpha=8, lora_layers=1, threads=1, precision="fp32"), _rows())
    base, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    base_gguf = write_gguf(base, tok, tmp_path / "base.gguf", dtype="f32")
    model, _, _ = load_trained(tmp_path / "sft")
    adapter = write_lora_gguf(model, tmp_path / "adapter.gguf", dtype="f32")
    want = _hf_logits(model)
    assert not np.allclose(_hf_logits(base), want, atol=1e-3)
    np.testing.assert_allclose(_llama_logits(base_gguf, lora=adapter), want, rtol=2e-3, atol=2e-3)


def test_f16_gguf_lora_adapter_loads_and_is_small(trained, tiny_model_dir, tmp_path):
    from agent.backends.transformers import load_hf

    base, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    base_gguf = write_gguf(base, tok, tmp_path / "base.gguf", dtype="f32")
    model, _, _ = load_trained(trained)
    f32 = write_lora_gguf(model, tmp_path / "a32.gguf", dtype="f32")
    f16 = write_lora_gguf(model, tmp_path / "a16.gguf", dtype="f16")
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    np.testing.assert_allclose(_llama_logits(base_gguf, lora=f16), _hf_logits(model), rtol=1e-2, atol=1e-2)
