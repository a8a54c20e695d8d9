"""``provision rollback FILE [--to NAME] [--yes]``: return the container to a snapshot.

Shows a plan first (which snapshot, when, which run took it, whether the CT is started
again, which config keys changed since), then one rollback task (PVE stops the CT itself,
after checking the rollback is possible; ``start=1`` when it was running), under the same host
lock as `up`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import ProvisionError
from ..redact import redact_obj
from .main import _load, app, confirm, guarded
from .output import Output, current


def rollback_plan(cfg: Any, conn: Any, to: str | None) -> dict[str, Any]:
    """What the rollback would do, as data (also the ``--json`` output)."""
    from ..engine import snapshot
    from ..facts.pve import gather_pve

    vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else None
    facts = gather_pve(conn.pve, vmid=vmid, hostname=cfg.container.hostname)
    ct = facts.ct
    if ct is None:
        raise ProvisionError(f"no container {cfg.container.hostname} on node {cfg.proxmox.node}",
                             fix="nothing to roll back; `provision up FILE` creates it")
    snaps = snapshot.list_snapshots(conn.pve, ct.vmid)
    if to is None:
        target = snapshot.rollback_target(snaps)
        if target is None:
            raise ProvisionError(f"CT {ct.vmid} has no provision-* snapshot", vmid=ct.vmid,
                                 fix="name one with --to NAME (see the snapshots in the Proxmox UI)")
        chosen = target
    else:
        found = [s for s in snaps if s.name == to]
        if not found:
            names = ", ".join(s.name for s in snaps) or "none"
            raise ProvisionError(f"CT {ct.vmid} has no snapshot {to!r} (it has: {names})", vmid=ct.vmid,
                                 fix="pick one of the listed names")
        chosen = found[0]
    then = conn.pve.get(conn.pve.ct(ct.vmid, "config"), snapshot=chosen.name) or {}
    now = conn.pve.get(conn.pve.ct(ct.vmid, "config"), current=1) or {}
    changed = snapshot.config_changes(then, now)
    newer = [s.name for s in snaps if (s.snaptime or 0) > (chosen.snaptime or 0)]
    return {"vmid": ct.vmid, "hostname": ct.config.get("hostname"), "running": ct.running,
            "ours": ct.ours, "snapshot": chosen.name, "time": chosen.when(), "snaptime": chosen.snaptime,
            "description": chosen.description, "before_kinds": sorted(chosen.kinds),
            "others": [snapshot.describe_snapshot(o) for o in reversed(snapshot.ours_oldest_first(snaps))
                       if o.name != chosen.name],
            "config_changed_since": {k: {"snapshot": b, "now": a} for k, (b, a) in changed.items()},
            "newer_snapshots": newer}


def _show(out: Output, plan: dict[str, Any]) -> None:
    out.line(f"rollback CT {plan['vmid']} ({plan['hostname']}) to snapshot {plan['snapshot']}")
    out.line(f"  taken: {plan['time']}")
    if plan["description"]:
        out.line(f"  by: {plan['description']}")
    out.line("  the container will be stopped, rolled back and started again" if plan["running"]
             else "  the container (stopped now) will be rolled back and stay stopped")
    out.line("  everything written in it since the snapshot is lost (models on host bind mounts stay)")
    changed = plan["config_changed_since"]
    if changed:
        out.line("  config changed since (snapshot → now, the snapshot's value comes back):")
        for key, d in changed.items():
            out.line(f"    {key}: {d['snapshot']} → {d['now']}")
    else:
        out.line("  config: unchanged since the snapshot")
    if plan["newer_snapshots"]:
        out.line(f"  newer snapshots are kept: {', '.join(plan['newer_snapshots'])}")
    if plan["others"]:
        out.line(f"  other provision snapshots (--to NAME): {'; '.join(plan['others'])}")


@app.command()
@guarded
def rollback(file: Path = typer.Argument(..., help="The host file (YAML)."),
             to: Optional[str] = typer.Option(None, "--to", help="Snapshot name (default: newest provision-*)."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> int:
    """Return the container to a snapshot taken by `up` (or one named with --to)."""
    from ..engine import run, snapshot
    from ..engine.lock import ContainerLock

    out: Output = current()
    loaded = _load(out, file)
    cfg = loaded.config
    conn = run.connect(cfg)
    try:
        plan = rollback_plan(cfg, conn, to)
        _show(out, plan)
        if not yes and not confirm(out, "Roll back?", what="rolling back", vmid=plan["vmid"]):
            out.line("nothing changed")
            return 1
        lock = ContainerLock(cfg, conn, vmid=plan["vmid"],
                             on_wait=out.lock_waiter())
        with lock, out.progress() as progress:
            snapshot.rollback(conn.pve, plan["vmid"], plan["snapshot"], running=plan["running"],
                              timeout=cfg.proxmox.task_timeout, say=progress.status)
        out.line(f"CT {plan['vmid']} rolled back to {plan['snapshot']}"
                 + (" and started" if plan["running"] else " (stopped, as it was)"))
        if out.json_mode:
            print(json.dumps(redact_obj({"ok": True, **plan})))
    finally:
        conn.close()
    return 0


__all__ = ["rollback", "rollback_plan"]
