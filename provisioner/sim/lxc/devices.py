"""devN passthrough at container start, as pve-container's pre-start hook does it.

For each ``devN`` the host node is stat()ed *now* (so a dynamic major such as
nvidia-uvm's is whatever the host has at this start), a node with that
major:minor is made under ``<lxc dir>/passthrough/`` with the container-side
uid/gid (shifted for unprivileged CTs) and mode, then bind-mounted into the CT,
and the devices cgroup (v1 key: this VM runs cgroup v1) allows it.

The node's mode is ``mode=`` when given, else **0660** — never the host node's mode —
and it belongs to ``uid``/``gid`` (default 0), mapped through the idmap: pve-container
src/PVE/LXC.pm:1897-1921 create_passthrough_device_node@94f5585 (9.x), stable-bookworm
src/lxc-pve-prestart-hook:150-165@6475873 (8.4). So a non-root service in the CT cannot
open a node unless ``mode`` or ``gid`` say so.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.lxc.conf import ID_SHIFT, parse_prop


def dev_entries(conf: dict[str, str]) -> list[dict[str, str]]:
    """The parsed devN values, in index order."""
    keys = sorted((k for k in conf if re.fullmatch(r"dev\d+", k)), key=lambda k: int(k[3:]))
    return [parse_prop(conf[k], "path") for k in keys]


def has_nvidia(conf: dict[str, str]) -> bool:
    return any(e.get("path", "").startswith("/dev/nvidia") for e in dev_entries(conf))


def host_path(path: str, host_dev: Path) -> Path:
    """Where the sim host's ``/dev/...`` really is (the node's own dev dir), from any namespace."""
    if path.startswith("/dev/") and host_dev.is_dir():
        return host_dev / path[len("/dev/"):]
    return Path(path)


def _make_node(entry: dict[str, str], passthrough: Path, unpriv: bool,
               host_dev: Path) -> tuple[str, int, int, Path]:
    """mknod the CT's copy of the host node under ``passthrough``; PVE's error if it is missing."""
    path = entry.get("path", "")
    try:
        st = os.stat(host_path(path, host_dev))
    except FileNotFoundError:
        # vm_start's update_lxc_config stats every devN before lxc-start, so the start fails with
        # get_device_mode_and_rdev's text on both versions (src/PVE/LXC.pm:777, src/PVE/LXC/Tools.pm:
        # 157-167@94f5585; stable-bookworm src/PVE/LXC.pm:719@6475873) before the 8.4 hook's own
        # "Could not get mode or device ID" could
        raise SimTaskError(f"Device {path} does not exist") from None
    except OSError:
        raise SimTaskError(f"Error accessing device {path}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise SimTaskError(f"{path} is not a device")
    node = passthrough / path.lstrip("/")
    node.parent.mkdir(parents=True, exist_ok=True)
    node.unlink(missing_ok=True)
    mode = int(entry["mode"], 8) if "mode" in entry else 0o660  # not the host's mode (see above)
    os.mknod(node, (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | mode, st.st_rdev)
    os.chmod(node, mode)  # mknod honours the umask
    uid, gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
    if unpriv:
        uid, gid = uid + ID_SHIFT, gid + ID_SHIFT
    os.chown(node, uid, gid)
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev), node


def _access(entry: dict[str, str]) -> str:
    return "r" if entry.get("deny-write") == "1" else "rw"


def prepare(conf: dict[str, str], passthrough: Path, host_dev: Path) -> list[str]:
    """Make the passthrough nodes; return the LXC config lines. Raises PVE's error text."""
    shutil.rmtree(passthrough, ignore_errors=True)
    unpriv = conf.get("unprivileged", "0") == "1"
    lines: list[str] = []
    for entry in dev_entries(conf):
        kind, major, minor, node = _make_node(entry, passthrough, unpriv, host_dev)
        path = entry["path"]
        lines.append(f"lxc.cgroup.devices.allow = {kind} {major}:{minor} {_access(entry)}")
        lines.append(f"lxc.mount.entry = {node} {path.lstrip('/')} none bind,create=file 0 0")
    return lines


def hotplug(value: str, *, unpriv: bool, passthrough: Path, host_dev: Path,
            lxc: Callable[..., object], init_pid: int) -> None:
    """Add one devN to a running CT: node, cgroup allow, bind mount injected into its namespace."""
    entry = parse_prop(value, "path")
    path = entry.get("path", "")
    if not host_path(path, host_dev).exists():
        raise SimTaskError(f"Device {path} does not exist")
    kind, major, minor, node = _make_node(entry, passthrough, unpriv, host_dev)
    # The mount target must be made from inside (host root is unmapped in an unprivileged CT).
    lxc("attach", "--", "/bin/sh", "-c", f'mkdir -p "$(dirname {path})" && touch {path}')
    if not unpriv:
        lxc("cgroup", "devices.allow", f"{kind} {major}:{minor} {_access(entry)}")
    inject_mount(str(node), init_pid, path)


def inject_mount(src: str, init_pid: int, dst: str, *, read_only: bool = False) -> None:
    """Bind ``src`` (host) onto ``dst`` inside the running CT whose init is ``init_pid``."""
    cmd = [sys.executable, "-m", "provisioner.sim.lxc.mountinject", src, str(init_pid), dst]
    proc = subprocess.run(cmd + (["ro"] if read_only else []), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SimTaskError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "mount failed")
