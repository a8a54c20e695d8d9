"""devN passthrough at container start, as pve-container's pre-start hook does it.

For each ``devN`` the host node is stat()ed *now* (so a dynamic major such as
nvidia-uvm's is whatever the host has at this start), a node with that
major:minor is made under ``<lxc dir>/passthrough/`` with the container-side
uid/gid (shifted for unprivileged CTs) and mode, then bind-mounted into the CT,
and the devices cgroup (v1 key: this VM runs cgroup v1) allows it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from provisioner.sim.backend_base import SimTaskError
from provisioner.sim.lxcconf import ID_SHIFT, parse_prop


def dev_entries(conf: dict[str, str]) -> list[dict[str, str]]:
    """The parsed devN values, in index order."""
    keys = sorted((k for k in conf if re.fullmatch(r"dev\d+", k)), key=lambda k: int(k[3:]))
    return [parse_prop(conf[k], "path") for k in keys]


def has_nvidia(conf: dict[str, str]) -> bool:
    return any(e.get("path", "").startswith("/dev/nvidia") for e in dev_entries(conf))


def prepare(conf: dict[str, str], passthrough: Path) -> list[str]:
    """Make the passthrough nodes; return the LXC config lines. Raises PVE's error text."""
    shutil.rmtree(passthrough, ignore_errors=True)
    unpriv = conf.get("unprivileged", "0") == "1"
    lines: list[str] = []
    for entry in dev_entries(conf):
        path = entry.get("path", "")
        try:
            st = os.stat(path)
        except OSError:
            raise SimTaskError(f"Could not get mode or device ID of {path}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise SimTaskError(f"{path} is not a device")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        node = passthrough / path.lstrip("/")
        node.parent.mkdir(parents=True, exist_ok=True)
        mode = int(entry["mode"], 8) if "mode" in entry else stat.S_IMODE(st.st_mode)
        os.mknod(node, (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | mode, st.st_rdev)
        os.chmod(node, mode)  # mknod honours the umask
        uid, gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
        if unpriv:
            uid, gid = uid + ID_SHIFT, gid + ID_SHIFT
        os.chown(node, uid, gid)
        access = "r" if entry.get("deny-write") == "1" else "rw"
        lines.append(f"lxc.cgroup.devices.allow = {kind} {major}:{minor} {access}")
        lines.append(f"lxc.mount.entry = {node} {path.lstrip('/')} none bind,create=file 0 0")
    return lines
