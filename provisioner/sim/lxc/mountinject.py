"""Bind a host path into a running container's mount namespace (device hot-plug).

Uses the new mount API (open_tree + move_mount, Linux >= 5.2) through ctypes:
the detached bind mount is made in the host namespace, then moved onto the
target inside the CT. setns() into a mount namespace needs a single-threaded
process, so this runs as its own process: ``python -m provisioner.sim.lxc.mountinject SRC PID DST``.
The target must already exist in the CT (create it with lxc-attach: host root
is not mapped in an unprivileged CT).
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # x86_64
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_RECURSIVE = 1, 0o2000000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND = 0x1, 0x20, 0x1000


def inject(src: str, pid: int, dst: str, read_only: bool = False) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, src.encode(),
                      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"open_tree {src}")
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    if libc.setns(ns, CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.chdir("/")
    if libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, dst.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount onto {dst}: {os.strerror(err)}")
    # a read-only remount of the bind, made from inside the CT's namespace
    if read_only and libc.mount(None, dst.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {dst} read-only: {os.strerror(err)}")


if __name__ == "__main__":
    inject(sys.argv[1], int(sys.argv[2]), sys.argv[3], read_only=sys.argv[4:] == ["ro"])
