"""Folding a LoRA adapter GGUF into a copy of its base GGUF: ``W + alpha / r * B @ A`` per adapted
matrix, in float32, every quantized tensor stored in one format (``llama_cpp.merged`` caches the
result; this module only writes it).

Two ways to write the same file:

- ``ggml``: llama.cpp's own C library (``libggml-base``, shipped inside llama-cpp-python) through
  its public API: ``gguf_*`` copies the base's metadata (the 49k-token vocabulary included) and
  writes the file, the type's ``to_float`` dequantizes, ``ggml_quantize_chunk`` quantizes. About
  0.6 s for the default model and its shipped adapter on 2 cores (docs/speed.md).
- ``gguf``: the ``gguf`` Python package (numpy (de)quantization). About 5 s for the same files,
  most of it spent parsing the vocabulary field by field. Used where the C library is missing or
  its type table does not match what this module expects (a llama.cpp build with another layout).

``write_merged`` takes the first and falls back to the second; both give the same weights
(tests/test_weights.py compares them tensor by tensor).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import require

__all__ = ["check_adapter", "read_adapter", "write_merged"]

log = logging.getLogger("splice.backends")


class _NoFastPath(Exception):
    """The C library cannot do this merge (missing, unexpected layout, unsupported tensor)."""


def write_merged(path: Path, adapter: Path, out: Path, fmt: str) -> str:
    """Write ``path`` with ``adapter`` folded in, quantized tensors in ``fmt`` (e.g. ``"q8_0"``), to
    ``out``. Returns the way it was written: ``"ggml"`` or ``"gguf"`` (see the module doc). Raises
    ``ValueError`` for an adapter that is not a LoRA of this base."""
    gguf = require("gguf", "llama")
    qtype = getattr(gguf.GGMLQuantizationType, fmt.upper())
    lora = read_adapter(adapter)
    alpha_field = lora.fields.get("adapter.lora.alpha")
    alpha = float(alpha_field.contents()) if alpha_field is not None else 0.0
    pairs = {t.name: np.asarray(t.data, np.float32) for t in lora.tensors}  # lora_a (r, in), lora_b (out, r)
    try:
        used = _merge_ggml(gguf, path, adapter.name, pairs, alpha, out, qtype)
        how = "ggml"
    except _NoFastPath as e:
        log.info("merging with the gguf package (slower): %s", e)
        used = _merge_gguf(gguf, path, adapter.name, pairs, alpha, out, qtype)
        how = "gguf"
    if used * 2 != len(pairs):
        raise ValueError(f"{adapter.name} adapts {len(pairs) // 2} matrices, {path.name} has {used} of them")
    return how


def read_adapter(adapter: Path) -> Any:
    """The ``gguf`` package's reader of the LoRA adapter GGUF ``adapter`` (small: a few hundred
    tensors, a handful of fields). Raises ``ValueError`` for a file that is not one: truncated (on
    which llama.cpp's own adapter loader crashes the process), not a GGUF, or a model, not an adapter."""
    gguf = require("gguf", "llama")
    try:
        lora = gguf.GGUFReader(str(adapter))
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise ValueError(f"{adapter.name} is not a readable GGUF file ({type(e).__name__}: {e})") from e
    if lora.fields.get("adapter.type") is None or lora.fields["adapter.type"].contents() != "lora":
        raise ValueError(f"{adapter.name} is not a LoRA adapter GGUF (no adapter.type = lora)")
    return lora


def check_adapter(base: Path, adapter: Path) -> None:
    """Raise ``ValueError`` unless ``adapter`` is a LoRA adapter GGUF whose every ``lora_a``/``lora_b``
    pair fits a matrix of ``base``: llama.cpp's loader crashes the process on a mismatch."""
    lora = read_adapter(adapter)
    shapes = {t.name: tuple(int(x) for x in t.data.shape) for t in lora.tensors}  # (r, in), (out, r)
    rows = _base_rows(base)  # name -> (rows, row length)
    for name in sorted({k.rsplit(".lora_", 1)[0] for k in shapes}):
        a, b, w = shapes.get(f"{name}.lora_a"), shapes.get(f"{name}.lora_b"), rows.get(name)
        if a is None or b is None or w is None or len(a) != 2 or len(b) != 2 or (b[0], a[1]) != w or a[0] != b[1]:
            raise ValueError(f"{adapter.name} does not fit {base.name}: {name} is {w} in the model, the adapter "
                             f"has lora_a {a} and lora_b {b}")


def _base_rows(base: Path) -> dict[str, tuple[int, int]]:
    """(rows, row length) of every tensor of ``base``: from the C library's header reader (ms), else
    the gguf package's (seconds: it parses the whole vocabulary)."""
    lib = _ggml()
    if lib is not None:
        with _opened(lib, base) as (src, tensors):
            if src:
                out = {}
                for i in range(lib.gguf_get_n_tensors(src)):
                    name = lib.gguf_get_tensor_name(src, i)
                    t = lib.ggml_get_tensor(tensors, name)
                    n_rows = lib.ggml_nrows(t)
                    out[name.decode()] = (n_rows, lib.ggml_nelements(t) // n_rows)
                return out
    gguf = require("gguf", "llama")
    return {t.name: (int(np.prod(t.shape[1:])), int(t.shape[0])) for t in gguf.GGUFReader(str(base)).tensors}


def _delta(pairs: dict[str, np.ndarray], name: str, alpha: float) -> np.ndarray | None:
    a, b = pairs.get(f"{name}.lora_a"), pairs.get(f"{name}.lora_b")
    if a is None or b is None:
        return None
    scale = alpha / a.shape[0] if alpha else 1.0  # llama.cpp's scale: alpha / r, 1 without alpha
    return (b * scale) @ a


# -- the C library ---------------------------------------------------------------------------------------
class _InitParams(ctypes.Structure):  # gguf.h: struct gguf_init_params
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


class _TypeTraits(ctypes.Structure):  # ggml.h: struct ggml_type_traits (checked against gguf before use)
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_P, _S, _I64, _SZ, _INT = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_int
_SIGNATURES = {  # name: (restype, argtypes)
    "gguf_init_from_file": (_P, [_S, _InitParams]), "gguf_init_empty": (_P, []), "gguf_free": (None, [_P]),
    "gguf_set_kv": (None, [_P, _P]), "gguf_set_val_u32": (None, [_P, _S, ctypes.c_uint32]),
    "gguf_set_val_str": (None, [_P, _S, _S]), "gguf_get_n_tensors": (_I64, [_P]),
    "gguf_get_tensor_name": (_S, [_P, _I64]), "gguf_get_tensor_type": (_INT, [_P, _I64]),
    "gguf_get_tensor_offset": (_SZ, [_P, _I64]), "gguf_get_tensor_size": (_SZ, [_P, _I64]),
    "gguf_get_data_offset": (_SZ, [_P]), "gguf_add_tensor": (None, [_P, _P]),
    "gguf_set_tensor_type": (None, [_P, _S, _INT]), "gguf_set_tensor_data": (None, [_P, _S, _P]),
    "gguf_write_to_file": (ctypes.c_bool, [_P, _S, ctypes.c_bool]), "ggml_get_tensor": (_P, [_P, _S]),
    "ggml_nelements": (_I64, [_P]), "ggml_nrows": (_I64, [_P]), "ggml_free": (None, [_P]),
    "ggml_get_type_traits": (ctypes.POINTER(_TypeTraits), [_INT]), "ggml_row_size": (_SZ, [_INT, _I64]),
    "ggml_quantize_requires_imatrix": (ctypes.c_bool, [_INT]),
    "ggml_quantize_chunk": (_SZ, [_INT, _P, _P, _I64, _I64, _I64, _P]),
}


@functools.cache
def _ggml() -> Any:
    """llama-cpp-python's ``libggml-base`` with the signatures above, or None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    dirs = [os.environ.get("LLAMA_CPP_LIB_PATH", ""), str(Path(llama_cpp.__file__).parent / "lib")]
    for d in filter(None, dirs):
        for lib_path in sorted(Path(d).glob("*ggml-base.*")):
            try:
                lib = ctypes.CDLL(str(lib_path))
                for name, (res, args) in _SIGNATURES.items():
                    f = getattr(lib, name)
                    f.restype, f.argtypes = res, args
                return lib
            except (OSError, AttributeError) as e:
                log.debug("cannot use %s: %s", lib_path, e)
    return None


def _traits(lib: Any, gguf: Any, t: int) -> _TypeTraits:
    """ggml's table entry for type ``t``, after checking it says what gguf says about that type."""
    tr = lib.ggml_get_type_traits(t).contents
    qt = gguf.GGMLQuantizationType(t)
    block, size = gguf.GGML_QUANT_SIZES[qt]
    if (tr.type_name or b"").decode() != qt.name.lower() or (tr.blck_size, tr.type_size) != (block, size):
        raise _NoFastPath(f"ggml's table for {qt.name} is not the layout this module reads")
    return tr


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an install from before it was a dependency: slower, same result
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


@contextlib.contextmanager
def _opened(lib: Any, path: Path) -> Iterator[tuple[Any, ctypes.c_void_p]]:
    """(gguf context or NULL, ggml context of its tensors' shapes) of ``path``'s header, freed after."""
    tensors = ctypes.c_void_p()
    src = lib.gguf_init_from_file(os.fsencode(path), _InitParams(True, ctypes.pointer(tensors)))
    try:
        yield src, tensors
    finally:
        if src:
            lib.gguf_free(src)
        if tensors:
            lib.ggml_free(tensors)


def _merge_ggml(gguf: Any, path: Path, adapter_name: str, pairs: dict[str, np.ndarray], alpha: float,
                out: Path, qtype: Any) -> int:
    lib = _ggml()
    if lib is None:
        raise _NoFastPath("llama-cpp-python's libggml-base not found")
    _traits(lib, gguf, qtype)
    if lib.ggml_quantize_requires_imatrix(qtype):
        raise _NoFastPath(f"{qtype.name} needs an importance matrix")
    with _opened(lib, path) as (src, tensors):
        if not src:
            raise _NoFastPath(f"libggml cannot read {path.name}")
        return _write_ggml(lib, gguf, src, tensors, path, adapter_name, pairs, alpha, out, qtype)


def _write_ggml(lib: Any, gguf: Any, src: Any, tensors: ctypes.c_void_p, path: Path, adapter_name: str,
                pairs: dict[str, np.ndarray], alpha: float, out: Path, qtype: Any) -> int:
    floats = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    dst = lib.gguf_init_empty()
    keep: list[np.ndarray] = []  # buffers gguf_write_to_file reads from
    try:
        lib.gguf_set_kv(dst, src)
        lib.gguf_set_val_u32(dst, b"general.file_type", int(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.name}")))
        lib.gguf_set_val_str(dst, b"splice.merged_adapter", adapter_name.encode())
        data = np.memmap(path, dtype=np.uint8, mode="r")
        start = lib.gguf_get_data_offset(src)
        jobs = []  # (name, type, raw bytes, rows, per_row, adapted): tensors to (re)quantize
        for i in range(lib.gguf_get_n_tensors(src)):
            name, t = lib.gguf_get_tensor_name(src, i), lib.gguf_get_tensor_type(src, i)
            tensor = lib.ggml_get_tensor(tensors, name)
            lib.gguf_add_tensor(dst, tensor)
            off = start + lib.gguf_get_tensor_offset(src, i)
            raw = data[off: off + lib.gguf_get_tensor_size(src, i)]
            adapted = f"{name.decode()}.lora_a" in pairs
            if not adapted and (t in floats or t == qtype):  # norms, biases, already in the format: as they are
                keep.append(raw)
                lib.gguf_set_tensor_data(dst, name, raw.ctypes.data)
                continue
            rows = lib.ggml_nrows(tensor)
            per_row = lib.ggml_nelements(tensor) // rows
            if per_row % gguf.GGML_QUANT_SIZES[qtype][0]:
                raise _NoFastPath(f"{name.decode()}: rows of {per_row} do not fill {qtype.name} blocks")
            if t != gguf.GGMLQuantizationType.F32 and not _traits(lib, gguf, t).to_float:
                raise _NoFastPath(f"ggml cannot dequantize {gguf.GGMLQuantizationType(t).name}")
            jobs.append((name, t, raw, rows, per_row, adapted))

        def quantized(job: tuple) -> np.ndarray:  # ctypes and numpy release the GIL: one job per core
            name, t, raw, rows, per_row, adapted = job
            if t == gguf.GGMLQuantizationType.F32:
                w = np.frombuffer(raw, np.float32).reshape(rows, per_row).copy()
            else:
                w = np.empty((rows, per_row), np.float32)
                _TO_FLOAT(_traits(lib, gguf, t).to_float)(raw.ctypes.data, w.ctypes.data, w.size)
            if adapted:
                w += _delta(pairs, name.decode(), alpha)  # an adapter of another model: ValueError here
            q = np.empty(lib.ggml_row_size(qtype, per_row) * rows, np.uint8)
            lib.ggml_quantize_chunk(qtype, w.ctypes.data, q.ctypes.data, 0, rows, per_row, None)
            return q

        # one tensor per core, each matrix product on one BLAS thread (two levels of threads on
        # 2 cores ran 0.8 s instead of 0.5)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool, _one_blas_thread():
            for (name, *_), q in zip(jobs, pool.map(quantized, jobs)):
                keep.append(q)
                lib.gguf_set_tensor_type(dst, name, qtype)
                lib.gguf_set_tensor_data(dst, name, q.ctypes.data)
        used = sum(job[-1] for job in jobs)
        if used * 2 == len(pairs) and not lib.gguf_write_to_file(dst, os.fsencode(out), False):
            raise OSError(f"could not write {out}")
        return used
    finally:
        lib.gguf_free(dst)


# -- the gguf package ------------------------------------------------------------------------------------
def _merge_gguf(gguf: Any, path: Path, adapter_name: str, pairs: dict[str, np.ndarray], alpha: float,
                out: Path, qtype: Any) -> int:
    value_type, tensor_type = gguf.GGUFValueType, gguf.GGMLQuantizationType
    base = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(out), arch=base.fields["general.architecture"].contents())
    for key, f in base.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the header's own fields; the writer adds them
        if key == "general.file_type":
            writer.add_uint32(key, int(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.name}")))
        elif f.types[0] == value_type.ARRAY:
            writer.add_key_value(key, f.contents(), value_type.ARRAY, sub_type=f.types[-1])
        else:
            writer.add_key_value(key, f.contents(), f.types[0])
    writer.add_string("splice.merged_adapter", adapter_name)
    used = 0
    for t in base.tensors:
        delta = _delta(pairs, t.name, alpha)
        if delta is None and t.tensor_type in (tensor_type.F32, tensor_type.F16):
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)  # norms, biases: as they are
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if delta is not None:
            w += delta
            used += 1
        q = gguf.quants.quantize(w, qtype)
        writer.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=qtype)
    if used * 2 == len(pairs):
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    writer.close()
    return used
