"""Proxmox snapshots as a safety net: taken before `up` changes an existing container,
pruned to the last N, and the way back (`provision rollback`).

Only snapshots named ``provision-YYYYmmdd-HHMMSS`` are ours; the user's snapshots are
listed, shown and never deleted. Whether a container can be snapshotted is PVE's call
(``GET .../feature?feature=snapshot``): a storage without snapshots (``dir``) or a
bind mount says no, and `up` then goes on without one and says why.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..connectors.pve import PVE
from ..errors import ProvisionError, ProxmoxError
from ..redact import redact

if TYPE_CHECKING:
    from .context import ApplyContext, PlanContext

PREFIX = "provision-"
#: ours: provision-20261122-031500 (a -N suffix when two runs share a second)
NAME_RE = re.compile(r"^provision-(\d{8})-(\d{6})(?:-(\d+))?$")
STEP = "snapshot"
_DONE = "snapshot.checked"  # key in ApplyContext.state: the check runs once per `up`


@dataclass(frozen=True)
class Snapshot:
    name: str
    snaptime: int | None
    description: str

    @property
    def ours(self) -> bool:
        return bool(NAME_RE.match(self.name))

    def when(self) -> str:
        if self.snaptime is None:
            return "unknown time"
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.snaptime))


def snapshot_name(now: float, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """``provision-YYYYmmdd-HHMMSS`` (UTC) for ``now``, suffixed if that name is taken."""
    base = PREFIX + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _order(s: Snapshot) -> tuple[str, str, int]:
    m = NAME_RE.match(s.name)
    assert m is not None
    return (m.group(1), m.group(2), int(m.group(3) or 1))


def ours_oldest_first(snaps: list[Snapshot]) -> list[Snapshot]:
    """Our snapshots, oldest first (the name carries the time; the user's are left out)."""
    return sorted((s for s in snaps if s.ours), key=_order)


def to_prune(snaps: list[Snapshot], keep: int) -> list[Snapshot]:
    """Which of our snapshots to delete so that ``keep`` remain (never the user's)."""
    ours = ours_oldest_first(snaps)
    keep = max(1, keep)  # the newest one is the safety net of this very run
    return ours[:-keep] if len(ours) > keep else []


def list_snapshots(pve: PVE, vmid: int) -> list[Snapshot]:
    """Every snapshot of the CT (ours and the user's), without the "current" pseudo-entry."""
    out = []
    for item in pve.get(pve.ct(vmid, "snapshot")) or []:
        name = str(item.get("name", ""))
        if not name or name == "current":
            continue
        t = item.get("snaptime")
        out.append(Snapshot(name=name, snaptime=int(t) if t not in (None, "") else None,
                            description=str(item.get("description") or "").strip()))
    return out


def why_not(pve: PVE, config: dict[str, str]) -> str:
    """Why PVE said no: a bind mount, or the storage of a volume (with its type)."""
    for key in sorted(config):
        if key == "rootfs" or re.fullmatch(r"mp\d+", key):
            volume = str(config[key]).split(",", 1)[0].removeprefix("volume=")
            if volume.startswith("/"):
                return f"{key} is a bind mount ({volume}) and PVE cannot snapshot a container with one"
    storage = str(config.get("rootfs", "")).split(",", 1)[0].removeprefix("volume=").split(":", 1)[0]
    kind = ""
    try:
        for s in pve.get(f"/nodes/{pve.node}/storage") or []:
            if s.get("storage") == storage:
                kind = f" ({s.get('type')})" if s.get("type") else ""
    except ProxmoxError:
        pass
    return f"storage {storage or '?'}{kind} does not support snapshots"


def supported(pve: PVE, vmid: int) -> bool | None:
    """PVE's answer to "can this CT be snapshotted now?"; None if the API cannot tell."""
    try:
        answer = pve.get(pve.ct(vmid, "feature"), feature="snapshot") or {}
    except ProxmoxError as exc:
        if exc.status in (501, 404):
            return None
        raise
    return bool(int(answer.get("hasFeature") or 0))


def describe_run(ctx: "PlanContext", first: str) -> str:
    """One line saying which run took the snapshot and what it was about to change."""
    from .steps import all_steps

    counts: list[str] = []
    probe = dataclasses.replace(ctx, notes=[])  # planning again must not add notes twice
    try:
        for step in all_steps(ctx.cfg):
            n = len(step.plan(probe))
            if n:
                counts.append(f"{step.name} {n}")
    except ProvisionError:
        counts = []
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    text = (f"taken by provision {__version__} `up` ({who}, pid {os.getpid()}) "
            f"before: {first}")
    if counts:
        text += f"; planned changes: {', '.join(counts)}"
    return redact(text)[:500]


def take(pve: PVE, vmid: int, description: str, *, timeout: float,
         say: Callable[[str], None] = lambda m: None) -> str:
    """Create a ``provision-*`` snapshot and wait for its task; returns its name."""
    taken = {s.name for s in list_snapshots(pve, vmid)}
    name = snapshot_name(time.time(), taken)
    say(f"taking snapshot {name} of CT {vmid}")
    upid = pve.post(pve.ct(vmid, "snapshot"), snapname=name, description=description)
    pve.wait_task(upid, what=f"snapshot {name} of CT {vmid}", timeout=timeout)
    return name


def prune(pve: PVE, vmid: int, keep: int, *, timeout: float,
          say: Callable[[str], None] = lambda m: None) -> list[str]:
    """Delete our oldest snapshots beyond ``keep``; returns the names deleted."""
    gone = []
    for snap in to_prune(list_snapshots(pve, vmid), keep):
        say(f"deleting old snapshot {snap.name}")
        upid = pve.delete(pve.ct(vmid, f"snapshot/{snap.name}"))
        pve.wait_task(upid, what=f"deleting snapshot {snap.name}", timeout=timeout)
        gone.append(snap.name)
    return gone


def before_first_change(actx: "ApplyContext", first: Any) -> str | None:
    """The hook `up` calls before applying each change; acts once, before the first one.

    Takes a snapshot when the CT exists and ``container.snapshot`` is on, prunes ours
    to ``container.snapshots_keep``, and notes what it did (or why it did not).
    """
    if actx.state.get(_DONE):
        return None
    actx.state[_DONE] = True
    c = actx.cfg.container
    ct = actx.plan.pve.ct
    if ct is None or not c.snapshot:
        return None
    pve, notes, timeout = actx.pve, actx.plan.notes, actx.cfg.proxmox.task_timeout
    if ct.config.get("lock"):  # PVE refuses snapshots of a locked CT (e.g. a create that never finished)
        notes.append(f"CT {ct.vmid} is locked ({ct.config['lock']}); continuing without a snapshot")
        return None
    try:
        can = supported(pve, ct.vmid)
        if can is None:
            notes.append(f"CT {ct.vmid}: the API cannot tell whether snapshots are supported; "
                         "continuing without one")
            return None
        if not can:
            reason = why_not(pve, ct.config)
            actx.status(f"{reason}; continuing without a snapshot")
            notes.append(f"CT {ct.vmid}: {reason}; continuing without one")
            return None
        name = take(pve, ct.vmid, describe_run(actx.plan, getattr(first, "summary", "changes")),
                    timeout=timeout, say=actx.status)
        gone = prune(pve, ct.vmid, c.snapshots_keep, timeout=timeout, say=actx.status)
    except ProvisionError as exc:
        exc.step = exc.step or STEP
        exc.vmid = exc.vmid if exc.vmid is not None else ct.vmid
        if exc.fix is None:
            exc.fix = "fix the cause, or set container.snapshot: false to change the CT without a snapshot"
        raise
    actx.state["snapshot"] = name
    notes.append(f"CT {ct.vmid}: snapshot {name} taken before changing it"
                 + (f" (deleted older {', '.join(gone)})" if gone else "")
                 + "; `provision rollback FILE` returns to it")
    return name


def rollback(pve: PVE, vmid: int, name: str, *, running: bool, timeout: float,
             say: Callable[[str], None] = lambda m: None) -> None:
    """Roll back to ``name`` in one task, started again only if it was running.

    We do not stop the CT first: PVE checks ``volume_rollback_is_possible`` for every volume
    *before* it stops the CT itself (pve-guest-common src/PVE/AbstractConfig.pm:1124-1210
    @4a8f6cb), and ZFS refuses any snapshot that is not the newest (pve-storage
    src/PVE/Storage/ZFSPoolPlugin.pm:588-614@0c56bad); a stop of our own would leave the CT
    down for nothing. The rollback call's ``start`` starts it afterwards (pve-container
    src/PVE/API2/LXC/Snapshot.pm:268-318@94f5585)."""
    say(f"rolling CT {vmid} back to {name}" + (" (PVE stops it, then starts it again)" if running else ""))
    params = {"start": 1} if running else {}
    pve.wait_task(pve.post(pve.ct(vmid, f"snapshot/{name}/rollback"), **params),
                  what=f"rolling CT {vmid} back to {name}", timeout=timeout)


def config_changes(before: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Config keys that differ between a snapshot and the current config (what changed since)."""
    skip = {"digest", "snaptime", "parent", "description", "lxc", "snapstate", "vmstate"}
    keys = (set(before) | set(now)) - skip
    return {k: (before.get(k), now.get(k)) for k in sorted(keys)
            if str(before.get(k)) != str(now.get(k))}


__all__ = ["NAME_RE", "Snapshot", "before_first_change", "config_changes", "list_snapshots",
           "ours_oldest_first", "prune", "rollback", "snapshot_name", "supported", "take", "to_prune"]
