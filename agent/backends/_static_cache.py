"""A static-slot KV cache and a lean Llama forward over a HF model's own modules.

The cache is two preallocated tensors ``[layers, slots, kv_heads, max_len + 1, head_dim]`` (K and V).
A slot belongs to one sequence; its length lives with the scheduler, not in the cache. The extra
column ``max_len`` is scratch: rows of the decode batch that are not decoding (a sequence waiting on
a tool, a free slot) write there and attend only to key 0, so one decode step runs on a contiguous
prefix of slots with no gather and no host-side branching per row.

The forward reuses the model's own ``nn.Module``s (embedding, RMSNorm, q/k/v/o projections, MLP,
final norm, lm_head) and only re-implements what HF ties to its cache classes: RoPE at per-row
positions, the cache write, and attention (SDPA with a boolean mask). GQA is folded into the query
axis (``[B, kv_heads, groups * T, d]``) so K/V are never repeated. On CUDA the decode step is captured
in CUDA graphs, one per (batch, key length) bucket, powers of two; everything else is eager PyTorch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["StaticLlamaRunner", "unsupported_reason"]

log = logging.getLogger("splice.backends.static")

_SUPPORTED = ("llama", "qwen2")


def unsupported_reason(model: Any) -> str | None:
    """Why the lean forward cannot run this model (None when it can)."""
    cfg = model.config
    if cfg.model_type not in _SUPPORTED:
        return f"model_type {cfg.model_type!r} is not one of {_SUPPORTED}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if "dynamic" in str(rope.get("rope_type", rope.get("type", ""))):
        return "dynamic RoPE scaling changes with length"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class StaticLlamaRunner:
    """Prefill and batched decode for ``n_slots`` sequences of at most ``max_len`` tokens each."""

    def __init__(self, model: Any, n_slots: int, max_len: int, *, cuda_graphs: bool = True):
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        attn = self.layers[0].self_attn
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scale = float(attn.scaling)
        self.n_slots, self.max_len = n_slots, max_len
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        shape = (len(self.layers), n_slots, self.n_kv, max_len + 1, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        rot = self.inner.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self.arange = torch.arange(max_len + 1, device=self.device)
        self.graphs = _DecodeGraphs(self) if cuda_graphs and self.device.type == "cuda" else None

    @property
    def cache_bytes_per_slot(self) -> int:
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    # -- pieces of the forward ------------------------------------------------------------------
    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[B, 1, T, d]`` for positions ``[B, T]`` (computed as HF does, in float32)."""
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin

    def _qkv(self, layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = h.shape
        at = layer.self_attn
        q = at.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = at.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = at.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _attend(self, layer: Any, q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """GQA attention with heads folded into the query axis; returns ``o_proj`` output."""
        b, _, t, d = q.shape
        g = self.n_heads // self.n_kv
        qf = q.reshape(b, self.n_kv, g * t, d)
        out = F.scaled_dot_product_attention(qf, keys, vals, attn_mask=mask, scale=self.scale)
        out = out.reshape(b, self.n_heads, t, d).transpose(1, 2).reshape(b, t, self.n_heads * d)
        return layer.self_attn.o_proj(out)

    def _mlp(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.inner.norm(x[:, -1])).float()

    # -- prefill: one slot, T tokens at positions start..start+T-1 --------------------------------
    def prefill(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        """Write ``ids`` into ``slot`` from ``start``; logits ``[V]`` of the last one."""
        end = start + len(ids)
        if end > self.max_len:
            raise ValueError(f"prefill to {end} exceeds the slot size {self.max_len}")
        pos = torch.arange(start, end, device=self.device)[None]
        cos, sin = self._rope(pos)
        g = self.n_heads // self.n_kv
        causal = self.arange[None, :end] <= pos[0, :, None]  # [T, end]
        mask = causal.repeat(g, 1)[None, None]  # query row (group, t) -> [1, 1, G*T, end]
        x = self.inner.embed_tokens(torch.tensor([ids], device=self.device))
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            self.k[li, slot, :, start:end] = k[0]
            self.v[li, slot, :, start:end] = v[0]
            keys, vals = self.k[li, slot:slot + 1, :, :end], self.v[li, slot:slot + 1, :, :end]
            x = self._mlp(layer, x + self._attend(layer, q, keys, vals, mask))
        return self._logits(x)[0]

    # -- decode: one token for each of slots 0..n-1 ------------------------------------------------
    def decode(self, tok: np.ndarray, pos: np.ndarray, active: np.ndarray) -> torch.Tensor:
        """Feed ``tok[s]`` at ``pos[s]`` for every active slot ``s < n``; logits ``[n, V]``.
        Inactive rows are computed but write only the scratch column and are never read."""
        n = len(tok)
        if self.graphs is not None:
            out = self.graphs.run(tok, pos, active)
            if out is not None:
                return out
        kv_len = int(pos[active].max()) + 1 if active.any() else 1
        inputs = _decode_inputs(tok, pos, active, self.max_len, self.device)
        return self._decode_core(*inputs, n, kv_len)

    def _decode_core(self, tok: torch.Tensor, rope_pos: torch.Tensor, write_pos: torch.Tensor,
                     n: int, kv_len: int) -> torch.Tensor:
        rows = self.arange[:n]
        cos, sin = self._rope(rope_pos[:, None])
        mask = (self.arange[None, :kv_len] <= rope_pos[:, None])[:, None, None]  # [n, 1, 1, L]
        x = self.inner.embed_tokens(tok[:, None])
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            kc, vc = self.k[li], self.v[li]
            kc[rows, :, write_pos] = k[:, :, 0]
            vc[rows, :, write_pos] = v[:, :, 0]
            x = self._mlp(layer, x + self._attend(layer, q, kc[:n, :, :kv_len], vc[:n, :, :kv_len], mask))
        return self._logits(x)


def _decode_inputs(tok: np.ndarray, pos: np.ndarray, active: np.ndarray, max_len: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token, RoPE position, cache write position) per row; inactive rows: position 0, scratch."""
    rope = np.where(active, pos, 0)
    write = np.where(active, pos, max_len)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)
    return as_t(tok), as_t(rope), as_t(write)


class _DecodeGraphs:
    """CUDA graphs of the decode step, one per (batch bucket, key-length bucket), both powers of two,
    captured lazily into one shared memory pool. A capture failure falls back to eager for that
    shape, with a warning. Not exercised by the CPU test suite: see docs/speed.md."""

    MIN_KV = 128

    def __init__(self, runner: StaticLlamaRunner):
        self.r = runner
        self.pool: Any = None
        self.graphs: dict[tuple[int, int], tuple[Any, tuple[torch.Tensor, ...], torch.Tensor] | None] = {}

    @staticmethod
    def _pow2(n: int, lo: int, hi: int) -> int:
        b = lo
        while b < n:
            b *= 2
        return min(b, hi)

    def _capture(self, b: int, kv_len: int) -> tuple[Any, tuple[torch.Tensor, ...], torch.Tensor] | None:
        r = self.r
        static = (torch.zeros(b, dtype=torch.long, device=r.device),
                  torch.zeros(b, dtype=torch.long, device=r.device),
                  torch.full((b,), r.max_len, dtype=torch.long, device=r.device))
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up kernels and the allocator outside the graph
                    r._decode_core(*static, b, kv_len)
            torch.cuda.current_stream().wait_stream(side)
            self.pool = self.pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = r._decode_core(*static, b, kv_len)
        except RuntimeError as e:
            log.warning("CUDA graph capture failed for batch %d x %d keys, running eager: %s", b, kv_len, e)
            return None
        return graph.replay, static, out

    def run(self, tok: np.ndarray, pos: np.ndarray, active: np.ndarray) -> torch.Tensor | None:
        r = self.r
        n = len(tok)
        b = self._pow2(n, 1, r.n_slots)
        need = int(pos[active].max()) + 1 if active.any() else 1
        key = (b, self._pow2(need, self.MIN_KV, r.max_len + 1))
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        entry = self.graphs[key]
        if entry is None:
            return None
        replay, static, out = entry
        pad = b - n  # rows n..b-1 are other slots, run as inactive: scratch writes only
        inputs = _decode_inputs(np.pad(tok, (0, pad)), np.pad(pos, (0, pad)), np.pad(active, (0, pad)),
                                r.max_len, r.device)
        for buf, src in zip(static, inputs):
            buf.copy_(src)
        replay()
        return out[:n]
