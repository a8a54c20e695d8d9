"""What can be resident in VRAM at once, against the GPUs' memory.

With several models, llama-server's router keeps up to ``--models-max`` of them loaded and
evicts the least recently used one to load another (tools/server/server-models.cpp:259-265,
1067-1094). The worst case is therefore the ``models_max`` largest models at once, each with its
own KV cache (a child process per model, each with its own context) and its draft model.

Estimate per model: the GGUF file (weights ≈ file size) + the KV cache for its context
(doctor/gguf.py: layers × context × (K + V) bytes per element of the cache types) + the draft's
file. A model with an integer ``ngl`` keeps only that share of its layers on the GPU. Compute
buffers (a few hundred MiB per model) are not counted: the figure is a lower bound.

One model alone is never refused here: ``--fit`` moving what does not fit to the CPU is the
intended setup of e.g. ``inventories/rtx2000ada-laptop.yaml`` (doctor's ``services.vram`` warns).
With several, each child fits itself to the VRAM free *when it starts*, so the order of requests
would decide which model silently runs on the CPU: an over-commit is refused with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.models import models_max, serving
from ..config.schema import HostFile, Model
from ..doctor.gguf import CACHE_BYTES, ModelShape, kv_cache_bytes
from ..facts.services import FileState, ModelFacts, model_roles

MIB = 1024 * 1024


@dataclass(frozen=True)
class Need:
    alias: str
    file_bytes: int
    kv_bytes: int
    draft_bytes: int
    n_ctx: int
    #: share of the layers on the GPU (1.0 unless ngl is a number below the layer count)
    gpu_share: float
    cache: str

    @property
    def total(self) -> int:
        return int((self.file_bytes + self.kv_bytes) * self.gpu_share) + self.draft_bytes

    def line(self) -> str:
        share = "" if self.gpu_share >= 1 else f" × {self.gpu_share:.0%} of its layers on the GPU (ngl)"
        draft = f" + draft {self.draft_bytes / MIB:.0f} MiB" if self.draft_bytes else ""
        return (f"{self.alias}: file {self.file_bytes / MIB:.0f} MiB + KV cache {self.kv_bytes / MIB:.0f} MiB "
                f"({self.n_ctx} tokens, {self.cache}){share}{draft} = {self.total / MIB:.0f} MiB")


def shape_of(state: FileState | None) -> ModelShape | None:
    data = state.shape if state else None
    if not data or not data.get("arch"):
        return None
    try:
        return ModelShape(**{k: data[k] for k in ModelShape.__dataclass_fields__ if k in data})
    except TypeError:
        return None


def need_of(cfg: HostFile, m: Model, files: ModelFacts) -> Need | None:
    """One model's estimate, or None while its file or header is not known yet."""
    roles = {spec is m: role for role, entry, spec in model_roles(cfg) if entry is m}
    state = files.files.get(roles[True])
    shape = shape_of(state)
    if state is None or shape is None:
        return None
    v = serving(cfg, m)
    n_ctx = v.ctx_size or shape.n_ctx_train or 0
    draft = files.files.get(roles[False]) if False in roles else None
    share = 1.0
    if v.ngl.isdigit() and shape.n_layers:
        share = min(1.0, int(v.ngl) / (shape.n_layers + 1))  # +1: the output layer counts as one
    cache = f"k {v.cache_type_k}, v {v.cache_type_v}: {CACHE_BYTES[v.cache_type_k]:.3f}/" \
            f"{CACHE_BYTES[v.cache_type_v]:.3f} bytes per element"
    return Need(m.model_id, state.size, kv_cache_bytes(shape, n_ctx, v.cache_type_k, v.cache_type_v),
                draft.size if draft else 0, n_ctx, share, cache)


@dataclass(frozen=True)
class Budget:
    needs: list[Need]
    #: the models_max largest: what can be loaded at the same time
    resident: list[Need]
    vram_mib: int
    unknown: list[str]

    @property
    def need_mib(self) -> float:
        return sum(n.total for n in self.resident) / MIB

    @property
    def fits(self) -> bool:
        return self.need_mib <= self.vram_mib

    def figures(self) -> str:
        lines = [n.line() for n in self.resident]
        lines.append(f"{len(self.resident)} at once (server.models_max) ≈ {self.need_mib:.0f} MiB, "
                     f"the GPUs have {self.vram_mib} MiB")
        if self.unknown:
            lines.append(f"not counted yet (file or header unknown): {', '.join(self.unknown)}")
        return "\n".join(lines)

    def over(self) -> list[str]:
        """The resident models that do not fit once the ones before them (largest first) are loaded."""
        used, out = 0.0, []
        for n in self.resident:
            used += n.total / MIB
            if used > self.vram_mib:
                out.append(n.alias)
        return out


def budget(cfg: HostFile, files: ModelFacts | None, vram_mib: int) -> Budget:
    needs, unknown = [], []
    for m in cfg.models:
        n = need_of(cfg, m, files) if files else None
        (needs.append(n) if n else unknown.append(m.model_id))
    resident = sorted(needs, key=lambda n: n.total, reverse=True)[:models_max(cfg)]
    return Budget(needs, resident, vram_mib, unknown)
