"""Proxmox snapshots as a safety net: taken before `up` changes an existing container in a
way that can break it, pruned, and the way back (`provision rollback`).

Which changes: those that can leave a container that no longer works — its Proxmox config
(``config``: update, restart, resize), the NVIDIA userspace and toolkit (``driver``), a
llama.cpp build (``build``), the services (``services``). Starting a stopped CT, loading a
host module, creating the models directory, a model download, the resolv.conf fix and verify
take none: a snapshot costs ~15 s, and each one used to push an older, useful one out.
The kinds a snapshot was taken before are recorded in its description (``kinds: ...``);
pruning keeps the newest ``container.snapshots_keep`` and, beyond them, the newest one
taken before each kind, so the snapshot from before a driver change survives any number of
config edits.

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
#: the kinds of change a snapshot is taken before, by step (the container step: see ``kind_of``)
KINDS_BY_STEP = {"driver": "driver", "cuda": "driver", "llama": "build", "services": "services"}
KINDS = ("config", "driver", "build", "services")
KINDS_RE = re.compile(r"\bkinds: ([a-z,]+)")


def kind_of(change: Any) -> str | None:
    """The kind of a planned change if it can break the container, else None (no snapshot for it)."""
    if change.step == "container":
        return "config" if change.action in ("update", "restart", "resize") else None
    return KINDS_BY_STEP.get(change.step)


@dataclass(frozen=True)
class Snapshot:
    name: str
    snaptime: int | None
    description: str

    @property
    def ours(self) -> bool:
        return bool(NAME_RE.match(self.name))

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of change it was taken before (empty for snapshots older than that record)."""
        m = KINDS_RE.search(self.description)
        return frozenset(k for k in m.group(1).split(",") if k) if m else frozenset()

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
    """Which of our snapshots to delete: all but the newest ``keep`` and the newest one before each
    kind of change (never the user's)."""
    ours = ours_oldest_first(snaps)
    keep = max(1, keep)  # the newest one is the safety net of this very run
    kept = {s.name for s in ours[-keep:]}
    for kind in KINDS:
        last = next((s for s in reversed(ours) if kind in s.kinds), None)
        if last is not None:
            kept.add(last.name)
    return [s for s in ours if s.name not in kept]


def rollback_target(snaps: list[Snapshot]) -> Snapshot | None:
    """The snapshot `provision rollback` uses without --to: our newest."""
    ours = ours_oldest_first(snaps)
    return ours[-1] if ours else None


def describe_snapshot(s: Snapshot) -> str:
    before = f"before {', '.join(sorted(s.kinds))} changes, " if s.kinds else ""
    return f"{s.name} ({before}taken {s.when()})"


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


def describe_run(ctx: "PlanContext", first: str, kinds: set[str] | frozenset[str] = frozenset()) -> str:
    """One line saying which run took the snapshot, what it was about to change, and the kinds
    of change it protects (read back by ``Snapshot.kinds`` for pruning)."""
    from .steps import all_steps

    counts: list[str] = []
    kinds = set(kinds)
    probe = dataclasses.replace(ctx, notes=[])  # planning again must not add notes twice
    try:
        for step in all_steps(ctx.cfg):
            changes = step.plan(probe)
            if changes:
                counts.append(f"{step.name} {len(changes)}")
            kinds |= {k for c in changes if (k := kind_of(c))}
    except ProvisionError:
        counts = []
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    text = f"kinds: {','.join(k for k in KINDS if k in kinds)}; " if kinds else ""
    text += (f"taken by provision {__version__} `up` ({who}, pid {os.getpid()}) "
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
    """The hook `up` calls before the first change that can break the container (``kind_of``).

    Takes a snapshot when the CT existed before this run and ``container.snapshot`` is on,
    prunes ours (``to_prune``), and notes what it did (or why it did not).
    """
    if actx.state.get(_DONE):
        return None
    actx.state[_DONE] = True
    c = actx.cfg.container
    ct = actx.plan.pve.ct
    if ct is None or not c.snapshot or actx.state.get("created"):
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
        kind = kind_of(first)
        name = take(pve, ct.vmid, describe_run(actx.plan, getattr(first, "summary", "changes"),
                                               {kind} if kind else set()),
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


def note_without_snapshot(actx: "ApplyContext") -> None:
    """After a run that changed an existing CT without a snapshot (nothing risky): say which snapshot
    `provision rollback` would use, so nobody expects one of this run."""
    ct = actx.plan.pve.ct
    if ct is None or not actx.cfg.container.snapshot or actx.state.get(_DONE) or actx.state.get("created"):
        return
    try:
        target = rollback_target(list_snapshots(actx.pve, ct.vmid))
    except ProvisionError:
        return
    actx.plan.notes.append(f"CT {ct.vmid}: no snapshot taken (nothing this run changed can break the container); "
                           + (f"`provision rollback FILE` would return to {describe_snapshot(target)}" if target
                              else "it has no provision snapshot to roll back to"))


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


__all__ = ["KINDS", "NAME_RE", "Snapshot", "before_first_change", "config_changes", "describe_snapshot", "kind_of",
           "list_snapshots", "note_without_snapshot", "ours_oldest_first", "prune", "rollback", "rollback_target",
           "snapshot_name", "supported", "take", "to_prune"]
