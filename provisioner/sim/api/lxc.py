"""Container endpoints of the simulated API (``/nodes/{node}/lxc/...``).

Config edits go through ``rules`` (PVE's PUT semantics); everything that takes
time runs as a task through the backend (``backend_base.Backend``), under the
per-vmid config lock, with PVE's task types (vzcreate, vzstart, vzstop, ...).
"""

from __future__ import annotations

import re
from typing import Any

from provisioner.pveschema import config_format, split_list
from provisioner.sim.api import ctcreate
from provisioner.sim.api.server import ApiError, Request, route
from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve.conf import PveConf, Section
from provisioner.sim.pve.rules import Update, pending_view, update_config
from provisioner.sim.pve.tasks import TaskLog


def load(req: Request, vmid: int | None = None) -> PveConf:
    vmid = req.vmid() if vmid is None else vmid
    try:
        return req.api.store.load(vmid)
    except FileNotFoundError:
        raise ApiError(f"Configuration file 'nodes/{req.api.node}/lxc/{vmid}.conf' does not exist") from None


def is_running(api: Any, vmid: int) -> bool:
    try:
        return api.backend.status(vmid) == "running"
    except Exception:  # noqa: BLE001 - a CT the backend does not know is not running
        return False


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", text or "")
    if not m:
        return 0
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def ct_summary(api: Any, vmid: int) -> dict[str, Any] | None:
    """One CT as ``GET /nodes/{node}/lxc`` and ``/cluster/resources`` list it."""
    try:
        conf = api.store.load(vmid).values
    except (FileNotFoundError, ValueError):
        return None
    running = is_running(api, vmid)
    size = re.search(r"size=([^,]+)", conf.get("rootfs", ""))
    out: dict[str, Any] = {
        "vmid": vmid, "name": conf.get("hostname", f"CT{vmid}"), "type": "lxc",
        "status": "running" if running else "stopped", "template": 1 if conf.get("template") == "1" else 0,
        "maxmem": int(conf.get("memory", 512)) * 1024 * 1024,
        "maxswap": int(conf.get("swap", 512)) * 1024 * 1024,
        "maxdisk": _size_bytes(size.group(1)) if size else 0,
        "cpus": int(conf.get("cores", 0)) or 1, "uptime": 0, "cpu": 0, "mem": 0, "disk": 0,
        "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    }
    if conf.get("tags"):
        out["tags"] = conf["tags"]
    if conf.get("lock"):
        out["lock"] = conf["lock"]
    return out


@route("/nodes/{node}/lxc", "GET")
def lxc_list(req: Request) -> list[dict[str, Any]]:
    # only CTs the caller may VM.Audit (pve-container src/PVE/API2/LXC.pm:129@94f5585)
    return [s for v in req.api.store.vmids()
            if req.may(f"/vms/{v}", ["VM.Audit"]) and (s := ct_summary(req.api, v))]


@route("/nodes/{node}/lxc", "POST")
def lxc_create(req: Request) -> str:
    return ctcreate.create(req)


@route("/nodes/{node}/lxc/{vmid}", "GET")
def lxc_index(req: Request) -> list[dict[str, str]]:
    load(req)
    return [{"subdir": s} for s in ("config", "pending", "status", "snapshot", "firewall", "rrd",
                                    "rrddata", "vncproxy", "termproxy", "migrate", "feature")]


@route("/nodes/{node}/lxc/{vmid}", "DELETE")
def lxc_destroy(req: Request) -> str:
    vmid = req.vmid()
    conf = load(req).values
    force = str(req.params.get("force", "0")) == "1"
    running_msg = f"unable to destroy CT {vmid} - container is running"
    if conf.get("lock"):
        raise ApiError(f"CT is locked ({conf['lock']})")
    if conf.get("protection") == "1":
        raise ApiError(f"can't remove CT {vmid} - protection mode enabled")
    if not force and is_running(req.api, vmid):
        raise ApiError(running_msg)
    api = req.api

    def work(log: TaskLog) -> None:
        with api.store.lock(vmid):
            current = api.store.load(vmid)
            if is_running(api, vmid):
                if not force:
                    raise SimTaskError(running_msg)
                api.backend.stop(vmid, log)
            api.backend.destroy(vmid, current.main.as_dict(), log)
            api.store.remove(vmid)

    return api.tasks.start("vzdestroy", str(vmid), req.user, work)


@route("/nodes/{node}/lxc/{vmid}/config", "GET")
def config_get(req: Request) -> dict[str, Any]:
    if req.params.get("snapshot") and str(req.params.get("current", "0")) == "1":
        msg = "cannot use 'snapshot' parameter with 'current'"
        raise ApiError("Parameter verification failed.", status=400,
                       errors={"snapshot": msg, "current": msg})
    pve = load(req)
    if req.params.get("snapshot"):
        snap = pve.snapshots.get(str(req.params["snapshot"]))
        if snap is None:
            raise ApiError(f"snapshot '{req.params['snapshot']}' does not exist")
        section = snap
    elif str(req.params.get("current", "0")) == "1":
        section = pve.main
    else:
        merged = dict(pve.values)
        merged.update({k: v for k, v in pve.pending.values.items() if k != "delete"})
        for key in pve.pending_delete():
            merged.pop(key, None)
        section = Section(merged, pve.main.lxc)
    out: dict[str, Any] = {k: _typed(req.api.version, k, v) for k, v in section.values.items()}
    if section.lxc:
        out["lxc"] = [[k, v] for k, v in section.lxc]
    out["digest"] = pve.digest
    return out


def _typed(version: str, key: str, value: str) -> Any:
    """PVE returns integer, boolean and number config values as JSON numbers (its parser
    converts them on load); the schema says which keys those are."""
    prop = config_format(version, key) or {}
    typ = prop.get("type") if key not in ("snaptime",) else "integer"
    if typ in ("integer", "boolean") and re.fullmatch(r"-?\d+", value):
        return int(value)
    if typ == "number" and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return float(value) if "." in value else int(value)
    return value


@route("/nodes/{node}/lxc/{vmid}/config", "PUT")
def config_put(req: Request) -> None:
    vmid = req.vmid()
    load(req)
    reserved = {"node", "vmid", "digest", "delete", "revert"}
    params = {k: str(v) if not isinstance(v, bool) else ("1" if v else "0")
              for k, v in req.params.items() if k not in reserved}
    update = Update(params=params, delete=split_list(str(req.params.get("delete", ""))),
                    revert=split_list(str(req.params.get("revert", ""))),
                    digest=req.params.get("digest"))
    hotplug = getattr(req.api.backend, "hotplug", None)
    update_config(req.api.store, vmid, update, user=req.user, running=is_running(req.api, vmid),
                  version=req.api.version, node=req.api.node, access=req.acl(), hotplug=(
                      (lambda key, value: hotplug(vmid, key, value)) if hotplug else None))
    return None


@route("/nodes/{node}/lxc/{vmid}/pending", "GET")
def pending_get(req: Request) -> list[dict[str, Any]]:
    items = pending_view(load(req))
    for item in items:
        for field in ("value", "pending"):
            if field in item:
                item[field] = _typed(req.api.version, str(item["key"]), str(item[field]))
    return items
