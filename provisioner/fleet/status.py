"""One row of `provision status` over an inventory, from the facts single-host `status` gathers.

Per container: vmid, node, state, the GPUs passed through (its ``devN`` entries matched to
the host's GPUs), the host's loaded driver vs the container's NVIDIA userspace (a mismatch
is flagged: NVML refuses to work across versions), and the llama-server / gateway health
answers (HTTP status of their /health, probed from inside the container).
"""

from __future__ import annotations

import re
from typing import Any

from ..engine.context import PlanContext
from ..facts.services import GATEWAY_UNIT, LLAMA_UNIT
from ..operations.guard import reboot_pending

_DEV = re.compile(r"^dev\d+$")
_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")


def _gpus(ctx: PlanContext) -> list[str]:
    """GPUs passed through: /dev/nvidiaN in the CT's devN, named after the host's GPU of that minor."""
    ct = ctx.pve.ct
    if ct is None:
        return []
    by_minor = {}
    for g in ctx.facts.get("nvidia.gpus") or []:
        by_minor[g.minor if g.minor is not None else g.index] = g
    found = []
    for key, value in sorted(ct.config.items()):
        if not _DEV.match(key):
            continue
        m = _GPU_NODE.match(value.split(",")[0])
        if m:
            gpu = by_minor.get(int(m.group(1)))
            found.append(f"{gpu.name} ({gpu.short_bus_id})" if gpu else f"/dev/nvidia{m.group(1)} (no such GPU)")
    return found


def _health(services: Any, name: str, unit: str, running: bool) -> str:
    """ok / down / HTTP nnn from the /health probe; why there is no answer otherwise."""
    if not running:
        return "-"
    if services is None:
        return "n/a"  # no model configured: `up` installs no services
    state = services.units.get(unit)
    if state is not None and state.enabled == "not-found":
        return "not installed"
    code = services.health.get(name)
    if code is None:
        return state.active if state else "?"
    return "ok" if code == 200 else ("down" if code == 0 else f"HTTP {code}")


def gateway_models(cfg: Any) -> list[str]:
    """Which model names the gateway maps to which model, read from the very config ``up`` writes."""
    if cfg.model is None or not cfg.gateway.enabled:
        return []
    import json

    from ..gateway.config import settings_from_mapping
    from ..gateway.models import ModelTable
    from ..operations.units import gateway_config

    return ModelTable.from_settings(settings_from_mapping(json.loads(gateway_config(cfg)))).describe()


def gateway_line(ctx: PlanContext) -> str | None:
    """``gateway :4000 ok, serves claude-* → m, m, fast → m`` for single-host ``status``."""
    cfg = ctx.cfg
    if not cfg.gateway.enabled:
        return "gateway: off (gateway.enabled: false)"
    models = gateway_models(cfg)
    if not models:
        return None
    running = bool(ctx.pve.ct and ctx.pve.ct.running)
    health = _health(ctx.facts.get("services.ct"), "gateway", GATEWAY_UNIT, running)
    return f"gateway :{cfg.gateway.port} ({cfg.gateway.mode}, health {health}) maps " + ", ".join(models)


def status_row(ctx: PlanContext) -> dict[str, Any]:
    cfg, ct = ctx.cfg, ctx.pve.ct
    driver = ctx.facts.get("nvidia.driver")
    host_driver = driver.version if driver is not None else None
    userspace = ctx.facts.get("ct.driver")
    ct_driver = None
    if userspace is not None and userspace.nvml_libs:
        ct_driver = ",".join(sorted(set(userspace.nvml_libs)))
    services = ctx.facts.get("services.ct")
    running = bool(ct and ct.running)
    return {
        "hostname": cfg.container.hostname,
        "vmid": ct.vmid if ct else None,
        "node": (ct.node if ct and ct.node else cfg.proxmox.node),
        "pve": ctx.pve.release,
        "state": ct.status if ct else "absent",
        "ours": ct.ours if ct else None,
        "gpus": _gpus(ctx),
        "host_driver": host_driver,
        "ct_driver": ct_driver,
        # only a container that has a userspace can mismatch (a CPU-only one has none)
        "driver_mismatch": bool(host_driver and ct_driver and ct_driver != host_driver),
        "llama": _health(services, "llama", LLAMA_UNIT, running),
        "gateway": _health(services, "gateway", GATEWAY_UNIT, running) if cfg.gateway.enabled else "off",
        "gateway_models": gateway_models(cfg),
        "reboot_pending": reboot_pending(ctx),
    }
