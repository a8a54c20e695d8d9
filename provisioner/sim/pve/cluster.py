"""A simulated Proxmox cluster: several sim nodes sharing one cluster config store.

Real PVE keeps every node's guest configs in pmxcfs, mounted on every node at
``/etc/pve``: ``/etc/pve/nodes/<node>/lxc/<vmid>.conf``, with ``/etc/pve/lxc`` a
symlink to the local node's directory. A vmid is unique cluster-wide, and every
node's API answers for the whole cluster (requests for another node are proxied
to that node's pvedaemon).

Here the shared store is a directory, ``BASE/.clusters/<cluster>/``. Each member's
``SIM_ROOT/etc/pve`` (bound on ``/etc/pve`` in its namespace, see sim/host.py) holds
symlinks into it, so per-node code keeps reading ``etc/pve/lxc`` unchanged:

    SIM_ROOT/etc/pve/nodes       -> BASE/.clusters/<cluster>/nodes
    SIM_ROOT/etc/pve/lxc         -> nodes/<node>/lxc
    SIM_ROOT/etc/pve/.locks      -> BASE/.clusters/<cluster>/.locks   (vmid locks are cluster-wide)
    SIM_ROOT/etc/pve/.members    -> BASE/.clusters/<cluster>/.members (as pmxcfs's: nodelist, ids)
    SIM_ROOT/etc/pve/.sim-cluster.json -> ...  (sim extra: each member's SIM_ROOT and API port)

Members share the API secrets (authkey, root password, token), as a real cluster
shares /etc/pve/authkey.pub and /etc/pve/priv/token.cfg, so a ticket or token works
on every node and proxied requests authenticate on the target node. They share root's
SSH key and one known_hosts with every member's host key too (PVE's
/etc/pve/priv/authorized_keys and /etc/pve/priv/known_hosts).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BASE = Path(os.environ.get("PROVISION_SIM_BASE", "/var/lib/provision-sim"))
MEMBERS = ".sim-cluster.json"
SHARED_SECRETS = ("authkey", "secrets/root_password", "secrets/token_secret", "ssh/id_ed25519", "ssh/id_ed25519.pub")


def shared_dir(cluster: str) -> Path:
    return BASE / ".clusters" / cluster


@contextlib.contextmanager
def _locked(cluster: str) -> Iterator[Path]:
    shared = shared_dir(cluster)
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield shared


def read_members(shared: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((shared / MEMBERS).read_text())
    except (OSError, ValueError):
        return {}


def _write_members(shared: Path, cluster: str, members: dict[str, dict[str, Any]]) -> None:
    (shared / MEMBERS).write_text(json.dumps(members, indent=2))
    # pmxcfs's /etc/pve/.members, as `cat /etc/pve/.members` shows it on a real node
    dotmembers = {"cluster": {"name": cluster, "version": len(members), "nodes": len(members), "quorate": 1},
                  "nodelist": {n: {"id": i + 1, "online": 1, "ip": "127.0.0.1"}
                               for i, n in enumerate(sorted(members))}}
    (shared / ".members").write_text(json.dumps(dotmembers, indent=1))


def prepare_member(root: Path, cluster: str, node: str) -> Path | None:
    """Lay out ``root/etc/pve`` as a view of the cluster store; returns the first member's
    SIM_ROOT (whose secrets a joining node copies), None for the first node."""
    with _locked(cluster) as shared:
        members = read_members(shared)
        if node in members and members[node]["sim_root"] != str(root):
            raise ValueError(f"cluster '{cluster}' already has a node named '{node}'")
        (shared / "nodes" / node / "lxc").mkdir(parents=True, exist_ok=True)
        (shared / ".locks").mkdir(exist_ok=True)
        etc = root / "etc" / "pve"
        etc.mkdir(parents=True, exist_ok=True)
        links = {"nodes": shared / "nodes", "lxc": Path("nodes") / node / "lxc", ".locks": shared / ".locks",
                 ".members": shared / ".members", MEMBERS: shared / MEMBERS}
        for name, target in links.items():
            link = etc / name
            if link.is_symlink():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link)
            os.symlink(target, link)
        others = [m for n, m in sorted(members.items()) if n != node and Path(m["sim_root"]).exists()]
        return Path(others[0]["sim_root"]) if others else None


def copy_secrets(first: Path, root: Path) -> None:
    """A joining node takes the cluster's API secrets (see the module doc)."""
    for rel in SHARED_SECRETS:
        src, dst = first / rel, root / rel
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(src.read_bytes())


def register(cluster: str, node: str, info: dict[str, Any]) -> None:
    with _locked(cluster) as shared:
        members = read_members(shared)
        members[node] = info
        _write_members(shared, cluster, members)
        _write_known_hosts(members)


def _write_known_hosts(members: dict[str, dict[str, Any]]) -> None:
    """Every member's host key, in every member's known_hosts (what its connection.json names)."""
    lines = []
    for m in members.values():
        pub = Path(m["sim_root"]) / "ssh" / "ssh_host_ed25519_key.pub"
        if pub.exists():
            kind, key = pub.read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{m['ssh_port']} {kind} {key}\n")
    for m in members.values():
        path = Path(m["sim_root"]) / "ssh" / "known_hosts"
        if path.parent.exists():
            path.write_text("".join(lines))


def leave(root: Path, cluster: str, node: str) -> None:
    """Take ``node`` out of the cluster (its configs go with it); the last one removes the store."""
    with _locked(cluster) as shared:
        members = read_members(shared)
        members.pop(node, None)
        shutil.rmtree(shared / "nodes" / node, ignore_errors=True)
        if members:
            _write_members(shared, cluster, members)
    if not members:
        shutil.rmtree(shared, ignore_errors=True)


# -- what the API asks --------------------------------------------------------------------------

def members(sim_root: Path) -> dict[str, dict[str, Any]]:
    """The cluster's nodes (``{}`` for a stand-alone node)."""
    return read_members(Path(sim_root) / "etc" / "pve")


def vmid_nodes(sim_root: Path) -> dict[int, str]:
    """Every vmid in the cluster and the node that has it (only the local node when stand-alone)."""
    etc = Path(sim_root) / "etc" / "pve"
    if not (etc / "nodes").is_dir():
        return {}
    out: dict[int, str] = {}
    for conf in (etc / "nodes").glob("*/lxc/*.conf"):
        if conf.stem.isdigit():
            out[int(conf.stem)] = conf.parent.parent.name
    return out
