"""How the container's service user reaches the GPU device nodes: one group, one gid, one mode.

PVE makes each ``devN`` node inside the container with mode 0660 owned by ``uid``/``gid``
(default 0, container-side ids mapped through the idmap) unless ``mode=`` says otherwise; it
does not copy the host node's 0666 (pve-container src/PVE/LXC.pm:1897-1921@94f5585 for 9.x,
stable-bookworm src/lxc-pve-prestart-hook:150-165@6475873 for 8.4). llama-server runs as the
unprivileged ``llama`` user, so the nodes carry ``gid=GPU_GID,mode=0660`` and ``llama`` is a
member of the group ``GPU_GROUP`` with that fixed gid, created in the container before the
service first starts (templates/scripts/users.sh.j2). Only members of that group (and root)
can open the nodes, whatever the host's own mode is.

Every device we pass gets the same options, so this serves AMD/Intel render nodes
(``/dev/dri/renderD*``) and ``/dev/kfd`` as well as ``/dev/nvidia*``: change the group here
and nowhere else. The gid is container-side and below 65536 (the default idmap of an
unprivileged CT maps 0-65535); 59999 is the top of the range adduser hands out from the bottom
(Debian's FIRST_GID=1000 .. LAST_GID=59999), clear of package system groups (100-999) and of
Debian's fixed ones (0-99).
"""

from __future__ import annotations

GPU_GROUP = "provision-gpu"
GPU_GID = 59999
DEV_MODE = "0660"


def dev_options() -> str:
    """The options of every device ``devN`` we write (after the path)."""
    return f"uid=0,gid={GPU_GID},mode={DEV_MODE}"


def can_open(mode: int, gid: int, user_groups: frozenset[int] | set[int]) -> bool:
    """Whether a non-root user in ``user_groups`` may read and write a node of this mode and gid."""
    return mode & 0o006 == 0o006 or (mode & 0o060 == 0o060 and gid in user_groups)
