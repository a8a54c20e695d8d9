"""The interface between the simulated API (tasks) and what really runs containers.

The API server and the simulated `pct` both drive containers only through this
interface; `provisioner.sim.lxc.backend.LxcBackend` implements it with real LXC.
Errors a real PVE task would print are raised as ``SimTaskError`` with PVE's text,
so the task ends with that text as its ``exitstatus``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Protocol

Log = Callable[[str], None]
CtState = Literal["running", "stopped"]


class SimTaskError(Exception):
    """A task failure with the exact text PVE would put in the task's exitstatus."""


class Backend(Protocol):
    def create(self, vmid: int, conf: dict[str, str], ostemplate: Path, log: Log) -> None:
        """Materialise the root filesystem (from the template) for a new container."""

    def start(self, vmid: int, conf: dict[str, str], log: Log, debug: bool = False) -> None:
        """Start: check devN host nodes, rewrite /etc/resolv.conf, boot systemd. ``debug``: the
        whole LXC log (DEBUG level) goes to the task log, as with ``pct start --debug``."""

    def stop(self, vmid: int, log: Log) -> None:
        """Hard stop."""

    def shutdown(self, vmid: int, timeout: int, log: Log) -> None:
        """Clean shutdown, hard stop after ``timeout`` seconds."""

    def status(self, vmid: int) -> CtState: ...

    def destroy(self, vmid: int, conf: dict[str, str], log: Log) -> None:
        """Remove the root filesystem and every LXC artefact of the container."""

    def mount(self, vmid: int, conf: dict[str, str]) -> Path:
        """Mount the rootfs on the host (`pct mount`); returns the mount point."""

    def unmount(self, vmid: int) -> None: ...

    def snapshot(self, vmid: int, name: str, log: Log) -> None: ...

    def rollback(self, vmid: int, name: str, log: Log) -> None: ...

    def delete_snapshot(self, vmid: int, name: str, log: Log) -> None: ...
