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
