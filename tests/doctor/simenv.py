"""A container on the simulated node set up the way `up` does it, for doctor's sim tests.

Only the steps whose inputs exist without a network build run here (gpu.host, container,
driver): the same step code `provision up` runs, applied change by change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.config import load
from provisioner.config.loader import Loaded
from provisioner.doctor.findings import DoctorReport
from provisioner.doctor.runner import diagnose
from provisioner.engine import run
from provisioner.engine.context import ApplyContext
from provisioner.errors import ProvisionError
from provisioner.operations.container import ContainerStep
from provisioner.operations.driver import DriverStep
from provisioner.operations.passthrough import GpuHostStep
from provisioner.sim.hostfile import write_host_file


def host_file(tmp: Path, conn: dict[str, Any], vmid: int, *, auth: str = "token", **extra: Any) -> Loaded:
    path = write_host_file(tmp / f"host-{vmid}-{auth}.yaml", conn, vmid=vmid, auth=auth, extra=extra)
    return load(path)


def converge(loaded: Loaded, attempts: int = 3) -> None:
    """Apply the gpu.host, container and driver steps (what `up` does before the build).

    Retried: the simulated nodes of parallel test sessions share the real /dev, so another
    session's `drop_uvm` fault can remove /dev/nvidia-uvm between our plan and its use."""
    for attempt in range(attempts):
        try:
            return _converge(loaded)
        except ProvisionError:
            if attempt == attempts - 1:
                raise


def _converge(loaded: Loaded) -> None:
    cfg = loaded.config
    steps = [GpuHostStep(), ContainerStep(), DriverStep()]
    conn = run.connect(cfg)
    try:
        ctx = run.gather_facts(cfg, conn, steps)
        state: dict[str, Any] = {}
        for step in steps:
            for change in step.plan(ctx):
                change.apply(ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx, state=state))
                if change.refresh:
                    ctx = run.gather_facts(cfg, conn, steps, vmid_hint=state.get("vmid") or ctx.vmid)
    finally:
        conn.close()


def doctor(loaded: Loaded, vmid: int | None = None) -> DoctorReport:
    conn = run.connect(loaded.config)
    try:
        return diagnose(loaded.config, conn, vmid=vmid)[1]
    finally:
        conn.close()


def statuses(report: DoctorReport) -> dict[str, str]:
    """finding id -> worst status among findings with that id."""
    rank = {"ok": 0, "warn": 1, "fail": 2}
    out: dict[str, str] = {}
    for f in report.findings:
        if rank[f.status] >= rank.get(out.get(f.id, "ok"), 0):
            out[f.id] = f.status
    return out
