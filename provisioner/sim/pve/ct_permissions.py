"""Who may change which container key: pve-container's ``check_ct_modify_config_perm``.

PVE compares the auth id literally with ``root@pam``, so an API token never
counts as root, not even ``root@pam!name``. The simulated node grants every
other privilege to every authenticated caller (tokens are not privilege-separated),
so only the root-only rules can refuse; the messages are PVE's.
"""

from __future__ import annotations

import re

from provisioner.pveschema import config_format
from provisioner.pveschema.propstring import PropertyStringError, split_property_string
from provisioner.sim.pve.errors import perm_error

ROOT = "root@pam"


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


def check_modify_perm(user: str, conf: dict[str, str], new: dict[str, str], delete: list[str],
                      unprivileged: bool, version: str) -> None:
    """Root-only keys (pve-container ``check_ct_modify_config_perm``); tokens are never root."""
    if is_root(user):
        return

    def check(opt: str, deleting: bool) -> None:
        if opt == "rootfs" or re.fullmatch(r"mp\d+", opt):
            if deleting:
                return
            kind = mountpoint_type(parse_key(opt, new[opt], version).get("volume", ""))
            if kind != "volume":
                raise perm_error(f"mount point type {kind} is only allowed for root@pam")
        elif re.fullmatch(r"dev\d+", opt):
            raise perm_error("configuring device passthrough is only allowed for root@pam")
        elif opt == "features":
            if not unprivileged:
                raise perm_error("changing feature flags for privileged container is only "
                                 "allowed for root@pam")
            if deleting:
                changed = set(parse_key("features", conf.get("features", ""), version))
            else:
                old = parse_key("features", conf.get("features", ""), version) if conf.get("features") else {}
                now = parse_key("features", new[opt], version)
                changed = {k for k in set(old) | set(now) if old.get(k, "") != now.get(k, "")}
            if changed - {"nesting"}:
                raise perm_error("changing feature flags (except nesting) is only allowed "
                                 "for root@pam")
        elif opt == "hookscript":
            raise perm_error("changing the hookscript is only allowed for root@pam")

    for opt in new:
        check(opt, False)
    for opt in delete:
        check(opt, True)


