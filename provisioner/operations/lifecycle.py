"""Destroying the container: only ours, only when asked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..config.schema import HostFile
from ..errors import RefusedError
from ..facts.pve import gather_pve

if TYPE_CHECKING:
    from ..cli.output import Output
    from ..engine.run import Connections


def destroy(cfg: HostFile, conn: "Connections", *, purge: bool,
            confirm: Callable[[str, int], bool] | None, out: "Output") -> bool:
    """Stop and delete our container; refuse one without our marker. Returns True if removed."""
    vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else None
    facts = gather_pve(conn.pve, vmid=vmid, hostname=cfg.container.hostname)
    ct = facts.ct
    if ct is None:
        out.line("no container to remove")
        return False
    if not ct.ours:
        raise RefusedError(f"CT {ct.vmid} was not created by provision; refusing to destroy it",
                           vmid=ct.vmid, fix="remove it yourself in the Proxmox UI if you really mean it")
    if confirm is not None and not confirm(f"Destroy CT {ct.vmid} ({ct.config.get('hostname')}) and its disks?",
                                           ct.vmid):
        out.line("nothing removed")
        return False
    pve = conn.pve
    timeout = cfg.proxmox.task_timeout
    if ct.running:
        upid = pve.post(pve.ct(ct.vmid, "status/stop"))
        pve.wait_task(upid, what=f"stopping CT {ct.vmid}", timeout=timeout)
    params = {"purge": 1, "destroy-unreferenced-disks": 1} if purge else {}
    upid = pve.delete(pve.ct(ct.vmid), **params)
    pve.wait_task(upid, what=f"destroying CT {ct.vmid}", timeout=timeout)
    out.line(f"CT {ct.vmid} destroyed")
    from .guard import remove_script  # its hookscript entry went with its config

    result = conn.ssh.run(remove_script(ct.vmid))
    if result.ok and result.stdout.strip():
        out.line(result.stdout.strip())
    return True
