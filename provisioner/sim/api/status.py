"""Power endpoints of the simulated API: status index/current, start, stop, shutdown, reboot.

A start folds ``[pve:pending]`` into the config first (``rules.apply_pending``),
as PVE's vm_start does, then hands the resulting config to the backend.
"""

from __future__ import annotations

from typing import Any

from provisioner.sim.api.lxc import ct_summary, is_running, load
from provisioner.sim.api.server import ApiError, Request, route
from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve.rules import apply_pending
from provisioner.sim.pve.tasks import TaskLog


@route("/nodes/{node}/lxc/{vmid}/status", "GET")
def status_index(req: Request) -> list[dict[str, str]]:
    load(req)
    return [{"subcmd": s} for s in ("current", "start", "stop", "shutdown", "reboot",
                                    "suspend", "resume")]


@route("/nodes/{node}/lxc/{vmid}/status/current", "GET")
def status_current(req: Request) -> dict[str, Any]:
    load(req)
    summary = ct_summary(req.api, req.vmid()) or {}
    return {**summary, "ha": {"managed": 0}}


def start_work(api: Any, vmid: int, log: TaskLog, debug: bool = False) -> None:
    """vm_start's worker. A ``lock: mounted`` CT may start (pve-container
    src/PVE/API2/LXC/Status.pm:194-196@94f5585), any other lock refuses."""
    conf = api.store.load(vmid).values
    if conf.get("lock") and conf["lock"] != "mounted":
        raise SimTaskError(f"CT is locked ({conf['lock']})")
    values = apply_pending(api.store, vmid, api.version)
    api.backend.start(vmid, values, log, debug=debug)


@route("/nodes/{node}/lxc/{vmid}/status/start", "POST")
def start(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    conf = load(req).values
    if is_running(api, vmid):
        raise ApiError(f"CT {vmid} already running")
    if conf.get("template") == "1":
        raise ApiError("you can't start a CT if it's a template")
    debug = str(req.params.get("debug", "0")) in ("1", "true", "True")
    return api.tasks.start("vzstart", str(vmid), req.user, lambda log: start_work(api, vmid, log, debug))


@route("/nodes/{node}/lxc/{vmid}/status/stop", "POST")
def stop(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    load(req)
    if not is_running(api, vmid):
        raise ApiError(f"CT {vmid} not running")
    return api.tasks.start("vzstop", str(vmid), req.user, lambda log: api.backend.stop(vmid, log))


@route("/nodes/{node}/lxc/{vmid}/status/shutdown", "POST")
def shutdown(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    load(req)
    if not is_running(api, vmid):
        raise ApiError(f"CT {vmid} not running")
    timeout = int(req.params.get("timeout", 60))
    force = str(req.params.get("forceStop", "0")) == "1"

    def work(log: TaskLog) -> None:
        try:
            api.backend.shutdown(vmid, timeout, log)
        except SimTaskError:
            if not force:
                raise
            api.backend.stop(vmid, log)

    return api.tasks.start("vzshutdown", str(vmid), req.user, work)


@route("/nodes/{node}/lxc/{vmid}/status/reboot", "POST")
def reboot(req: Request) -> str:
    vmid, api = req.vmid(), req.api
    load(req)
    if not is_running(api, vmid):
        raise ApiError(f"VM {vmid} not running")
    timeout = int(req.params.get("timeout", 60))

    def work(log: TaskLog) -> None:
        api.backend.shutdown(vmid, timeout, log)
        start_work(api, vmid, log)

    return api.tasks.start("vzreboot", str(vmid), req.user, work)
