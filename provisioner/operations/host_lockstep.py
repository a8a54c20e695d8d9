"""Lockstep: move one managed container's NVIDIA userspace to the host's new module.

Done through the normal driver step (operations/driver.py) with the host file's driver
settings and the container's vmid, so it converges exactly as `provision up` would. A
stopped container is started for it and stopped again; afterwards the step must plan
nothing for it (verified), or the run fails naming the container.
"""

from __future__ import annotations

from ..engine.context import ApplyContext
from ..errors import RemoteError
from ..facts.nvidia import DRIVER
from .host_driver import STEP, ManagedCt


def converge_ct(a: ApplyContext, ct: ManagedCt, target: str) -> None:
    from ..engine.lock import HostLock, ct_lock_name

    # the same lock `provision up` of that container takes, and the host guard's hook while it moves the
    # userspace at the container's start (templates/host/provision-guard.sh.j2): after the reboot
    # pve-guests starts the onboot containers and their hooks may be running apt in them right now, so
    # wait for such a move (apt downloads the libraries: minutes on a slow mirror), then plan
    def waiting(holder: str, left: float) -> None:
        if left >= 0:
            a.status(f"CT {ct.vmid}: waiting for {holder} ({left:.0f} s left)")

    with HostLock(a.ssh, ct_lock_name(a.pve.node, ct.vmid), wait=900, on_wait=waiting):
        _converge(a, ct, target)


def _converge(a: ApplyContext, ct: ManagedCt, target: str) -> None:
    from ..engine.run import Connections, gather_facts
    from .driver import DriverStep

    cfg = a.cfg.model_copy(update={"container": a.cfg.container.model_copy(
        update={"vmid": ct.vmid, "hostname": ct.hostname or a.cfg.container.hostname})})
    conn = Connections(pve=a.pve, ssh=a.ssh)
    status = (a.pve.get(a.pve.ct(ct.vmid, "status/current")) or {}).get("status")
    started = False
    if status != "running":
        a.status(f"CT {ct.vmid}: starting it to move its userspace (stopped again afterwards)")
        a.pve.wait_task(a.pve.post(a.pve.ct(ct.vmid, "status/start")), what=f"starting CT {ct.vmid}")
        started = True
    try:
        step = DriverStep(cfg)
        ctx = gather_facts(cfg, conn, [step])
        loaded = ctx.fact(DRIVER.name).version
        if loaded != target:
            raise RemoteError(f"the host runs {loaded}, not {target}: CT {ct.vmid} is left as it is", step=STEP,
                              vmid=ct.vmid, fix="reboot the host into the new driver first")
        for change in step.plan(ctx):
            a.status(f"CT {ct.vmid}: {change.summary}")
            change.apply(ApplyContext(cfg=cfg, pve=a.pve, ssh=a.ssh, plan=ctx, status=a.status, log=a.log))
        left = step.plan(gather_facts(cfg, conn, [step]))
        if left:
            raise RemoteError(f"CT {ct.vmid} still differs after the lockstep: "
                              + "; ".join(c.summary for c in left), step=STEP, vmid=ct.vmid,
                              fix=f"run `provision doctor` for CT {ct.vmid}")
    finally:
        if started:
            a.pve.wait_task(a.pve.post(a.pve.ct(ct.vmid, "status/stop")), what=f"stopping CT {ct.vmid}")
