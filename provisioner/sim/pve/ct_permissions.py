"""Who may change which container key: pve-container's ``check_ct_modify_config_perm``.

pve-container src/PVE/LXC.pm:1655-1756@94f5585 (8.4: stable-bookworm src/PVE/LXC.pm:1507@6475873):
``root@pam`` may do anything; PVE compares the auth id literally, so an API token never counts
as root, not even ``root@pam!name``. Everyone else needs, on ``/vms/<vmid>``:
VM.Config.CPU (cores/cpuunits/cpulimit), VM.Config.Disk (rootfs/mpN, plus
Datastore.AllocateSpace on the storage of a new volume), VM.Config.Memory (memory/swap),
VM.Config.Network (netN, nameserver, searchdomain, hostname; netN also SDN.Use on its bridge),
VM.Config.Options (tags and everything else), VM.Allocate to toggle ``nesting``.
Root-only whoever asks: devN, bind/device mount points, the hookscript, feature flags of a
privileged CT, and any feature flag but ``nesting`` — compared flag by flag between the old and
the new value, so *removing* ``keyctl`` counts as a change. The messages are PVE's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from provisioner.pveschema import config_format
from provisioner.pveschema.propstring import PropertyStringError, split_property_string
from provisioner.sim.pve.errors import perm_error

if TYPE_CHECKING:
    from provisioner.sim.pve.acl import Access

ROOT = "root@pam"
NEW_DISK_RE = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?)", re.I)


def parse_key(key: str, value: str, version: str) -> dict[str, str]:
    """Split a property-string config value; ``{}`` if it does not parse (checked elsewhere)."""
    prop = config_format(version, key)
    if prop is None or not isinstance(prop.get("format"), dict):
        return {}
    try:
        return split_property_string(prop["format"], value)
    except PropertyStringError:
        return {}


def is_root(user: str) -> bool:
    """PVE compares the auth id literally: ``root@pam!token`` is not root."""
    return user == ROOT


def mountpoint_type(volume: str) -> str:
    """PVE's classify_mountpoint: ``volume``, ``bind`` (host path) or ``device`` (under /dev/)."""
    if volume.startswith("/"):
        return "device" if volume.startswith("/dev/") else "bind"
    return "volume"


def features_changed(old: str | None, new: str | None, version: str) -> tuple[bool, bool]:
    """(nesting changed, another flag changed), compared the way LXC.pm:1690-1726 does:
    flag by flag with ``old // ''`` vs ``new // ''`` (so ``keyctl=0`` differs from no ``keyctl``);
    ``new`` None is a delete, judged by the old value alone."""
    if new is None:
        keys = set(parse_key("features", old or "", version))
        return keys == {"nesting"}, bool(keys - {"nesting"})
    now = parse_key("features", new, version)
    if old:
        before = parse_key("features", old, version)
        nesting = other = False
        for flag in [*before, *now]:
            if before.get(flag, "") != now.get(flag, ""):
                if flag == "nesting":
                    nesting = True
                else:
                    return nesting, True
        return nesting, other
    return set(now) == {"nesting"}, bool(set(now) - {"nesting"})


def _bridges(value: str, version: str) -> list[str]:
    """The SDN paths a netN needs SDN.Use on (GuestHelpers.pm check_vnet_access:397-421@4a8f6cb):
    ``/sdn/zones/localnetwork/<bridge>`` (``/<tag>`` with a VLAN tag)."""
    net = parse_key("net0", value, version)
    bridge = net.get("bridge")
    if not bridge:
        return []
    base = f"/sdn/zones/localnetwork/{bridge}"
    return [f"{base}/{net['tag']}" if net.get("tag") else base]


def check_modify_perm(user: str, conf: dict[str, str], new: dict[str, str], delete: list[str],
                      unprivileged: bool, version: str, *, vmid: int = 0,
                      access: "Access | None" = None) -> None:
    """check_ct_modify_config_perm. ``access`` None checks only the root-only rules."""
    if is_root(user):
        return
    vm = f"/vms/{vmid}"

    def need(privs: list[str], path: str = vm) -> None:
        if access is not None:
            access.check(user, path, privs)

    def check(opt: str, deleting: bool) -> None:
        if opt in ("cores", "cpuunits", "cpulimit"):
            need(["VM.Config.CPU"])
        elif opt == "rootfs" or re.fullmatch(r"mp\d+", opt):
            need(["VM.Config.Disk"])
            if deleting:
                return
            volume = parse_key(opt, new[opt], version).get("volume", "")
            kind = mountpoint_type(volume)
            if kind != "volume":
                raise perm_error(f"mount point type {kind} is only allowed for root@pam")
            m = NEW_DISK_RE.fullmatch(volume)
            if m:
                need(["Datastore.AllocateSpace"], f"/storage/{m.group(1)}")
        elif opt in ("memory", "swap"):
            need(["VM.Config.Memory"])
        elif re.fullmatch(r"net\d+", opt):
            need(["VM.Config.Network"])
            for value in (conf.get(opt), None if deleting else new.get(opt)):
                for path in _bridges(value or "", version):
                    need(["SDN.Use"], path)
        elif re.fullmatch(r"dev\d+", opt):
            raise perm_error("configuring device passthrough is only allowed for root@pam")
        elif opt in ("nameserver", "searchdomain", "hostname"):
            need(["VM.Config.Network"])
        elif opt == "features":
            if not unprivileged:
                raise perm_error("changing feature flags for privileged container is only "
                                 "allowed for root@pam")
            nesting, other = features_changed(conf.get("features"), None if deleting else new[opt], version)
            if other:
                raise perm_error("changing feature flags (except nesting) is only allowed "
                                 "for root@pam")
            if nesting:
                need(["VM.Allocate"])
        elif opt == "hookscript":
            raise perm_error("changing the hookscript is only allowed for root@pam")
        else:  # tags too: datacenter.cfg's default user-tag-access is free-form (GuestHelpers.pm:314)
            need(["VM.Config.Options"])

    for opt in new:
        check(opt, False)
    for opt in delete:
        check(opt, True)
