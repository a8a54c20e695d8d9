"""TEST BACKEND — plain directories, no LXC, no processes.

A small implementation of ``provisioner.sim.lxc.base.Backend`` for API-level
tests of the simulated PVE API: "containers" are directories under
``SIM_ROOT/storage/<sid>/images/<vmid>/rootfs`` and "running" is a marker file.
It checks what PVE's pre-start hook checks for ``devN`` (the host node must
exist), so start failures look like PVE's. The real backend (``LxcBackend``)
runs real LXC and is tested in tests/sim_host.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

from provisioner.sim.lxc.base import CtState, Log, SimTaskError


def tiny_template(dest: Path) -> None:
    """A tiny rootfs tarball (etc/os-release, etc/shadow, root/), gzip-compressed."""
    files = {
        "etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
        "etc/shadow": b"root:*:19000:0:99999:7:::\n",
        "etc/hostname": b"localhost\n",
    }
    with tarfile.open(dest, "w:gz") as tar:
        for d in ("etc", "root", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


class DirBackend:
    """Containers as directories; see the module docstring."""

    def __init__(self, sim_root: Path) -> None:
        self.root = Path(sim_root)
        self.calls: list[tuple[str, int]] = []
        self.hotplugged: list[tuple[int, str, str]] = []

    def _ct(self, vmid: int) -> Path:
        return self.root / "storage" / "local-lvm" / "images" / str(vmid)

    def _running_flag(self, vmid: int) -> Path:
        return self._ct(vmid) / "running"

    def create(self, vmid: int, conf: dict[str, str], ostemplate: Path, log: Log) -> None:
        self.calls.append(("create", vmid))
        rootfs = self._ct(vmid) / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ostemplate) as tar:
            tar.extractall(rootfs, filter="data")
        log(f"Total bytes extracted: {sum(f.stat().st_size for f in rootfs.rglob('*') if f.is_file())}")

    def start(self, vmid: int, conf: dict[str, str], log: Log, debug: bool = False) -> None:
        self.calls.append(("start", vmid))
        for key in sorted(conf):
            if re.fullmatch(r"dev\d+", key):
                path = conf[key].split(",")[0].removeprefix("path=")
                if not os.path.exists(path):
                    # update_lxc_config's stat (pve-container src/PVE/LXC/Tools.pm:157-167@94f5585)
                    raise SimTaskError(f"Device {path} does not exist")
        self._running_flag(vmid).parent.mkdir(parents=True, exist_ok=True)
        self._running_flag(vmid).write_text("1")
        log(f"started CT {vmid} (test backend)")

    def stop(self, vmid: int, log: Log) -> None:
        self.calls.append(("stop", vmid))
        self._running_flag(vmid).unlink(missing_ok=True)

    def shutdown(self, vmid: int, timeout: int, log: Log) -> None:
        self.calls.append(("shutdown", vmid))
        self._running_flag(vmid).unlink(missing_ok=True)

    def status(self, vmid: int) -> CtState:
        return "running" if self._running_flag(vmid).exists() else "stopped"

    def destroy(self, vmid: int, conf: dict[str, str], log: Log) -> None:
        self.calls.append(("destroy", vmid))
        shutil.rmtree(self._ct(vmid), ignore_errors=True)

    def mount(self, vmid: int, conf: dict[str, str]) -> Path:
        return self._ct(vmid) / "rootfs"

    def unmount(self, vmid: int) -> None:
        return None

    def snapshot(self, vmid: int, name: str, log: Log) -> None:
        self.calls.append(("snapshot", vmid))
        shutil.copytree(self._ct(vmid) / "rootfs", self._ct(vmid) / f"snap-{name}", symlinks=True)

    def rollback(self, vmid: int, name: str, log: Log) -> None:
        self.calls.append(("rollback", vmid))
        shutil.rmtree(self._ct(vmid) / "rootfs")
        shutil.copytree(self._ct(vmid) / f"snap-{name}", self._ct(vmid) / "rootfs", symlinks=True)

    def delete_snapshot(self, vmid: int, name: str, log: Log) -> None:
        self.calls.append(("delsnapshot", vmid))
        shutil.rmtree(self._ct(vmid) / f"snap-{name}")

    def provide_template(self, name: str, dest: Path, log: Log) -> None:
        log(f"test backend: building a tiny template for {name}")
        tiny_template(dest)

    def hotplug(self, vmid: int, key: str, value: str) -> None:
        self.hotplugged.append((vmid, key, value))
