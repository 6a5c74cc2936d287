"""Shared fixtures.

``tiny_model_dir``: a tiny randomly initialised ``LlamaForCausalLM`` (2 layers, hidden 64, tied
embeddings) with a small byte-level BPE tokenizer trained here, offline, and a ChatML chat template
(the SmolLM2 one). Built once per test session; tests that train should copy it, not write into it.

Hermetic by construction: every run gets its own ``SPLICE_CACHE`` (dequantised GGUF models and other
project caches) under pytest's temp dir, and the Hugging Face hub is offline, so nothing a previous
run or another session left on the machine can change an outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up this run's basetemp
def pytest_configure(config: pytest.Config) -> None:
    base = config._tmp_path_factory.getbasetemp()  # noqa: SLF001 - pytest's own per-run temp root
    os.environ["SPLICE_CACHE"] = str(base / "splice-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = ("the of and to in is was for on that with as by at from his her it an were are which this "
             "be has had or one first new who they also their after its two but been other when there "
             "compute print result answer search python code count letters how many what where year "
             "question number sum product total let me use tool find name city river born").split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 3)]
    lines += ["print(12 * 34 + 5)", "x = [1, 2, 3]\nprint(len(x))", "<code_start>print(2+2)<code_end>",
              "<search_start>capital of France<search_end>", "<result_start>\n4\n<result_end>",
              "<answer_start>42<answer_end>", "0123456789 +-*/=()[]{}<>_.,:;'\"!?#$%&@^|~`\\"]
    return lines * 20


def build_tiny_model(out: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
