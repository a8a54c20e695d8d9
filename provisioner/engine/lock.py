"""One `provision up` per container at a time, across workstations.

The lock lives on the Proxmox host: an SSH channel runs ``flock`` on a file in
/run/lock and keeps it while the channel is open. If our process dies or the
connection drops, the channel closes and the kernel releases the lock — no
stale locks to clean up. The holder writes who it is next to the lock, so the
loser's message names it.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import time
from typing import Callable

import paramiko

from ..connectors.ssh import SSH
from ..errors import LockHeld, SSHError

LOCK_DIR = "/run/lock"
BUSY = 75  # EX_TEMPFAIL


def _script(name: str) -> str:
    lock = shlex.quote(f"{LOCK_DIR}/provision-{name}.lock")
    holder = shlex.quote(f"{LOCK_DIR}/provision-{name}.holder")
    # stdin: first line = who we are; then stays open for as long as we hold the lock
    return (f"exec 9>>{lock}; if ! flock -n 9; then cat {holder} 2>/dev/null; exit {BUSY}; fi; "
            f"IFS= read -r who; printf '%s\\n' \"$who\" > {holder}; echo LOCKED; cat >/dev/null")


class HostLock:
    """Held while the context is open; ``name`` identifies the container (node + hostname)."""

    def __init__(self, ssh: SSH, name: str, *, wait: float = 0.0,
                 on_wait: Callable[[str], None] = lambda holder: None) -> None:
        self.ssh = ssh
        self.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.wait = wait
        self.on_wait = on_wait
        self._chan: paramiko.Channel | None = None

    def _try(self) -> str | None:
        """Take the lock; returns None on success, else the holder's description."""
        self.ssh.round_trips += 1
        transport = self.ssh.client().get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.exec_command(_script(self.name))
        me = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        chan.sendall((me + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            data = chan.recv(4096)
            if not data:
                break
            buf += data
        if buf.startswith(b"LOCKED"):
            self._chan = chan
            return None
        code = chan.recv_exit_status()
        chan.close()
        if code != BUSY:
            raise SSHError(f"could not take the provision lock on the host (exit {code})", host=self.ssh.target.host)
        return buf.decode("utf-8", "replace").strip() or "another provision run"

    def __enter__(self) -> "HostLock":
        deadline = time.monotonic() + self.wait
        while True:
            holder = self._try()
            if holder is None:
                return self
            if time.monotonic() >= deadline:
                raise LockHeld(f"another `provision` run holds the lock for {self.name}: {holder}",
                               host=self.ssh.target.host,
                               fix="wait for it to finish, or pass --wait SECONDS to queue behind it")
            self.on_wait(holder)
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))

    def __exit__(self, *exc: object) -> None:
        if self._chan is not None:
            try:
                self._chan.shutdown_write()
                self._chan.recv_exit_status()
                self._chan.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass
            self._chan = None
