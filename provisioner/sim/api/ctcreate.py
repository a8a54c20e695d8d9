"""``POST /nodes/{node}/lxc``: create a container like pve-container's create_vm.

Synchronous part (errors are HTTP errors): the vmid must be free, root-only keys
checked, config values checked like a PUT on a stopped CT. Then a ``vzcreate``
task: the backend materialises the rootfs from the template, root's password
and SSH keys are written into it, the config loses its ``lock: create``. A failed
task removes the config again. ``unprivileged`` defaults to 1 on PVE 9, 0 on PVE 8.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from provisioner.sim.api.server import ApiError, Request
from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve import storage
from provisioner.sim.pve.conf import PveConf
from provisioner.sim.pve.ct_permissions import mountpoint_type, parse_key
from provisioner.sim.pve.rules import (
    RuleError,
    allocate_volume,
    apply_pending_stopped,
    check_modify_perm,
    prepare_value,
)
from provisioner.sim.pve.tasks import TaskLog

_NOT_CONFIG = {"node", "vmid", "ostemplate", "password", "ssh-public-keys", "storage", "force",
               "restore", "unique", "pool", "ignore-unpack-errors", "bwlimit", "start",
               "ha-managed", "unprivileged"}


def _flag(params: dict[str, Any], key: str) -> bool | None:
    if key not in params:
        return None
    return str(params[key]) in ("1", "True", "true")


def _os_type(template: Path) -> str:
    name = template.name.split("-")[0].lower()
    return name if name in ("debian", "ubuntu", "alpine", "centos", "fedora", "archlinux") else "unmanaged"


def _set_credentials(root: Path, password: str | None, keys: str | None, log: TaskLog) -> None:
    """Write root's password hash and authorized_keys into the new rootfs (never logged)."""
    if keys:
        ssh = root / "root" / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        ssh.chmod(0o700)
        (ssh / "authorized_keys").write_text(keys.strip() + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        log("setting ssh public keys for root")
    if password:
        shadow = root / "etc" / "shadow"
        if shadow.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt as _crypt
                hashed = _crypt.crypt(password, _crypt.mksalt(_crypt.METHOD_SHA512))
            lines = shadow.read_text().splitlines()
            lines = [f"root:{hashed}:" + ":".join(ln.split(":")[2:]) if ln.startswith("root:") else ln
                     for ln in lines]
            shadow.write_text("\n".join(lines) + "\n")
            log("setting root password")


def _owner(api: Any, vmid: int) -> str:
    """The node that has ``vmid`` (this one or, in a cluster, another), "" when it is free."""
    from provisioner.sim.pve import cluster
    if api.store.exists(vmid):
        return api.node
    return cluster.vmid_nodes(api.sim_root).get(vmid, "")


def create(req: Request) -> str:
    """The synchronous checks of create_vm, in its order (pve-container src/PVE/API2/LXC.pm:
    250-361@94f5585; 8.4: stable-bookworm @6475873)."""
    api, params = req.api, req.params
    vmid = req.vmid()
    unprivileged = _flag(params, "unprivileged")
    if unprivileged is None:
        # pve-container 6.0.6 made unprivileged the default; 8.4 (5.x) still defaults to 0
        unprivileged = api.version != "8.4"
    if not unprivileged and api.version != "8.4":
        # a privileged CT needs Sys.Modify on / (LXC.pm:272-273; since pve-container 6.0.6,
        # debian/changelog — REFERENCE §1 says 6.0.5; 8.4 has no such check)
        req.check("/", ["Sys.Modify"])
    owner = _owner(api, vmid)
    if owner:  # PVE::Cluster::check_vmid_unused: vmids are cluster-wide
        raise ApiError(f"CT {vmid} already exists on node '{owner}'")
    if not req.may(f"/vms/{vmid}", ["VM.Allocate"]):
        raise ApiError("Permission check failed", status=403)  # raise_perm_exc() without a path (LXC.pm:295-310)
    config = {k: (("1" if v else "0") if isinstance(v, bool) else str(v))
              for k, v in params.items() if k not in _NOT_CONFIG}
    check_modify_perm(req.user, {}, config, [], unprivileged, api.version, vmid=vmid, access=req.acl())
    # the template: Datastore.Allocate, or at least read access to its storage
    # (pve-storage src/PVE/Storage.pm check_volume_access@0c56bad)
    tsid = str(params["ostemplate"]).split(":", 1)[0]
    if not req.may(f"/storage/{tsid}", ["Datastore.Allocate"]):
        req.check(f"/storage/{tsid}", ["Datastore.AllocateSpace", "Datastore.Audit"], any_of=True)
    default_storage = str(params.get("storage", "local"))
    config.setdefault("rootfs", f"{default_storage}:4")
    conf = PveConf()
    # volumes first, rootfs before mpN (PVE's create_disks order), so disk numbers match PVE
    for key in sorted((k for k in config if k == "rootfs" or re.fullmatch(r"mp\d+", k)),
                      key=lambda k: (k != "rootfs", k)):
        value = config.pop(key)
        if re.fullmatch(r"\d+(\.\d+)?", value):
            value = f"{default_storage}:{value}"
        volume = parse_key(key, value, api.version).get("volume", "")
        if mountpoint_type(volume) == "volume":
            sid = volume.split(":", 1)[0]
            if "rootdir" not in storage.check_storage(sid)["content"]:
                raise ApiError("Parameter verification failed.", status=400, errors={
                    "storage": f"storage '{sid}' does not support container directories"})
            req.check(f"/storage/{sid}", ["Datastore.AllocateSpace"])  # LXC.pm:343-361
        conf.values[key] = allocate_volume(vmid, conf.values, key, value, api.version)
    for key, value in sorted(config.items()):
        conf.pending.values[key] = prepare_value(vmid, {}, key, value, api.version)
    apply_pending_stopped(conf, api.version, vmid=vmid)
    conf.values.update(arch=conf.values.get("arch", "amd64"), lock="create")
    conf.values.setdefault("hostname", f"CT{vmid}")
    if unprivileged:
        conf.values["unprivileged"] = "1"
    ostemplate = str(params["ostemplate"])
    password = params.get("password")
    keys = params.get("ssh-public-keys")
    start_after = _flag(params, "start") or False
    with api.store.lock(vmid):
        owner = _owner(api, vmid)
        if owner:
            raise ApiError(f"unable to create CT {vmid} - CT {vmid} already exists on node '{owner}'")
        api.store.save(vmid, conf)

    def work(log: TaskLog) -> None:
        try:
            template = storage.template_path(api.sim_root, ostemplate)
            log(f"extracting archive '{template}'")
            with api.store.lock(vmid):
                current = api.store.load(vmid)
                current.values["ostype"] = current.values.get("ostype") or _os_type(template)
                values = {k: v for k, v in current.values.items() if k != "lock"}
                api.backend.create(vmid, values, template, log)
                if password or keys:
                    root = api.backend.mount(vmid, values)
                    try:
                        _set_credentials(Path(root), password, keys, log)
                    finally:
                        api.backend.unmount(vmid)
                current.values.pop("lock", None)
                api.store.save(vmid, current)
        except (RuleError, SimTaskError, OSError, RuntimeError) as exc:
            api.store.remove(vmid)
            message = exc.message if isinstance(exc, RuleError) else str(exc)
            raise SimTaskError(f"unable to create CT {vmid} - {message}") from exc
        if start_after:
            from provisioner.sim.api.status import start_work
            start_work(api, vmid, log)

    def undo() -> None:
        with api.store.lock(vmid):
            api.store.remove(vmid)

    return api.tasks.start("vzcreate", str(vmid), req.user, work, on_injected_failure=undo)
