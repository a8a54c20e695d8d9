"""``provision host FILE [--plan] [--reboot] [--yes]``: the Proxmox host's own NVIDIA driver.

Needs ``host.driver.manage: true`` in the file (off by default: the tool then never changes the
host's driver). Shows the plan first — with a plain REBOOT REQUIRED line when the loaded module
will differ — then applies it under a host-wide lock, reboots only with ``--reboot`` (waits for
the host, verifies the loaded module) and moves every managed GPU container in lockstep.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..redact import redact_obj
from .main import _load, app, confirm, guarded
from .output import Output, current

if TYPE_CHECKING:
    from ..operations.host_driver import HostPlan


def _show(out: Output, hp: HostPlan, path: Path, applied: list | None = None) -> None:
    if out.json_mode:
        data = {"ok": True, **hp.as_dict()}
        if applied is not None:
            data["applied"] = [c.as_dict() for c in applied]
        print(json.dumps(redact_obj(data)))
        return
    if applied is not None:
        out.line(f"{path}: {len(applied)} host change(s) applied" if applied else f"{path}: nothing changed")
    elif not hp.changes:
        out.line(f"{path}: the host's driver is converged ({hp.loaded or 'none'} loaded)")
    else:
        out.line(f"{path}: {len(hp.changes)} host change(s) planned "
                 f"(driver: installed {hp.installed or 'none'}, loaded {hp.loaded or 'none'}, target {hp.target})")
        for change in hp.changes:
            out.line(change.render())
    for note in hp.notes:
        if note.startswith("REBOOT REQUIRED") and applied is None:
            out.warn(note)
        else:
            out.line(f"note: {note}")


@app.command("host")
@guarded
def host_cmd(file: Path = typer.Argument(..., help="The host file (YAML) with host.driver.manage: true."),
             plan_only: bool = typer.Option(False, "--plan", help="Show what would change and change nothing."),
             reboot: bool = typer.Option(False, "--reboot", help="Reboot the host when the new module needs it, "
                                                                 "wait for it and verify."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before applying."),
             wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another run's lock.")) -> int:
    """Install or upgrade the NVIDIA driver on the Proxmox host; move every managed container with it."""
    from ..engine import run
    from ..engine.context import ApplyContext, PlanContext
    from ..engine.lock import HostLock
    from ..facts.pve import PveFacts
    from ..operations import host_driver
    from ..operations.host_lockstep import converge_ct

    out: Output = current()
    loaded = _load(out, file)
    cfg = loaded.config
    conn = run.connect(cfg)
    try:
        st = host_driver.gather_state(cfg, conn)
        hp = host_driver.plan(cfg, st, reboot=reboot, converge_ct=converge_ct)
        if plan_only or not hp.changes or not yes:
            if plan_only or not hp.changes or not out.json_mode:
                _show(out, hp, file)
            if plan_only or not hp.changes:
                return 0
            if not confirm(out, "Apply these host changes?", what=f"changing the host's driver "
                                                                 f"({len(hp.changes)} change(s))"):
                out.line("nothing changed")
                return 1
        info = conn.pve.version()
        release = str(info.get("release") or info.get("version", ""))
        ctx = PlanContext(cfg=cfg, pve=PveFacts(version=".".join(release.split(".")[:2]), release=release, ct=None,
                                                vmid=None), facts={}, root_path=run.root_path(cfg))
        lock = HostLock(conn.ssh, f"{cfg.proxmox.node}-host-driver", wait=wait,
                        on_wait=out.lock_waiter())
        applied = []
        with lock, out.progress() as progress:
            for change in hp.changes:
                progress.status(f"{change.step}: {change.summary}")
                t0 = time.monotonic()
                change.apply(ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx, status=progress.status,
                                          log=out.log_line))
                applied.append(change)
                progress.done(change, time.monotonic() - t0)
        _show(out, hp, file, applied)
    finally:
        conn.close()
    return 0
