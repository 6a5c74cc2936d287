"""The default model's weights as llama.cpp runs them: a Q8_0 copy of the shipped Q4_1 file, made
once into splice's cache (``agent.backends.llama_cpp.requantized``, ``BackendConfig.weights``)."""

import logging
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from agent.backends import (  # noqa: E402
    BackendConfig,
    _merged,
    _weights,
    default_model_path,
    load_backend,
    lora_merge,  # noqa: E402
    shipped_adapter,
)
from agent.backends.llama_cpp import load_llama, merged, requantized  # noqa: E402
from agent.cli import build_parser  # noqa: E402
from agent.config import from_args  # noqa: E402
from agent.errors import ConfigError, ModelError  # noqa: E402
from agent.runtime import RuntimeConfig  # noqa: E402

Q8_0 = "7"  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0, as GGUF's general.file_type
PROMPT = ("<|im_start|>user\nHow many r's are in strawberry? Count with code.<|im_end|>\n"
          "<|im_start|>assistant\nword = 'strawberry'\nprint(word.count('r'))")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPLICE_CACHE", str(root))
    return root


def _file_type(path) -> str:
    llm = load_llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    try:
        return llm.metadata["general.file_type"]
    finally:
        llm.close()


def test_the_copy_is_q8_0_made_once_and_follows_its_source(cache, tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copy(default_model_path(), src)
    q8 = requantized(src)
    assert q8.is_relative_to(cache) and q8.name == "model.q8_0.gguf"
    assert _file_type(q8) == Q8_0 and _file_type(src) != Q8_0
    made = q8.stat().st_mtime_ns
    assert requantized(src) == q8 and q8.stat().st_mtime_ns == made  # reused, not rewritten
    assert [p.name for p in q8.parent.iterdir()] == [q8.name]  # no temporary file left
    os.utime(src, ns=(made + 10**9, made + 10**9))  # the source changed: a new copy
    again = requantized(src)
    assert again != q8 and again.is_file()


def test_concurrent_first_uses_get_one_whole_file(cache):
    got, errors = [], []

    def use():
        try:
            got.append(requantized(default_model_path()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1
    assert _file_type(got[0]) == Q8_0
    assert sorted(p.name for p in got[0].parent.iterdir()) == [got[0].name]


def test_the_copy_is_the_same_model(cache):
    """Teacher-forced on one prompt, the Q8_0 copy predicts the Q4_1 file's next token almost
    everywhere (0.93 measured; a wrong conversion, e.g. to 2 bits, falls far below)."""
    rows = {}
    for name, path in (("q4_1", default_model_path()), ("q8_0", requantized(default_model_path()))):
        llm = load_llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
        try:
            ids = llm.tokenize(PROMPT.encode(), special=True)
            llm.eval(ids)
            rows[name] = np.array(llm.scores[: len(ids)])
        finally:
            llm.close()
    agree = (rows["q4_1"].argmax(1) == rows["q8_0"].argmax(1)).mean()
    assert agree >= 0.85, agree


async def test_default_and_base_run_the_copy_other_files_and_as_is_do_not(cache):
    for model, cfg, want in [
        ("default", BackendConfig(), "SmolLM2-135M-Instruct.Q4_1+smollm2-tools.q8_0.gguf"),  # merged, no LoRA
        ("base", BackendConfig(adapter=str(shipped_adapter())), "SmolLM2-135M-Instruct.Q4_1+smollm2-tools.q8_0.gguf"),
        ("base", BackendConfig(), "SmolLM2-135M-Instruct.Q4_1.q8_0.gguf"),
        ("default", BackendConfig(weights="as-is"), "SmolLM2-135M-Instruct.Q4_1.gguf+smollm2-tools.gguf"),
        (str(default_model_path()), BackendConfig(), "SmolLM2-135M-Instruct.Q4_1.gguf"),  # a user's own file
        (str(default_model_path()), BackendConfig(weights="q8_0"), "SmolLM2-135M-Instruct.Q4_1.q8_0.gguf"),
    ]:
        backend = load_backend(model, cfg)
        try:
            assert backend.model_id == want, (model, cfg.weights)
        finally:
            await backend.aclose()


CALL = ("<|im_start|>user\nHow many r's are in strawberry?<|im_end|>\n<|im_start|>assistant\nI'll count with "
        "Python.\n<code_start>text = \"strawberry\"\nprint(text.count(\"r\"))<code_end>")


def _scores(path, lora=None) -> np.ndarray:
    llm = load_llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False,
                     lora_path=str(lora) if lora else None)
    try:
        ids = llm.tokenize(CALL.encode(), special=True)
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def test_the_merged_copy_is_the_model_with_its_adapter(cache):
    """Teacher-forced, the copy with the shipped adapter folded in predicts what llama.cpp's run-time
    adapter predicts (measured: same next token at 0.96 of positions, mean logit gap 0.29), while the
    bare weights are far from both (0.50, 6.6): the whole delta is in, at llama.cpp's scale."""
    copy = requantized(default_model_path())
    want = _scores(copy, shipped_adapter())
    got = _scores(merged(default_model_path(), shipped_adapter()))
    bare = _scores(copy)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert np.abs(got - want).mean() < 1.0
    assert np.abs(bare - want).mean() > 3.0  # the adapter matters on this text: the check can fail


def test_both_ways_of_merging_write_the_same_model(tmp_path, monkeypatch):
    """llama.cpp's C library writes the merged copy (the fast way, taken for the default model);
    without it the gguf package writes it: the same metadata and the same bytes in every tensor."""
    gguf = pytest.importorskip("gguf")
    fast, slow = tmp_path / "fast.gguf", tmp_path / "slow.gguf"
    assert lora_merge.write_merged(default_model_path(), shipped_adapter(), fast, "q8_0") == "ggml"
    monkeypatch.setattr(lora_merge, "_ggml", lambda: None)
    assert lora_merge.write_merged(default_model_path(), shipped_adapter(), slow, "q8_0") == "gguf"
    a, b = gguf.GGUFReader(str(fast)), gguf.GGUFReader(str(slow))
    fields = sorted(k for k in a.fields if not k.startswith("GGUF."))
    assert fields == sorted(k for k in b.fields if not k.startswith("GGUF."))
    assert all(a.fields[k].contents() == b.fields[k].contents() for k in fields)
    assert a.fields["splice.merged_adapter"].contents() == "smollm2-tools.gguf"
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a.tensors, b.tensors))
    # merged - base is the adapter's alpha / r * B @ A (to within the quantization): slope of one
    base = {t.name: t for t in gguf.GGUFReader(str(default_model_path())).tensors}
    lora_file = gguf.GGUFReader(str(shipped_adapter()))
    lora = {t.name: np.asarray(t.data, np.float32) for t in lora_file.tensors}
    scale = float(lora_file.fields["adapter.lora.alpha"].contents()) / lora["blk.0.attn_q.weight.lora_a"].shape[0]
    slopes = []
    for t in [t for t in a.tensors if f"{t.name}.lora_a" in lora][:24]:
        moved = (gguf.quants.dequantize(t.data, t.tensor_type)
                 - gguf.quants.dequantize(base[t.name].data, base[t.name].tensor_type)).ravel()
        want = (scale * lora[f"{t.name}.lora_b"] @ lora[f"{t.name}.lora_a"]).ravel()
        slopes.append(moved @ want / (want @ want))
    assert 0.85 < np.median(slopes) < 1.15, slopes


def test_the_merged_copy_is_made_once_and_follows_its_adapter(cache, tmp_path):
    adapter = tmp_path / "tools.gguf"
    shutil.copy(shipped_adapter(), adapter)
    out = merged(default_model_path(), adapter)
    assert out.is_relative_to(cache) and out.name == "SmolLM2-135M-Instruct.Q4_1+tools.q8_0.gguf"
    assert _file_type(out) == Q8_0
    made = out.stat().st_mtime_ns
    assert merged(default_model_path(), adapter) == out and out.stat().st_mtime_ns == made  # reused
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left
    os.utime(adapter, ns=(made + 10**9, made + 10**9))  # a retrained adapter: a new copy
    again = merged(default_model_path(), adapter)
    assert again != out and again.is_file()


async def test_a_first_run_of_the_default_model_makes_only_the_merged_copy(cache):
    """The merged copy is made from the Q4_1 file itself: no Q8_0 copy of the base on the way."""
    backend = load_backend("default", BackendConfig())
    await backend.aclose()
    assert [p.name for p in cache.rglob("*.gguf")] == [merged(default_model_path(), shipped_adapter()).name]


def test_a_merge_that_cannot_be_made_falls_back_to_the_run_time_adapter(cache, tmp_path, caplog):
    src, copy = default_model_path(), requantized(default_model_path())
    not_lora = tmp_path / "not-lora.gguf"
    shutil.copy(copy, not_lora)  # a GGUF, but a model, not an adapter
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        merged(src, not_lora)
    with caplog.at_level(logging.WARNING, logger="splice.backends"):
        assert _merged(src, not_lora, "default", BackendConfig()) == (copy, not_lora)
    assert "merged copy could not be made" in caplog.text
    assert _merged(src, shipped_adapter(), "default", BackendConfig(weights="as-is")) == (src, shipped_adapter())


def test_a_copy_that_cannot_be_made_falls_back_or_fails_clearly(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("SPLICE_CACHE", str(blocker))  # the cache cannot be created
    src = default_model_path()
    with caplog.at_level(logging.WARNING, logger="splice.backends"):
        assert _weights(src, "default", BackendConfig()) == src  # auto: run the file as is
    assert "could not be made" in caplog.text
    with pytest.raises(ModelError, match="could not requantize"):
        _weights(src, "default", BackendConfig(weights="q8_0"))  # asked for: say so


def _bad_adapters(tmp_path):
    gguf = pytest.importorskip("gguf")
    trunc, garbage, wrong = tmp_path / "trunc.gguf", tmp_path / "garbage.gguf", tmp_path / "wrong.gguf"
    trunc.write_bytes(shipped_adapter().read_bytes()[:5000])
    garbage.write_bytes(b"not a gguf at all\n" * 10)
    w = gguf.GGUFWriter(str(wrong), arch="llama")  # a LoRA of another model: rows of 100, not 576
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 100), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.ones((576, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [(trunc, "is not a readable GGUF file"), (garbage, "is not a readable GGUF file"),
            (wrong, "does not fit SmolLM2-135M-Instruct.Q4_1.gguf: blk.0.attn_q.weight is (576, 576)")]


@pytest.mark.parametrize("weights", ["auto", "as-is"])
def test_a_bad_adapter_is_a_clear_error_before_llama_cpp_sees_it(tmp_path, weights):
    """llama.cpp's adapter loader kills the process (SIGSEGV) on a truncated adapter or one of
    another model; the CLI must stop before it with one line (run in a subprocess so a crash shows
    as a return code here instead of ending the test run)."""
    env = {**os.environ, "SPLICE_CACHE": str(tmp_path / "cache")}
    for adapter, why in _bad_adapters(tmp_path):
        out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "Hi", "--tools", "none", "--model", "base",
                              "--adapter", str(adapter), "--weights", weights], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and why in out.stderr and "Traceback" not in out.stderr, (out.returncode,
                                                                                              out.stderr[-500:])


def test_the_flag_and_its_check():
    cfg = from_args(RuntimeConfig, build_parser().parse_args(["run", "q", "--weights", "as-is"]))
    assert cfg.llm.weights == "as-is"
    with pytest.raises(ConfigError, match="unknown weights"):
        BackendConfig(weights="q4_0")
