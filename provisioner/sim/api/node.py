"""Node- and cluster-level endpoints of the simulated API: version, login, tasks, templates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from provisioner.sim.api.server import REPOID, ApiError, Request, route
from provisioner.sim.pve import aplinfo, storage
from provisioner.sim.pve.access import AuthFailure
from provisioner.sim.pve.rules import param_error
from provisioner.sim.pve.tasks import TaskLog, parse_upid


@route("/version", "GET")
def version(req: Request) -> dict[str, Any]:
    return {"version": req.api.full_version(), "release": req.api.version,
            "repoid": REPOID[req.api.version]}


@route("/access/ticket", "GET")
def ticket_index(req: Request) -> None:
    return None


@route("/access/ticket", "POST")
def ticket(req: Request) -> dict[str, Any]:
    auth = req.api.auth
    try:
        user = auth.check_password(str(req.params["username"]), str(req.params["password"]),
                                   req.params.get("realm"))
    except AuthFailure:
        raise ApiError("authentication failure", status=401) from None
    return {"username": user, "ticket": auth.make_ticket(user),
            "CSRFPreventionToken": auth.make_csrf(user), "clustername": None,
            "cap": {"vms": {"VM.Allocate": 1, "VM.Config.Disk": 1, "VM.PowerMgmt": 1},
                    "nodes": {"Sys.Modify": 1}, "storage": {"Datastore.AllocateTemplate": 1}}}


@route("/nodes", "GET")
def nodes(req: Request) -> list[dict[str, Any]]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    members = req.api.members() or {req.api.node: {"fingerprint": req.api.fingerprint}}
    out = []
    for name in sorted(members):
        fingerprint = req.api.fingerprint if name == req.api.node else members[name].get("fingerprint", "")
        online = name == req.api.node or _port_open(int(members[name].get("api_port", 0)))
        entry = {"node": name, "status": "online" if online else "offline", "type": "node",
                 "id": f"node/{name}", "ssl_fingerprint": fingerprint}
        if online:  # PVE lists an offline node with its status only
            entry.update({"level": "", "maxcpu": os.cpu_count() or 1, "cpu": 0.01, "maxmem": mem,
                          "mem": mem // 4, "uptime": 3600})
        out.append(entry)
    return out


def _port_open(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.3)
        return port > 0 and s.connect_ex(("127.0.0.1", port)) == 0


def _used_vmids(req: Request) -> set[int]:
    """Cluster-wide in a cluster (sim/cluster.py), else this node's."""
    from provisioner.sim.pve import cluster
    return set(req.api.store.vmids()) | set(cluster.vmid_nodes(req.api.sim_root))


@route("/cluster/nextid", "GET")
def nextid(req: Request) -> int:
    used = _used_vmids(req)
    if "vmid" in req.params:
        vmid = int(req.params["vmid"])
        if vmid in used:
            raise param_error({"vmid": f"VM {vmid} already exists"})  # Cluster.pm:1039
        return vmid
    # datacenter.cfg next-id defaults: [100, 1000000) (pve-manager PVE/API2/Cluster.pm:1044-1052@14a22df)
    for vmid in range(100, 1_000_000):
        if vmid not in used:
            return vmid
    raise ApiError("unable to get any free VMID in range [100, 1000000]")


@route("/cluster/resources", "GET")
def resources(req: Request) -> list[dict[str, Any]]:
    from provisioner.sim.api.lxc import ct_summary
    kind = req.params.get("type")
    out: list[dict[str, Any]] = []
    # Guests the caller may not VM.Audit are left out silently, storages without
    # Datastore.Audit too (pve-manager PVE/API2/Cluster.pm:588 and 647@14a22df): a token
    # without ACLs sees an empty cluster, not an error.
    if kind in (None, "vm"):
        for vmid in req.api.store.vmids():
            entry = ct_summary(req.api, vmid)
            if entry:
                out.append({**entry, "id": f"lxc/{vmid}", "node": req.api.node})
        out.extend(_other_members_guests(req))
        out = [e for e in out if req.may(f"/vms/{e['vmid']}", ["VM.Audit"])]
    if kind in (None, "node"):
        out.extend(nodes(req))
    if kind in (None, "storage"):
        for sid, cfg in storage.STORAGES.items():
            if not req.may(f"/storage/{sid}", ["Datastore.Audit"]):
                continue
            out.append({"id": f"storage/{req.api.node}/{sid}", "type": "storage", "storage": sid,
                        "node": req.api.node, "status": "available", "plugintype": cfg["type"],
                        "content": cfg["content"], "shared": 0})
    return out


def _other_members_guests(req: Request) -> list[dict[str, Any]]:
    """Guests of the other cluster members (real PVE has them from pmxcfs + pvestatd's broadcast;
    the sim reads the shared configs and asks the member's LXC for the state)."""
    from types import SimpleNamespace

    from provisioner.sim.api.lxc import ct_summary
    from provisioner.sim.lxc.backend import LxcBackend
    from provisioner.sim.pve.conf import ConfStore
    out: list[dict[str, Any]] = []
    for name, member in sorted(req.api.members().items()):
        if name == req.api.node or not Path(member["sim_root"]).exists():
            continue
        root = Path(member["sim_root"])
        view = SimpleNamespace(store=ConfStore(root), backend=LxcBackend(root))
        for vmid in view.store.vmids():
            entry = ct_summary(view, vmid)
            if entry:
                out.append({**entry, "id": f"lxc/{vmid}", "node": name})
    return out


def _task_or_404(req: Request) -> dict[str, Any]:
    upid = str(req.params["upid"])
    try:
        parse_upid(upid)
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    status = req.api.tasks.status(upid)
    if status is None:
        raise ApiError(f"no such task: {upid}", status=404)
    _check_task_access(req, status)
    return status


def task_owner(task: dict[str, Any], authid: str) -> bool:
    """A token sees its own tasks; a user its own and its tokens' (pve-manager
    PVE/API2/Tasks.pm:27-37@14a22df)."""
    owner = str(task.get("user", ""))
    return authid == owner or ("!" in owner and authid == owner.split("!", 1)[0])


def _check_task_access(req: Request, task: dict[str, Any]) -> None:
    """Someone else's task needs Sys.Audit on /nodes/<node> (Tasks.pm:324, 405, 527)."""
    if not task_owner(task, req.user):
        req.check(f"/nodes/{req.params['node']}", ["Sys.Audit"])


@route("/nodes/{node}/tasks", "GET")
def tasks(req: Request) -> list[dict[str, Any]]:
    out = []
    auditor = req.may(f"/nodes/{req.params['node']}", ["Sys.Audit"])
    for t in req.api.tasks.list():
        if not (auditor or task_owner(t, req.user)):
            continue
        item = {k: t[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user")}
        if t.get("status") == "stopped":
            item.update(endtime=t.get("endtime"), status=t.get("exitstatus"))
        out.append(item)
    return out


@route("/nodes/{node}/tasks/{upid}", "GET")
def task_index(req: Request) -> list[dict[str, str]]:
    _task_or_404(req)
    return [{"name": "log"}, {"name": "status"}]


@route("/nodes/{node}/tasks/{upid}", "DELETE")
def task_stop(req: Request) -> None:
    _task_or_404(req)
    return None


@route("/nodes/{node}/tasks/{upid}/status", "GET")
def task_status(req: Request) -> dict[str, Any]:
    status = dict(_task_or_404(req))
    user, _, token = str(status["user"]).partition("!")
    status["user"] = user
    if token:
        status["tokenid"] = token
    status.pop("endtime", None)
    if status["status"] != "stopped":
        status.pop("exitstatus", None)
    return status


@route("/nodes/{node}/tasks/{upid}/log", "GET")
def task_log(req: Request) -> list[dict[str, Any]]:
    _task_or_404(req)
    lines = req.api.tasks.log(str(req.params["upid"]))
    start = int(req.params.get("start", 0))
    limit = int(req.params.get("limit", 50))
    if not lines:
        # an empty log reads as one line "no content" (an ExtJS workaround in pve-common
        # src/PVE/Tools.pm:791-795 dump_logfile@f665029), whatever start says
        req.result_attrs["total"] = 1
        return [{"n": 1, "t": "no content"}]
    if limit == 0:
        limit = len(lines)
    req.result_attrs["total"] = len(lines)
    return [{"n": i + 1, "t": lines[i]} for i in range(start, min(len(lines), start + limit))]


@route("/nodes/{node}/aplinfo", "GET")
def aplinfo_index(req: Request) -> list[dict[str, str]]:
    return aplinfo.index()


@route("/nodes/{node}/aplinfo", "POST")
def aplinfo_download(req: Request) -> str:
    name = str(req.params["template"])
    entry = aplinfo.find(name)
    if entry is None:
        raise param_error({"template": "no such template"})
    sid = str(req.params["storage"])
    cfg = storage.check_storage(sid)
    if "vztmpl" not in cfg["content"]:
        raise ApiError(f"storage '{sid}' does not support templates")
    dest = storage.template_dir(req.api.sim_root, sid) / name
    backend = req.api.backend

    def work(log: TaskLog) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        log(f"downloading {entry['location']} to {dest}")
        tmp = dest.with_name(dest.name + ".tmp_dwnl")
        provide = getattr(backend, "provide_template", None)
        if provide is None:
            raise RuntimeError("download failed: the simulated node has no template source")
        provide(name, tmp, log)
        os.replace(tmp, dest)
        log(f"download of '{entry['location']}' to '{dest}' finished")

    return req.api.tasks.start("download", name, req.user, work)


@route("/nodes/{node}/storage", "GET")
def storage_index(req: Request) -> list[dict[str, Any]]:
    usage = shutil.disk_usage(req.api.sim_root)
    # "Only list entries where you have 'Datastore.Audit' or 'Datastore.AllocateSpace'" (schema)
    return [{"storage": sid, "type": cfg["type"], "content": cfg["content"], "active": 1,
             "enabled": 1, "shared": 0, "total": usage.total, "used": usage.used,
             "avail": usage.free} for sid, cfg in storage.STORAGES.items()
            if req.may(f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"], any_of=True)]


@route("/access/permissions", "GET")
def permissions(req: Request) -> dict[str, dict[str, int]]:
    """Effective permissions of the caller (or of its own token), pve-access-control
    src/PVE/API2/AccessControl.pm:509-568@5ccd07d: with ``path`` that path only (even when
    empty), else every default and ACL path where something is held."""
    userid = str(req.params.get("userid") or req.user)
    if userid != req.user and userid.split("!", 1)[0] != req.user:
        req.check("/access", ["Sys.Audit"])
    acl = req.acl()
    path = req.params.get("path")
    if path:
        return {str(path): {p: int(v) for p, v in sorted(acl.permissions(userid, str(path)).items())}}
    return acl.effective(userid)


@route("/nodes/{node}/storage/{storage}/content", "GET")
def storage_content(req: Request) -> list[dict[str, Any]]:
    sid = str(req.params["storage"])
    storage.check_storage(sid)
    content = req.params.get("content")
    out: list[dict[str, Any]] = []
    if content in (None, "vztmpl"):
        out.extend(storage.template_content(req.api.sim_root, sid))
    if content in (None, "rootdir", "images") and sid == "local-lvm":
        for vmid in req.api.store.vmids():
            out.append({"volid": f"{sid}:vm-{vmid}-disk-0", "content": "rootdir", "format": "raw",
                        "vmid": vmid, "size": 0, "ctime": int(Path(req.api.store.path(vmid)).stat().st_mtime)})
    return out
