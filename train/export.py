"""Export a trained model: merge LoRA into a HF model, and write GGUF for the llama.cpp backend.

    agent train export --src out/sft --out out/model            # merged HF model + model-f16.gguf
    agent train export --src out/sft --out out/model --adapter-gguf out/tools-lora.gguf --no-gguf

``out/`` then holds a HF model (``--backend transformers``) and a GGUF file (``--backend llama_cpp``
picks the first ``*.gguf`` in a dir). The GGUF writer covers Llama-architecture models (SmolLM2 is
``LlamaForCausalLM``): F32/F16 tensors, Q/K rows permuted to llama.cpp's rotary layout, and the
byte-level BPE tokenizer (tokens, types, merges, special ids, chat template). A LoRA adapter can
instead be written as a GGUF adapter (``general.type=adapter``) that llama.cpp applies to the base
GGUF at load time (``lora_path``); that needs an unchanged vocabulary (no added tag tokens).

``to_hf_dataset`` writes SFT data (``agent train data`` output) as a ``datasets.Dataset`` with
``input_ids``/``labels`` for TRL's ``SFTTrainer`` (see docs/trl.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends import resolve_model
from agent.backends.transformers import gguf_to_hf_dir, load_hf
from agent.errors import ConfigError, ModelError, require
from train.data import read_jsonl
from train.render import ChatRenderer

__all__ = ["DatasetConfig", "ExportConfig", "adapter_dir", "export", "export_dataset", "load_trained", "merge_lora",
           "write_gguf", "write_lora_gguf", "hf_to_gguf_name", "to_hf_dataset"]

log = logging.getLogger("splice.train.export")


@dataclass
class ExportConfig:
    src: str = field(default="out/sft", metadata={"help": "sft output dir, or its adapter/ or model/ dir"})
    out: str = field(default="out/model", metadata={"help": "dir for the merged HF model and its GGUF"})
    base: str = field(default="", metadata={"help": "base model of a LoRA adapter (default: its training base)"})
    gguf: bool = field(default=True, metadata={"help": "write OUT/model-<dtype>.gguf"})
    dtype: str = field(default="f16", metadata={"help": "GGUF tensor type (model and adapter): f32 | f16"})
    adapter_gguf: str = field(default="", metadata={"help": "also write the LoRA adapter as a GGUF adapter here"})
    pre: str = field(default="auto", metadata={"help": "llama.cpp pre-tokenizer name (auto: from tokenizer.json)"})

    def __post_init__(self) -> None:
        if self.dtype not in ("f32", "f16"):
            raise ConfigError(f"--dtype must be f32 or f16 (got {self.dtype!r})")


# -- loading and merging ------------------------------------------------------------------------------
def adapter_dir(src: str | Path) -> Path | None:
    """The peft adapter dir of a training output (``src`` or ``src/adapter``), None if it has none."""
    src = Path(src)
    for d in (src, src / "adapter"):
        if (d / "adapter_config.json").exists():
            return d
    return None


def load_trained(src: str | Path, base: str = "") -> tuple[Any, Any, bool]:
    """(model, tokenizer, is_lora): a peft model over its base for an adapter dir, else a HF model."""
    transformers = require("transformers", "torch")
    src = Path(src)
    adir = adapter_dir(src)
    if adir is None:
        mdir = src / "model" if (src / "model" / "config.json").exists() else src
        model, tok = load_hf(mdir, device="cpu", dtype="float32")
        return model, tok, False
    peft = require("peft", "torch")
    meta = json.loads((adir / "splice_train.json").read_text()) if (adir / "splice_train.json").exists() else {}
    base_path = base or meta.get("base_model") or peft.PeftConfig.from_pretrained(str(adir)).base_model_name_or_path
    model, _ = load_hf(resolve_model(str(base_path)), device="cpu", dtype="float32")
    tok = transformers.AutoTokenizer.from_pretrained(str(adir))
    if len(tok) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    return peft.PeftModel.from_pretrained(model, str(adir)).eval(), tok, True


def merge_lora(model: Any) -> Any:
    """The LoRA weights folded into the base weights (a plain transformers model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# -- GGUF: names, permutation, tokenizer ----------------------------------------------------------------
def hf_to_gguf_name(name: str, n_layers: int) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``."""
    gguf = require("gguf", "torch")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    found = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise ModelError(f"no GGUF name for tensor {name!r} (only Llama-architecture models are supported)")
    return found


def _permute(w: Any, n_head: int, n_head_kv: int) -> Any:
    """HF rotate-half layout -> llama.cpp interleaved rotary layout (rows of Q, K, or LoRA B)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _maybe_permute(gname: str, w: Any, cfg: Any) -> Any:
    if gname.endswith("attn_q.weight"):
        return _permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
    if gname.endswith("attn_k.weight"):
        return _permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
    return w


def _pre_tokenizer(tok: Any, pre: str) -> str:
    """llama.cpp's pre-tokenizer name: SmolLM's digits-split byte-level -> smollm, GPT-2 -> gpt-2."""
    if pre != "auto":
        return pre
    spec = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in spec.get("pretokenizers", [spec])]
    if "Digits" in kinds and "ByteLevel" in kinds:
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    log.warning("unknown pre-tokenizer %s; writing 'default' (pass --pre NAME to choose)", kinds)
    return "default"


def _add_tokenizer(writer: Any, tok: Any, pre: str) -> None:
    gguf = require("gguf", "torch")
    spec = json.loads(tok.backend_tokenizer.to_str())
    if spec.get("model", {}).get("type") != "BPE":
        raise ModelError("GGUF export supports byte-level BPE tokenizers (gpt2-style) only")
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for t, i in vocab.items():
        tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for i, added in tok.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tok, pre))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                     ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(writer, f"add_{key}_token_id")(int(tid))
    writer.add_add_bos_token(False)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _add_hparams(writer: Any, cfg: Any, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(cfg.vocab_size)


def write_gguf(model: Any, tok: Any, path: str | Path, dtype: str = "f16", pre: str = "auto") -> Path:
    """A llama.cpp model file from a (merged) HF Llama model and its tokenizer."""
    gguf = require("gguf", "torch")
    import numpy as np

    cfg = model.config
    if cfg.model_type != "llama":
        raise ModelError(f"GGUF export supports Llama-architecture models only (got {cfg.model_type!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_hparams(writer, cfg, path.stem)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(ftype)
    _add_tokenizer(writer, tok, pre)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight" or "rotary_emb" in name:
            continue
        gname = hf_to_gguf_name(name, cfg.num_hidden_layers)
        w = _maybe_permute(gname, t.detach().float().cpu().numpy(), cfg)
        keep_f32 = w.ndim == 1 or dtype == "f32"
        writer.add_tensor(gname, np.ascontiguousarray(w.astype(np.float32 if keep_f32 else np.float16)))
    _finish(writer)
    return path


def write_lora_gguf(model: Any, path: str | Path, dtype: str = "f32") -> Path:
    """A GGUF LoRA adapter (F32 or F16 A/B matrices, alpha) for the base model's GGUF, from a peft model."""
    gguf = require("gguf", "torch")
    import numpy as np

    lcfg = model.peft_config["default"]
    if getattr(lcfg, "trainable_token_indices", None) or getattr(lcfg, "modules_to_save", None):
        raise ConfigError("this adapter changes embeddings or extra modules; a GGUF adapter cannot carry "
                          "them: export the merged model GGUF instead (--gguf)")
    cfg = model.get_base_model().config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(lcfg.lora_alpha))
    for name, t in model.state_dict().items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        ab = "lora_a" if ".lora_A." in name else "lora_b"
        base_name = name.split("base_model.model.", 1)[-1].replace(".lora_A.default", "").replace(".lora_B.default", "")
        gname = hf_to_gguf_name(base_name, cfg.num_hidden_layers)
        w = t.detach().float().cpu().numpy()
        if ab == "lora_b":
            w = _maybe_permute(gname, w, cfg)
        writer.add_tensor(f"{gname}.{ab}", np.ascontiguousarray(w.astype(np.float16 if dtype == "f16" else np.float32)))
    _finish(writer)
    return path


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Merge (if LoRA), save the HF model and tokenizer to ``out``, write the GGUF files asked for."""
    model, tok, is_lora = load_trained(cfg.src, cfg.base)
    done: dict[str, Any] = {"lora": is_lora}
    if cfg.adapter_gguf:
        if not is_lora:
            raise ConfigError(f"--adapter-gguf needs a LoRA adapter in {cfg.src}")
        done["adapter_gguf"] = str(write_lora_gguf(model, cfg.adapter_gguf, cfg.dtype))
    merged = merge_lora(model)
    out = Path(cfg.out)
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    done["hf"] = str(out)
    if cfg.gguf:
        done["gguf"] = str(write_gguf(merged, tok, out / f"model-{cfg.dtype}.gguf", cfg.dtype, cfg.pre))
    return done


# -- SFT data as a Hugging Face dataset ---------------------------------------------------------
def to_hf_dataset(rows: Any, tokenizer: Any, *, syntax: str = "splice", tools: Any = ("python", "search"),
                  max_result_tokens: int = 256, max_len: int = 0) -> Any:
    """``agent train data`` output (a JSONL path or its rows) as a ``datasets.Dataset`` with
    ``input_ids``, ``labels`` (-100 on the prompt and on spliced tool results: ``loss_mask`` 0) and
    ``attention_mask``, rendered by ``train.render.ChatRenderer`` exactly as ``agent train sft``
    renders it. TRL's ``SFTTrainer`` trains on it as is (it keeps a ``labels`` column). Rows longer
    than ``max_len`` (when > 0) or with nothing to train on are left out, with a warning."""
    datasets = require("datasets", "trl")

    if isinstance(rows, (str, Path)):
        rows = read_jsonl(rows)
    renderer = ChatRenderer(tokenizer, syntax, list(tools), max_result_tokens=max_result_tokens)
    cols: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    dropped = 0
    for row in rows:
        f = renderer.features(row)
        if (max_len and len(f) > max_len) or f.n_target == 0:
            dropped += 1
            continue
        cols["input_ids"].append(f.input_ids)
        cols["labels"].append(f.labels)
        cols["attention_mask"].append([1] * len(f))
    if dropped:
        log.warning("left out %d example(s): longer than max_len=%d or nothing to train on", dropped, max_len)
    if not cols["input_ids"]:
        raise ConfigError("no example to export: every row was too long or had no model tokens")
    return datasets.Dataset.from_dict(cols)


@dataclass
class DatasetConfig:
    data: str = field(default="", metadata={"help": "training JSONL from `agent train data` / `train probe`"})
    out: str = field(default="out/dataset", metadata={"help": "dir for the datasets.Dataset (save_to_disk)"})
    model: str = field(default="default", metadata={"help": "whose tokenizer: 'default', a .gguf file or a HF dir"})
    syntax: str = field(default="splice", metadata={"help": "tag syntax the examples are rendered in"})
    tools: list[str] = field(default_factory=lambda: ["python", "search"], metadata={"help": "tool names"})
    max_len: int = field(default=0, metadata={"help": "leave out examples longer than this (0 = keep all)"})
    max_result_tokens: int = field(default=256, metadata={"help": "tool result truncation (as the runtime)"})

    def __post_init__(self) -> None:
        if isinstance(self.tools, str):
            self.tools = [t for t in self.tools.split(",") if t]
        if not self.data:
            raise ConfigError("--data is required: a JSONL made by `agent train data`")


def export_dataset(cfg: DatasetConfig) -> dict[str, Any]:
    """``agent train dataset``: ``to_hf_dataset`` with the model's tokenizer, saved to ``cfg.out``."""
    transformers = require("transformers", "torch")
    path = resolve_model(cfg.model)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf_to_hf_dir(path) if path.suffix == ".gguf" else path))
    ds = to_hf_dataset(cfg.data, tok, syntax=cfg.syntax, tools=cfg.tools, max_result_tokens=cfg.max_result_tokens,
                       max_len=cfg.max_len)
    ds.save_to_disk(cfg.out)
    return {"out": cfg.out, "rows": len(ds), "columns": ds.column_names}
