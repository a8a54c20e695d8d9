"""Read the metadata at the start of a GGUF file (enough for a KV-cache estimate).

Works on a prefix of the file: the key/value section comes first, so the
architecture numbers are usually within the first few KiB; parsing stops
cleanly at the end of the bytes it got. Large arrays (the tokenizer) are skipped,
not kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS and not keep:
                self.take(struct.calcsize(_SCALARS[etype]) * n)
                return None
            items = [self.value(etype, keep) for _ in range(n)]
            return items if keep else None
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_metadata(data: bytes) -> dict[str, Any]:
    """Key → value for every key that fits in ``data`` (arrays longer than 64 items are dropped)."""
    r = _Reader(data)
    out: dict[str, Any] = {}
    try:
        if r.take(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = r.unpack("<I")
        count_fmt = "<I" if version == 1 else "<Q"
        r.unpack(count_fmt)  # tensor count
        n_kv = r.unpack(count_fmt)
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("<I")
            if vtype == _ARRAY:
                start = r.pos
                etype, n = r.unpack("<I"), r.unpack("<Q")
                r.pos = start
                out_value = r.value(vtype, keep=n <= 64 and etype != _ARRAY)
                if out_value is not None:
                    out[key] = out_value
            else:
                out[key] = r.value(vtype)
    except _Truncated:
        pass
    return out


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on."""

    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    #: training context
    n_ctx_train: int | None = None

    @property
    def n_embd_k(self) -> int:
        return self.n_head_kv * self.head_dim_k

    @property
    def n_embd_v(self) -> int:
        return self.n_head_kv * self.head_dim_v


def shape_from_metadata(meta: dict[str, Any]) -> ModelShape | None:
    """The shape from GGUF keys (``<arch>.block_count`` ...), None when keys are missing."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None
    try:
        layers = int(meta[f"{arch}.block_count"])
        embd = int(meta[f"{arch}.embedding_length"])
        head = meta[f"{arch}.attention.head_count"]
    except (KeyError, TypeError, ValueError):
        return None
    # per-layer head counts (some architectures) come as arrays: take the largest
    n_head = int(max(head)) if isinstance(head, list) else int(head)
    kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    n_head_kv = int(max(kv)) if isinstance(kv, list) else int(kv)
    if n_head <= 0:
        return None
    dim_k = int(meta.get(f"{arch}.attention.key_length", embd // n_head))
    dim_v = int(meta.get(f"{arch}.attention.value_length", dim_k))
    ctx = meta.get(f"{arch}.context_length")
    return ModelShape(arch, layers, embd, n_head, n_head_kv, dim_k, dim_v, int(ctx) if ctx is not None else None)


#: bytes per element of each KV cache type (block size / elements per block)
CACHE_BYTES: dict[str, float] = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                                 "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


def kv_cache_bytes(shape: ModelShape, n_ctx: int, type_k: str, type_v: str) -> int:
    """K + V over all layers: n_layers × n_ctx × (n_embd_k × bytes(k) + n_embd_v × bytes(v))."""
    per_token = shape.n_embd_k * CACHE_BYTES[type_k] + shape.n_embd_v * CACHE_BYTES[type_v]
    return int(shape.n_layers * n_ctx * per_token)
