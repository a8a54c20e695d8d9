"""PUT-config semantics of a PVE container, shared by the simulated API and ``pct set``.

Mirrors pve-container's ``update_vm`` / ``update_pct_config``: digest check,
``delete``/``revert`` lists, root-only keys (``check_ct_modify_config_perm``),
values written to ``[pve:pending]`` first, then applied at once on a stopped CT,
or hot-plugged where PVE can on a running one (the rest stays pending until
the next start, which folds it in with ``apply_pending``). Messages are PVE's.

Per version: PVE 9 (pve-container 6) hot-plugs a *new* ``devN`` into a running
CT; PVE 8 (pve-container 5) keeps it pending.

Values are stored as PVE stores them: tags normalised, ``netN`` re-printed with
``type=veth`` and a generated ``hwaddr``, ``STORAGE:SIZE`` volumes allocated as
``STORAGE:vm-<vmid>-disk-<n>,size=<SIZE>G``; other values verbatim.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from provisioner.pveschema import config_format, format_property_string, resolve_version, split_list
from provisioner.sim.pve import hookscript, storage
from provisioner.sim.pve.conf import ConfStore, PveConf
from provisioner.sim.pve.ct_permissions import ROOT, check_modify_perm, is_root, mountpoint_type, parse_key  # noqa: F401
from provisioner.sim.pve.errors import RuleError, param_error, perm_error  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from provisioner.sim.pve.acl import Access

#: applied at once even on a running CT (LXC_FASTPLUG_OPTIONS)
FASTPLUG = {"description", "onboot", "startup", "protection", "hostname", "hookscript",
            "cores", "tags", "lock"}
REQUIRED = {"memory", "rootfs", "ostype"}
DIGEST_MISMATCH = "detected modified configuration - file changed by other user? Try again."

#: hot-plug callback: (key, value) -> None, raising with the reason on failure
Hotplug = Callable[[str, str], None]


def normalise_tags(value: str) -> str:
    """PVE's get_unique_tags with the default tag style: lower-case, sorted, unique, ';'."""
    seen: list[str] = []
    for tag in sorted(split_list(value), key=str.lower):
        if tag.lower() not in seen:
            seen.append(tag.lower())
    return ";".join(seen)


def check_device(path: str) -> None:
    """PVE's get_device_mode_and_rdev, run on the host at PUT time."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RuleError(f"Device {path} does not exist") from None
    except OSError:
        raise RuleError(f"Error accessing device {path}") from None
    if not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
        raise RuleError(f"{path} is not a device")


def prepare_value(vmid: int, conf: dict[str, str], opt: str, value: str, version: str) -> str:
    """Per-key checks and normalisation of update_pct_config; returns the value stored."""
    if opt == "rootfs" or re.fullmatch(r"mp\d+", opt):
        if conf.get("protection") == "1":
            raise RuleError(f"can't update CT {vmid} drive '{opt}' - protection mode enabled")
        volume = parse_key(opt, value, version).get("volume", "")
        if mountpoint_type(volume) == "volume":
            check_rootdir_storage(volume)
    elif opt == "nameserver":
        return " ".join(split_list(value))
    elif opt == "searchdomain":
        return " ".join(split_list(value))
    elif opt == "unprivileged":
        raise RuleError(f"unable to modify read-only option: '{opt}'")
    elif opt == "tags":
        return normalise_tags(value)
    elif re.fullmatch(r"net\d+", opt):
        # parse_lxc_network gives a missing hwaddr a random one already here, so the pending
        # value (and what a running CT hot-plugs) carries the address it will keep
        return print_network(opt, value, version)
    elif re.fullmatch(r"dev\d+", opt):
        # parse_device dies before update_pct_config's own "Path is not defined" check can
        # (pve-container src/PVE/LXC/Config.pm:1524-1538 and 1376-1383@94f5585)
        path = parse_key(opt, value, version).get("path")
        if path is None:
            raise RuleError("Path has to be defined")
        check_device(path)
    return value


def check_devices_exist(conf: dict[str, str]) -> None:
    """update_lxc_config, which the PUT runs after writing the config and vm_start before
    lxc-start: every devN of the config is stat()ed, a missing node dies with
    ``Device <path> does not exist`` (pve-container src/PVE/LXC.pm:769-785 and
    src/PVE/LXC/Tools.pm:157-167@94f5585; 8.4: stable-bookworm src/PVE/LXC.pm:716-719@6475873).
    So once a host node is gone, every later config PUT fails too."""
    for key in sorted((k for k in conf if re.fullmatch(r"dev\d+", k)), key=lambda k: int(k[3:])):
        path = split_list_first(conf[key])
        if path is None:
            raise RuleError(f"Path is not defined for passthrough device {key}")
        check_device(path)


def split_list_first(value: str) -> str | None:
    """The ``path`` of a devN value (``[path=]<path>,...``), None when it has none."""
    for part in value.split(","):
        if part.startswith("path="):
            return part[5:]
        if "=" not in part and part:
            return part
    return None


def _cleanup_pending(pve: PveConf) -> None:
    conf, pending = pve.values, pve.pending.values
    for opt in [k for k in pending if k != "delete"]:
        if opt in conf and conf[opt] == pending[opt]:
            del pending[opt]
    pve.set_pending_delete([k for k in pve.pending_delete() if k in conf])


def _remove_pending_delete(pve: PveConf, opt: str) -> None:
    pve.set_pending_delete([k for k in pve.pending_delete() if k != opt])


NEW_DISK_RE = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?)", re.I)


def check_rootdir_storage(volume: str) -> None:
    """update_pct_config's content check for a volume mount point."""
    sid = volume.split(":", 1)[0]
    if "rootdir" not in storage.check_storage(sid)["content"]:
        raise RuleError(f"storage '{sid}' does not allow content type 'rootdir' (Container)")


def allocate_volume(vmid: int, conf: dict[str, str], key: str, value: str, version: str) -> str:
    """``STORAGE:SIZE`` means "allocate SIZE GiB": name the new volume like PVE does."""
    parts = parse_key(key, value, version)
    m = NEW_DISK_RE.fullmatch(parts.get("volume", ""))
    if not m:
        return value
    in_use = " ".join(conf.values())
    n = next(i for i in range(10_000) if f"vm-{vmid}-disk-{i}" not in in_use)
    parts["volume"] = f"{m.group(1)}:vm-{vmid}-disk-{n}"
    size = float(m.group(2))
    parts["size"] = f"{int(size)}G" if size == int(size) else f"{int(size * 1024)}M"
    return format_property_string(key, parts, skip=("mp",) if key == "rootfs" else (), version=version)


#: PVE's default MAC prefix for generated addresses (datacenter.cfg ``mac_prefix``)
MAC_PREFIX = "BC:24:11"


def print_network(key: str, value: str, version: str) -> str:
    """parse_lxc_network + print: ``type=veth`` always, a random ``hwaddr`` if none given."""
    net = parse_key(key, value, version)
    net["type"] = "veth"
    if not net.get("hwaddr"):
        net["hwaddr"] = MAC_PREFIX + "".join(f":{b:02X}" for b in secrets.token_bytes(3))
    return format_property_string(key, net, version=version)


def _add_unused(conf: dict[str, str], volid: str) -> None:
    for i in range(256):
        if conf.get(f"unused{i}") == volid:
            return
    free = next(i for i in range(256) if f"unused{i}" not in conf)
    conf[f"unused{free}"] = volid


def apply_pending_stopped(pve: PveConf, version: str, selection: set[str] | None = None, *,
                          vmid: int = 0) -> dict[str, str]:
    """vmconfig_apply_pending: fold pending deletes and values into the config."""
    conf, pending = pve.values, pve.pending.values
    for opt in sorted(pve.pending_delete()):
        if selection is not None and opt not in selection:
            continue
        if re.fullmatch(r"mp\d+", opt) and opt in conf:
            volume = parse_key(opt, conf[opt], version).get("volume", "")
            if mountpoint_type(volume) == "volume":
                _add_unused(conf, volume)
        conf.pop(opt, None)
        _remove_pending_delete(pve, opt)
    _cleanup_pending(pve)
    for opt in sorted(k for k in pending if k != "delete"):
        if selection is not None and opt not in selection:
            continue
        value = pending.pop(opt)
        if re.fullmatch(r"net\d+", opt):
            value = print_network(opt, value, version)
        elif re.fullmatch(r"mp\d+|rootfs", opt):
            value = allocate_volume(vmid, conf, opt, value, version)
        conf[opt] = value
    return {}


def hotplug_pending(pve: PveConf, version: str, selection: set[str] | None,
                    hotplug: Hotplug | None, *, vmid: int = 0) -> dict[str, str]:
    """vmconfig_hotplug_pending: apply what PVE applies to a running CT; the rest stays."""
    conf, pending = pve.values, pve.pending.values
    errors: dict[str, str] = {}
    for opt in sorted(k for k in pending if k != "delete"):
        if (selection is None or opt in selection) and opt in FASTPLUG:
            conf[opt] = pending.pop(opt)
    for opt in sorted(pve.pending_delete()):
        if selection is not None and opt not in selection:
            continue
        if opt in FASTPLUG or re.fullmatch(r"unused\d+|net\d+", opt) or opt in ("swap", "cpulimit", "cpuunits"):
            conf.pop(opt, None)
            _remove_pending_delete(pve, opt)
    for opt in sorted(k for k in pending if k != "delete"):
        if selection is not None and opt not in selection:
            continue
        value = pending[opt]
        pluggable = (opt in ("cpulimit", "cpuunits", "memory", "swap")
                     or re.fullmatch(r"net\d+", opt)
                     or (re.fullmatch(r"mp\d+", opt) and opt not in conf)
                     or (re.fullmatch(r"dev\d+", opt) and opt not in conf and resolve_version(version) != "8.4"))
        if not pluggable:
            continue
        try:
            if re.fullmatch(r"net\d+", opt):
                value = print_network(opt, value, version)
            elif re.fullmatch(r"mp\d+", opt):
                value = allocate_volume(vmid, conf, opt, value, version)
            if hotplug is not None and re.fullmatch(r"(dev|mp|net)\d+", opt):
                hotplug(opt, value)
        except Exception as exc:  # noqa: BLE001 - PVE reports any hot-plug failure per key
            errors[opt] = f"unable to hotplug {opt}: {exc}"
            continue
        conf[opt] = value
        del pending[opt]
    return errors


@dataclass
class Update:
    """One PUT config request, already schema-validated."""

    params: dict[str, str]
    delete: list[str] = field(default_factory=list)
    revert: list[str] = field(default_factory=list)
    digest: str | None = None


def update_config(store: ConfStore, vmid: int, update: Update, *, user: str, running: bool,
                  version: str, node: str = "localhost", hotplug: Hotplug | None = None,
                  warn: Callable[[str], None] | None = None, access: "Access | None" = None) -> None:
    """Apply a PUT config like PVE: raises ``RuleError`` (400/403/500) with PVE's text.

    ``access``: the caller's privileges (None: only the root-only rules, as for ``pct``, which
    acts as root@pam anyway)."""
    if not update.params and not update.delete and not update.revert:
        raise RuleError("no options specified")
    with store.lock(vmid):
        try:
            pve = store.load(vmid)
        except FileNotFoundError:
            raise RuleError(f"Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist") from None
        conf = pve.values
        if conf.get("lock"):
            raise RuleError(f"CT is locked ({conf['lock']})")
        if update.digest and update.digest != pve.digest:
            raise RuleError(DIGEST_MISMATCH)
        unprivileged = conf.get("unprivileged") == "1"
        perm = dict(vmid=vmid, access=access)
        check_modify_perm(user, conf, {}, update.delete, unprivileged, version, **perm)
        check_modify_perm(user, conf, {}, update.revert, unprivileged, version, **perm)
        for opt in update.revert:
            if config_format(version, opt) is None:
                raise param_error({"revert": f"unknown option '{opt}'"})
            if opt in update.params:
                raise param_error({"revert": f"you can't use '-{opt}' and '-revert {opt}' at the same time"})
        for opt in update.delete:
            if config_format(version, opt) is None:
                raise param_error({"delete": f"unknown option '{opt}'"})
            if opt in update.params:
                raise param_error({"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"})
            if opt in update.revert:
                raise param_error({"delete": f"you can't use '-delete {opt}' and '-revert {opt}' at the same time"})
        check_modify_perm(user, conf, update.params, [], unprivileged, version, **perm)
        if update.params.get("hookscript"):  # src/PVE/LXC/Config.pm:1349-1350 (sim/pve/hookscript.py)
            hookscript.check(store.root.parent.parent, update.params["hookscript"])

        for opt in update.revert:
            pve.pending.values.pop(opt, None)
            _remove_pending_delete(pve, opt)
        modified: set[str] = set()
        for opt in update.delete:
            if opt not in conf and opt not in pve.pending.values:
                if warn:
                    warn(f"cannot delete '{opt}' - not set in current configuration!")
                continue
            modified.add(opt)
            if opt in REQUIRED:
                raise RuleError(f"unable to delete required option '{opt}'")
            if re.fullmatch(r"(unused|mp)\d+", opt) and conf.get("protection") == "1":
                raise RuleError(f"can't remove CT {vmid} drive '{opt}' - protection mode enabled")
            if opt == "unprivileged":
                raise RuleError(f"unable to delete read-only option: '{opt}'")
            pve.set_pending_delete(sorted(set(pve.pending_delete()) | {opt}))
        for opt in sorted(update.params):
            modified.add(opt)
            pve.pending.values[opt] = prepare_value(vmid, conf, opt, update.params[opt], version)
            _remove_pending_delete(pve, opt)
        _cleanup_pending(pve)
        if running:
            errors = hotplug_pending(pve, version, modified, hotplug, vmid=vmid)
        else:
            errors = apply_pending_stopped(pve, version, modified, vmid=vmid)
        if errors:
            # "don't write to config if we get any errors" (src/PVE/API2/LXC/Config.pm:250-252@94f5585)
            raise param_error(errors)
        store.save(vmid, pve)
        # written first, then update_lxc_config (Config.pm:253-256): a missing devN node fails
        # the request although the change is saved
        check_devices_exist(pve.values)


def apply_pending(store: ConfStore, vmid: int, version: str) -> dict[str, str]:
    """Fold ``[pve:pending]`` into the config before a start (PVE's vm_start does this).

    Returns the config values the container starts with (raw ``lxc.*`` lines under ``lxc``).
    """
    with store.lock(vmid):
        pve = store.load(vmid)
        if pve.pending.values:
            apply_pending_stopped(pve, version, vmid=vmid)
            store.save(vmid, pve)
        return pve.main.as_dict()


def pending_view(pve: PveConf) -> list[dict[str, object]]:
    """``GET .../pending`` (PVE's config_with_pending_array): one entry per key with
    ``value`` / ``pending`` / ``delete`` (1, or 2 when forced), ``digest`` included."""
    forced = {k[1:] for k in re.split(r"[,;\s]+", pve.pending.values.get("delete", "")) if k.startswith("!")}
    deleting = set(pve.pending_delete())
    current = {**pve.values, "digest": pve.digest}
    keys = set(current) | {k for k in pve.pending.values if k != "delete"} | deleting
    out: list[dict[str, object]] = []
    for key in sorted(keys):
        item: dict[str, object] = {"key": key}
        if key in current:
            item["value"] = current[key]
        if key in pve.pending.values:
            item["pending"] = pve.pending.values[key]
        if key in deleting:
            item["delete"] = 2 if key in forced else 1
        out.append(item)
    return out
