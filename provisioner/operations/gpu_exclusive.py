"""GPU exclusivity on multi-GPU nodes: a GPU another managed container has is not passed again.

PVE itself lets any number of containers map the same ``/dev/nvidiaN``; two
llama-servers on one GPU then fight over its memory and both die with
out-of-memory errors at load time. So before ``devN`` entries are planned, the GPUs
the other containers on the node hold (``facts.gpu_claims``, read in the facts round
trip) are taken out:

* ``gpu.select`` names a GPU another managed container holds → a clear error that
  names that container and the fixes;
* ``gpu.select: all`` → the free GPUs (a note names the taken ones); none free → error;
* ``gpu.share: true`` → no check: the GPUs are passed even when held elsewhere.

Sharing is agreed by the one who asks for it: a GPU this container already has stays
its own when a later container was given it with ``gpu.share: true`` (only such a run
can pass a held GPU). The first holder keeps working, unchanged, and gets a note
(``shared_with``; doctor shows it as a warning) instead of an error that locks it out.

Only containers with our ownership marker count (we know they run llama-server);
a GPU passed to a foreign container is mentioned in a note, not refused.
"""

from __future__ import annotations

from ..engine.context import PlanContext
from ..errors import ConfigError
from ..facts.gpu_claims import CLAIMS, GpuClaim, _dev_path
from ..facts.nvidia import GpuInfo

_FIX = ("pick a free GPU in gpu.select, or take it away from that container (gpu.enabled: false or another "
        "gpu.select in its host file, then `provision up` it), or set gpu.share: true to share it knowingly")


def minor_of(gpu: GpuInfo) -> int:
    return gpu.minor if gpu.minor is not None else gpu.index


def _own_minors(ctx: PlanContext) -> set[int]:
    """GPUs our container already has, when provision gave them: a container with our marker passed the
    exclusivity check when it got them; one without (a hand-made devN) did not."""
    return _current_minors(ctx) if ctx.pve.ct is not None and ctx.pve.ct.ours else set()


def _current_minors(ctx: PlanContext) -> set[int]:
    """GPUs the container has now (its current devN entries), whoever put them there."""
    if ctx.pve.ct is None:
        return set()
    out = set()
    for key, value in ctx.pve.ct.config.items():
        path = _dev_path(value)
        if key.startswith("dev") and key[3:].isdigit() and path.startswith("/dev/nvidia") and path[11:].isdigit():
            out.add(int(path[11:]))
    return out


def _holder(claims: list[GpuClaim]) -> str:
    return ", ".join(f"CT {c.vmid}" + (f" ({c.hostname})" if c.hostname else "") for c in claims)


def _describe(gpu: GpuInfo) -> str:
    return f"GPU {gpu.index} ({gpu.name}, {gpu.short_bus_id}, {gpu.device})"


def _taken(others: list[GpuClaim]) -> dict[int, list[GpuClaim]]:
    """minor -> the other managed containers that hold it."""
    out: dict[int, list[GpuClaim]] = {}
    for c in others:
        if c.managed:
            out.setdefault(c.minor, []).append(c)
    return out


def shared_with(ctx: PlanContext) -> dict[int, list[GpuClaim]]:
    """This container's own GPUs (by minor) that other managed containers hold too."""
    claims: list[GpuClaim] | None = ctx.fact(CLAIMS.name)
    if not claims:
        return {}
    own_vmid = ctx.pve.ct.vmid if ctx.pve.ct is not None else ctx.pve.vmid
    taken = _taken([c for c in claims if c.vmid != own_vmid])
    return {m: cs for m, cs in taken.items() if m in _own_minors(ctx)}


def exclusive(ctx: PlanContext, chosen: list[GpuInfo]) -> list[GpuInfo]:
    """``chosen`` less the GPUs other managed containers hold (see the module doc)."""
    claims: list[GpuClaim] | None = ctx.fact(CLAIMS.name)
    if claims is None or not chosen:
        return chosen
    own_vmid = ctx.pve.ct.vmid if ctx.pve.ct is not None else ctx.pve.vmid
    others = [c for c in claims if c.vmid != own_vmid]
    by_minor: dict[int, list[GpuClaim]] = {}
    for c in others:
        by_minor.setdefault(c.minor, []).append(c)
    for gpu in chosen:
        foreign = [c for c in by_minor.get(minor_of(gpu), []) if not c.managed]
        if foreign:
            ctx.notes.append(f"{_describe(gpu)} is also passed to {_holder(foreign)}, a container not managed "
                             "by provision: make sure it does not use the GPU's memory")
    if ctx.cfg.gpu.share:
        return chosen
    taken = _taken(others)
    own = _own_minors(ctx)
    for g in chosen:  # ours already: whoever holds it too asked to share it
        if minor_of(g) in own and minor_of(g) in taken:
            ctx.notes.append(f"{_describe(g)} is also passed to {_holder(taken[minor_of(g)])}, which asked to share "
                             "it (gpu.share: true there): both llama-servers share its memory")
    clashing = [g for g in chosen if minor_of(g) in taken and minor_of(g) not in own]
    if not clashing:
        return chosen
    held = _current_minors(ctx)  # never silently dropped by `select: all`: said, with its holder
    if ctx.cfg.gpu.select != "all" or any(minor_of(g) in held for g in clashing):
        gpu = next((g for g in clashing if minor_of(g) in held), clashing[0])
        raise ConfigError(f"{_describe(gpu)} is already passed to {_holder(taken[minor_of(gpu)])}, "
                          "another container managed by provision; a GPU is given to one container "
                          "unless sharing is asked for", key="gpu.select", fix=_FIX)
    free = [g for g in chosen if g not in clashing]
    if not free:
        holders = "; ".join(f"{_describe(g)}: {_holder(taken[minor_of(g)])}" for g in clashing)
        raise ConfigError(f"every GPU on the node is already passed to another container managed by "
                          f"provision ({holders})", key="gpu.select", fix=_FIX)
    for g in clashing:
        ctx.notes.append(f"gpu.select: all skips {_describe(g)}: it is passed to {_holder(taken[minor_of(g)])} "
                         "(gpu.share: true would share it)")
    return free
