"""``GET /nodes/{node}/lxc/{vmid}/feature`` of the simulated API: can this CT be snapshotted?

As PVE's ``has_feature``: every volume (rootfs, mpN) must live on a storage with the
feature; a bind mount (a host path) has none, so a CT with one cannot be snapshotted.
``clone``/``copy`` follow the same storage rule here (a simplification).
"""

from __future__ import annotations

import re
from typing import Any

from provisioner.sim.api.lxc import load
from provisioner.sim.api.server import Request, route
from provisioner.sim.pve.storage import STORAGES

#: storage types with snapshots in PVE (lvmthin, zfspool, rbd, btrfs); dir/nfs/lvm have none for CTs
SNAPSHOT_TYPES = {"lvmthin", "zfspool", "rbd", "btrfs", "cephfs"}


def volume_has_snapshot(volume: str) -> bool:
    if volume.startswith("/"):  # bind mount or device mount
        return False
    storage = volume.split(":", 1)[0]
    kind = STORAGES.get(storage, {}).get("type", "")
    return kind in SNAPSHOT_TYPES


@route("/nodes/{node}/lxc/{vmid}/feature", "GET")
def feature(req: Request) -> dict[str, Any]:
    values = load(req).values
    ok = True
    for key, value in values.items():
        if key == "rootfs" or re.fullmatch(r"mp\d+", key):
            volume = str(value).split(",", 1)[0].removeprefix("volume=")
            ok = ok and volume_has_snapshot(volume)
    return {"hasFeature": 1 if ok else 0}
