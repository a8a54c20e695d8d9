"""The simulated node's storages: ``local`` (dir: templates) and ``local-lvm`` (CT volumes).

Template files live in ``SIM_ROOT/storage/<id>/template/cache/`` (the layout the
LXC backend shares); volume ids look like PVE's (``local:vztmpl/<file>``,
``local-lvm:vm-<vmid>-disk-0``).
"""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.sim.pve.errors import RuleError

STORAGES: dict[str, dict[str, str]] = {
    "local": {"type": "dir", "content": "backup,iso,vztmpl"},
    "local-lvm": {"type": "lvmthin", "content": "images,rootdir"},
    # ZFS: snapshots, but a rollback only to the newest one (pve-storage
    # src/PVE/Storage/ZFSPoolPlugin.pm:588-614@0c56bad)
    "local-zfs": {"type": "zfspool", "content": "images,rootdir"},
    # CephFS holds no container volumes: its content types are vztmpl, iso, backup, snippets,
    # import (pve-storage src/PVE/Storage/CephFSPlugin.pm:119-120@0c56bad)
    "cephfs": {"type": "cephfs", "content": "backup,iso,vztmpl"},
}
TEMPLATE_RE = re.compile(r"[^/]+\.tar\.(gz|xz|zst)")


def check_storage(storage: str) -> dict[str, str]:
    """The storage's config; PVE's message for an unknown one."""
    if storage not in STORAGES:
        raise RuleError(f"storage '{storage}' does not exist")
    return STORAGES[storage]


def template_dir(sim_root: Path, storage: str) -> Path:
    return Path(sim_root) / "storage" / storage / "template" / "cache"


def template_path(sim_root: Path, volid: str) -> Path:
    """Resolve ``local:vztmpl/name.tar.zst`` to the file; PVE's errors if it cannot be."""
    m = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):vztmpl/(.+)", volid, re.I)
    if not m:
        raise RuleError(f"unable to parse volume ID '{volid}'")
    storage, name = m.group(1), m.group(2)
    check_storage(storage)
    if "vztmpl" not in STORAGES[storage]["content"]:
        raise RuleError(f"storage '{storage}' does not support templates")
    path = template_dir(sim_root, storage) / name
    if not path.is_file():
        raise RuleError(f"volume '{volid}' does not exist")
    return path


def template_content(sim_root: Path, storage: str) -> list[dict[str, object]]:
    """``GET .../storage/{storage}/content?content=vztmpl`` entries."""
    out: list[dict[str, object]] = []
    directory = template_dir(sim_root, storage)
    if not directory.is_dir():
        return out
    for path in sorted(directory.iterdir()):
        m = TEMPLATE_RE.fullmatch(path.name)
        if not m or not path.is_file():
            continue
        st = path.stat()
        out.append({"volid": f"{storage}:vztmpl/{path.name}", "content": "vztmpl",
                    "format": {"gz": "tgz", "xz": "txz", "zst": "tzst"}[m.group(1)],
                    "size": st.st_size, "ctime": int(st.st_mtime)})
    return out


# -- ZFS snapshot order ----------------------------------------------------------------------------

def _zfs_index(sim_root: Path, sid: str) -> Path:
    return Path(sim_root) / "storage" / sid / "zfs-snapshots.json"


def _zfs(volume: str) -> tuple[str, str] | None:
    """(storage, volname) of a volume on a zfspool storage, else None."""
    sid, sep, volname = volume.partition(":")
    if not sep or STORAGES.get(sid, {}).get("type") != "zfspool":
        return None
    return sid, volname


def _zfs_read(sim_root: Path, sid: str) -> dict[str, list[str]]:
    import json
    try:
        return json.loads(_zfs_index(sim_root, sid).read_text())
    except (OSError, ValueError):
        return {}


def _zfs_write(sim_root: Path, sid: str, data: dict[str, list[str]]) -> None:
    import json
    path = _zfs_index(sim_root, sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def snapshot_added(sim_root: Path, volume: str, snap: str) -> None:
    """Record a snapshot of a ZFS volume in creation order (what ``zfs list -s creation`` gives)."""
    zfs = _zfs(volume)
    if zfs is not None:
        data = _zfs_read(sim_root, zfs[0])
        data.setdefault(zfs[1], []).append(snap)
        _zfs_write(sim_root, zfs[0], data)


def snapshot_removed(sim_root: Path, volume: str, snap: str) -> None:
    zfs = _zfs(volume)
    if zfs is not None:
        data = _zfs_read(sim_root, zfs[0])
        data[zfs[1]] = [s for s in data.get(zfs[1], []) if s != snap]
        _zfs_write(sim_root, zfs[0], data)


def check_rollback_possible(sim_root: Path, volume: str, snap: str) -> None:
    """volume_rollback_is_possible: LVM-thin always may (LvmThinPlugin.pm:378-382@0c56bad); ZFS only
    to its newest snapshot, with PVE's texts (ZFSPoolPlugin.pm:588-614)."""
    zfs = _zfs(volume)
    if zfs is None:
        return
    order = _zfs_read(sim_root, zfs[0]).get(zfs[1], [])
    if snap not in order:
        raise RuleError(f"can't rollback, snapshot '{snap}' does not exist on '{volume}'")
    if order.index(snap) != len(order) - 1:
        raise RuleError(f"can't rollback, '{snap}' is not most recent snapshot on '{volume}'")
