"""Snapshot endpoints of the simulated API: list, create, delete, rollback.

Snapshots are ``[name]`` sections of the PVE config (with ``snaptime``, and the
``parent`` chain PVE keeps); the backend copies or restores the rootfs. As in PVE,
"already used", "does not exist" (delete) and the storage feature check fail the
task, not the request.
"""

from __future__ import annotations

import re
import time
from typing import Any

from provisioner.sim.api.feature import volume_has_snapshot
from provisioner.sim.api.lxc import is_running, load
from provisioner.sim.api.server import ApiError, Request, route
from provisioner.sim.api.status import start_work
from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve import storage
from provisioner.sim.pve.conf import Section
from provisioner.sim.pve.errors import RuleError
from provisioner.sim.pve.ct_permissions import parse_key
from provisioner.sim.pve.tasks import TaskLog


def _volumes(values: dict[str, str], version: str) -> list[str]:
    """The volume ids of rootfs and mpN (bind mounts left out)."""
    out = []
    for key, value in values.items():
        if key == "rootfs" or re.fullmatch(r"mp\d+", key):
            volume = parse_key(key, value, version).get("volume", "")
            if volume and not volume.startswith("/"):
                out.append(volume)
    return out


@route("/nodes/{node}/lxc/{vmid}/snapshot", "GET")
def snapshot_list(req: Request) -> list[dict[str, Any]]:
    pve = load(req)
    out: list[dict[str, Any]] = []
    for name, snap in pve.snapshots.items():
        item: dict[str, Any] = {"name": name, "description": snap.values.get("description", "")}
        if snap.values.get("snaptime"):
            item["snaptime"] = int(snap.values["snaptime"])
        if snap.values.get("parent"):
            item["parent"] = snap.values["parent"]
        out.append(item)
    current: dict[str, Any] = {"name": "current", "description": "You are here!",
                               "running": 1 if is_running(req.api, req.vmid()) else 0}
    if pve.values.get("parent"):
        current["parent"] = pve.values["parent"]
    out.append(current)
    return out


@route("/nodes/{node}/lxc/{vmid}/snapshot", "POST")
def snapshot_create(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    name = str(req.params["snapname"])
    # both names are refused before the worker starts (pve-container src/PVE/API2/LXC/Snapshot.pm:
    # 152-156@94f5585, same in stable-bookworm). Issue 14 said "vzdump is a valid snapshot name":
    # the source says otherwise, and the source wins.
    if name in ("current", "vzdump"):
        raise ApiError(f"unable to use snapshot name '{name}' (reserved name)")
    load(req)
    description = str(req.params.get("description", ""))

    def work(log: TaskLog) -> None:
        with api.store.lock(vmid):
            cur = api.store.load(vmid)
            if cur.values.get("lock"):
                raise SimTaskError(f"CT is locked ({cur.values['lock']})")
            if name in cur.snapshots:
                raise SimTaskError(f"snapshot name '{name}' already used")
            if not all(volume_has_snapshot(parse_key(k, v, api.version).get("volume", ""))
                       for k, v in cur.values.items() if k == "rootfs" or re.fullmatch(r"mp\d+", k)):
                raise SimTaskError("snapshot feature is not available")
            snap = Section({k: v for k, v in cur.values.items() if k not in ("lock", "description")},
                           list(cur.main.lxc))
            snap.values["snaptime"] = str(int(time.time()))
            if description:
                snap.values["description"] = description
            api.backend.snapshot(vmid, name, log)
            for volume in _volumes(cur.values, api.version):
                storage.snapshot_added(api.sim_root, volume, name)
            cur.snapshots[name] = snap
            cur.values["parent"] = name
            api.store.save(vmid, cur)

    return api.tasks.start("vzsnapshot", str(vmid), req.user, work)


@route("/nodes/{node}/lxc/{vmid}/snapshot/{snapname}", "GET")
def snapshot_index(req: Request) -> list[dict[str, str]]:
    _snap_or_die(req)
    return [{"cmd": "rollback"}, {"cmd": "config"}]


def _snap_or_die(req: Request) -> str:
    name = str(req.params["snapname"])
    if name not in load(req).snapshots:
        raise ApiError(f"snapshot '{name}' does not exist")
    return name


@route("/nodes/{node}/lxc/{vmid}/snapshot/{snapname}", "DELETE")
def snapshot_delete(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    name = str(req.params["snapname"])
    load(req)

    def work(log: TaskLog) -> None:  # PVE checks the name in the worker, not before
        with api.store.lock(vmid):
            cur = api.store.load(vmid)
            snap = cur.snapshots.get(name)
            if snap is None:
                raise SimTaskError(f"snapshot '{name}' does not exist")
            api.backend.delete_snapshot(vmid, name, log)
            for volume in _volumes(snap.values, api.version):
                storage.snapshot_removed(api.sim_root, volume, name)
            parent = snap.values.get("parent")
            for section in [cur.main, *cur.snapshots.values()]:
                if section.values.get("parent") == name:
                    if parent:
                        section.values["parent"] = parent
                    else:
                        section.values.pop("parent")
            del cur.snapshots[name]
            api.store.save(vmid, cur)

    return api.tasks.start("vzdelsnapshot", str(vmid), req.user, work)


@route("/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback", "POST")
def snapshot_rollback(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    name = _snap_or_die(req)
    start_after = str(req.params.get("start", "0")) == "1"

    def work(log: TaskLog) -> None:
        # pve-guest-common src/PVE/AbstractConfig.pm:1124-1210 snapshot_rollback@4a8f6cb: every volume's
        # volume_rollback_is_possible *before* the lock check and the stop, so a refused rollback
        # leaves a running CT running; the API's `start` starts it afterwards (pve-container
        # src/PVE/API2/LXC/Snapshot.pm:268-318@94f5585)
        with api.store.lock(vmid):
            cur = api.store.load(vmid)
            snap = cur.snapshots.get(name)
            if snap is None:
                raise SimTaskError(f"snapshot '{name}' does not exist")
            for volume in _volumes(snap.values, api.version):
                try:
                    storage.check_rollback_possible(api.sim_root, volume, name)
                except RuleError as exc:
                    raise SimTaskError(exc.message) from None
            if cur.values.get("lock"):
                raise SimTaskError(f"CT is locked ({cur.values['lock']})")
            if is_running(api, vmid):
                api.backend.stop(vmid, log)
            api.backend.rollback(vmid, name, log)
            values = {k: v for k, v in snap.values.items() if k not in ("snaptime", "description")}
            if cur.values.get("description"):
                values["description"] = cur.values["description"]
            values["parent"] = name
            cur.main = Section(values, list(snap.lxc))
            cur.pending = Section()
            api.store.save(vmid, cur)
        if start_after:
            start_work(api, vmid, log)

    return api.tasks.start("vzrollback", str(vmid), req.user, work)
