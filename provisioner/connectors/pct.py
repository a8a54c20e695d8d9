"""Run things inside the container: ``pct exec`` over the host's SSH connection.

A script travels on stdin to ``bash -s`` inside the container, so nothing of it
(and no secret) shows up on a command line on the host or in the container.
"""

from __future__ import annotations

import shlex

from .ssh import SSH, Result, atomic_write_command


class CT:
    """The container ``vmid`` on the host behind ``ssh``."""

    def __init__(self, ssh: SSH, vmid: int) -> None:
        self.ssh = ssh
        self.vmid = int(vmid)

    def run(self, script: str, *, timeout: float | None = None, on_line=None) -> Result:
        """Run a bash script inside the container (stdin carries the script)."""
        return self.ssh.run(f"pct exec {self.vmid} -- bash -s", stdin=script.encode(), timeout=timeout,
                            on_line=on_line)

    def put(self, data: bytes, path: str, *, mode: str = "0644", owner: str | None = None) -> Result:
        """Write a file inside the container atomically; data on stdin, never on argv."""
        inner = atomic_write_command(path, mode, owner)
        cmd = f"pct exec {self.vmid} -- sh -c {shlex.quote(inner)}"
        return self.ssh.run(cmd, stdin=data).check(f"writing {path} in CT {self.vmid}", vmid=self.vmid)
