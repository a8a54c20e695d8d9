"""Paths in the host file: normalised once, and refused when they reach what they must not.

Every path is normalised as written (``//``, ``/./`` and a trailing ``/`` collapse), so the
plan shows the path that will really be used. ``..`` is never resolved by us: on the host a
symlinked parent takes it anywhere (``/var/lib/models/../x`` is ``/mnt/x`` when ``models``
links to ``/mnt/m``), so a host or container path with ``..`` is refused, naming what it
reads as (``model.host_dir: /var/lib/../../etc/pve`` reads as ``/etc/pve``). Then each kind
of path is checked against the trees it must stay out of:

- a **host** path bind-mounted into a container (``model.host_dir``, ``container.mounts[].host``)
  must not be, contain or lie under Proxmox's own state (``/etc/pve`` with its ``priv/``
  keys, the cluster database, guest disks), the host's system trees, or ours
  (``/var/lib/provision/host-driver``): a privileged container would get root on them;
- a **container** path (``model.dir``, ``container.mounts[].path``) must not cover the
  container's system trees or the ones provision installs into (``/opt/provision``,
  ``/etc/provision``, ``/var/lib/provision``): the mount would hide or replace them;
- a **local** path on the workstation (key files, secrets, the CA file, ...) is only
  normalised (``~`` and ``..`` kept).

PVE itself refuses ``/./``, ``/../`` and a trailing ``/.``/``/..`` in mount point strings
(pve-container src/PVE/LXC/Config.pm:982 ``verify_lxc_mp_string`` at 94f5585), so a path we
did not normalise would fail at apply time after the plan promised it.
"""

from __future__ import annotations

import posixpath

#: host trees a bind mount must stay out of, and why (what a container would get)
HOST_SENSITIVE: dict[str, str] = {
    "/etc/pve": "Proxmox's cluster file system (pmxcfs): every guest's config and, in priv/, the "
                "cluster's keys, tokens and authkey",
    "/var/lib/pve-cluster": "the database behind /etc/pve",
    "/etc": "the host's configuration",
    "/root": "root's home (SSH keys)",
    "/var/lib/vz/images": "the disks of the other guests (storage 'local')",
    "/var/lib/vz/dump": "the backups of the other guests (storage 'local')",
    "/var/lib/lxc": "every container's LXC config and root filesystem",
    "/var/lib/provision/host-driver": "provision's record of the host driver",
    "/proc": "the host's kernel interface", "/sys": "the host's kernel interface",
    "/dev": "the host's devices", "/boot": "the host's kernels", "/run": "the host's runtime state",
    "/usr": "the host's programs", "/bin": "the host's programs", "/sbin": "the host's programs",
    "/lib": "the host's libraries", "/lib64": "the host's libraries",
}

#: container trees a mount must not cover
CT_SENSITIVE: dict[str, str] = {
    "/opt/provision": "provision installs llama.cpp and the gateway there",
    "/etc/provision": "provision keeps the services' keys and config there",
    "/var/lib/provision": "provision keeps the services' state there",
    "/etc": "the container's configuration", "/proc": "the container's kernel interface",
    "/sys": "the container's kernel interface", "/dev": "the container's devices",
    "/run": "the container's runtime state", "/usr": "the container's programs",
    "/bin": "the container's programs", "/sbin": "the container's programs",
    "/lib": "the container's libraries", "/lib64": "the container's libraries",
    "/boot": "the container's boot files", "/root": "root's home in the container",
}


class PathError(ValueError):
    """A refused path; ``fix`` is what to write instead (the loader shows it with file:line)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def normalise(path: str) -> str:
    """``path`` without ``//``, ``/./`` or a trailing ``/``; ``~`` and ``..`` stay as they are."""
    absolute = path.startswith("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    text = "/".join(parts)
    return ("/" + text) if absolute else (text or ".")


def lexical(path: str) -> str:
    """What ``path`` reads as with ``..`` taken literally (only for telling the user)."""
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def _within(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path or "\n" in path:
        raise PathError(f"{path!r} is not an absolute {what} (it must start with '/', without newlines)",
                        fix="write the full path, e.g. /srv/models")
    return normalise(path)


def check_tree(path: str, sensitive: dict[str, str], where: str, what: str) -> str:
    """Normalise an absolute ``path``; refuse ``..`` and a path that is, holds or lies in a sensitive tree."""
    norm = _absolute(path, what)
    reads = lexical(norm)
    shown = f"{path!r}" + (f" (read as {reads})" if reads != path else "")
    place = "on the host" if where == "host" else "in the container"
    for tree, why in sensitive.items():
        if _within(reads, tree) or _within(tree, reads):
            verb = "is inside" if _within(reads, tree) else "contains"
            raise PathError(f"{shown} {verb} {tree} {place}: {why}",
                            fix=f"use a directory of its own for it, e.g. {_example(where)}")
    if ".." in norm.split("/"):
        raise PathError(f"{shown} climbs with '..': through a symlinked parent it can lead anywhere, and PVE "
                        "refuses '..' in mount points", fix=f"write the path without '..', e.g. {reads}")
    return norm


def _example(where: str) -> str:
    return "/var/lib/provision/models" if where == "host" else "/srv/models"


def host_path(path: str, what: str = "host path") -> str:
    """A directory on the Proxmox host that is bind-mounted into a container."""
    return check_tree(path, HOST_SENSITIVE, "host", what)


def ct_path(path: str, what: str = "container path") -> str:
    """A directory inside the container (a mount point, the models directory)."""
    return check_tree(path, CT_SENSITIVE, "container", what)


def local_path(path: str | None) -> str | None:
    """A file on the workstation: normalised only."""
    return None if path is None else normalise(path)


__all__ = ["CT_SENSITIVE", "HOST_SENSITIVE", "PathError", "ct_path", "host_path", "lexical", "local_path",
           "normalise"]
