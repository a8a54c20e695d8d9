"""One `provision` run per container at a time, across workstations.

The lock lives on the Proxmox host: an SSH channel runs ``flock`` on a file in
/run/lock and keeps it while the channel is open. If our process dies or the
connection drops, the channel closes and the kernel releases the lock — no
stale locks to clean up. The holder writes who it is next to the lock, so the
loser's message names it.

A container's lock is named by its node and vmid (``container_lock``), never by the
host file's hostname: two host files naming one vmid with different hostnames are one
container. A container that does not exist yet with ``vmid: auto`` is locked by its
hostname until the create step knows its vmid, which it then claims (``claim``) before
creating it. Every command that changes a container takes it: up, down, rollback,
doctor --fix, and `provision host` for each container it moves.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import paramiko

from ..connectors.ssh import SSH
from ..errors import LockHeld, SSHError

if TYPE_CHECKING:
    from ..config.schema import HostFile

LOCK_DIR = "/run/lock"
BUSY = 75  # EX_TEMPFAIL


def safe_name(name: str) -> str:
    """A lock name as a file name: anything but letters, digits and -_. becomes _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def lock_base(name: str) -> str:
    """The lock's path on the host without its suffix: ``.lock`` (the flock) and ``.holder`` (who holds it)."""
    return f"{LOCK_DIR}/provision-{safe_name(name)}"


def _script(name: str, who: str) -> str:
    lock = shlex.quote(f"{lock_base(name)}.lock")
    holder = shlex.quote(f"{lock_base(name)}.holder")
    # who we are rides on the command line (user@host, pid, time: nothing secret), so LOCKED comes back
    # with the exec's own reply, one round trip sooner; stdin stays open for as long as we hold the lock
    return (f"exec 9>>{lock}; if ! flock -n 9; then cat {holder} 2>/dev/null; exit {BUSY}; fi; "
            f"printf '%s\\n' {shlex.quote(who)} > {holder}; echo LOCKED; cat >/dev/null")


class HostLock:
    """Held while the context is open; ``name`` identifies the container (node + hostname)."""

    def __init__(self, ssh: SSH, name: str, *, wait: float = 0.0,
                 on_wait: Callable[[str, float], None] = lambda holder, left: None) -> None:
        """``on_wait(holder, seconds_left)`` while another run holds it; ``(\"\", -1)`` once the wait is over."""
        self.ssh = ssh
        self.name = safe_name(name)
        self.wait = wait
        self.on_wait = on_wait
        self._chan: paramiko.Channel | None = None

    def _try(self) -> str | None:
        """Take the lock; returns None on success, else the holder's description."""
        self.ssh.round_trips += 1
        transport = self.ssh.client().get_transport()
        assert transport is not None
        chan = transport.open_session()
        me = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        chan.exec_command(_script(self.name, me))
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
        waited = False
        try:
            while True:
                holder = self._try()
                if holder is None:
                    return self
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockHeld(f"another `provision` run holds the lock for {self.name}: {holder}",
                                   host=self.ssh.target.host,
                                   fix="wait for it to finish, or pass --wait SECONDS to queue behind it")
                waited = True
                self.on_wait(holder, left)
                time.sleep(min(2.0, max(0.1, left)))
        finally:
            if waited:
                self.on_wait("", -1.0)  # the wait is over (one way or the other)

    def __exit__(self, *exc: object) -> None:
        if self._chan is not None:
            try:
                self._chan.shutdown_write()
                self._chan.recv_exit_status()
                self._chan.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass
            self._chan = None


def ct_lock_stem(node: str) -> str:
    """What every container lock name of ``node`` starts with (the host guard appends the vmid)."""
    return f"{node}-ct"


def ct_lock_name(node: str, vmid: int) -> str:
    """The one name of a container's lock: its node and vmid."""
    return f"{ct_lock_stem(node)}{int(vmid)}"


def new_ct_lock_name(node: str, hostname: str) -> str:
    """A container not created yet (``vmid: auto``): its hostname until it has a vmid."""
    return f"{node}-new-{hostname}"


class ContainerLock:
    """The run lock of the host file's container; ``claim(vmid)`` adds the lock of a vmid chosen later."""

    def __init__(self, cfg: "HostFile", conn: Any, *, wait: float = 0.0,
                 on_wait: Callable[[str, float], None] = lambda holder, left: None, vmid: int | None = None) -> None:
        self.cfg = cfg
        self.conn = conn
        self.wait = wait
        self.on_wait = on_wait
        self.vmid = vmid if vmid is not None else (cfg.container.vmid if isinstance(cfg.container.vmid, int)
                                                   else None)
        self._held: list[HostLock] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> "ContainerLock":
        """Begin taking the lock in the background (the SSH handshake and flock, several round trips), so
        the caller's own start-up work overlaps them; ``with lock:`` then waits for it (and raises its error)."""
        def take() -> None:
            try:
                self._acquire()
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that enters the lock
                self._error = exc

        self._thread = threading.Thread(target=take, name="provision-lock", daemon=True)
        self._thread.start()
        return self

    @property
    def node(self) -> str:
        return str(self.conn.pve.node)

    def _resolve(self) -> int | None:
        """``vmid: auto``: the vmid of our container with this hostname, if it exists (one API call)."""
        from ..facts.pve import find_ours

        resources = self.conn.pve.get("/cluster/resources", type="vm") or []
        return find_ours(resources, self.cfg.container.hostname, self.node)

    def _take(self, name: str) -> None:
        lock = HostLock(self.conn.ssh, name, wait=self.wait, on_wait=self.on_wait)
        lock.__enter__()
        self._held.append(lock)

    def names(self) -> list[str]:
        return [h.name for h in self._held]

    def _acquire(self) -> None:
        if self.vmid is None:
            self.vmid = self._resolve()
        try:
            self._take(ct_lock_name(self.node, self.vmid) if self.vmid is not None
                       else new_ct_lock_name(self.node, self.cfg.container.hostname))
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> "ContainerLock":
        if self._thread is None:
            self._acquire()
            return self
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self

    def claim(self, vmid: int) -> None:
        """Hold ``vmid``'s lock too (the create step, before creating it): a run that finds the new
        container by its hostname locks it by vmid and must wait for us."""
        name = safe_name(ct_lock_name(self.node, vmid))
        if name not in self.names():
            self._take(name)
        self.vmid = vmid

    def release(self, vmid: int) -> None:
        """Give back a vmid claimed for a container that was not created after all."""
        name = safe_name(ct_lock_name(self.node, vmid))
        for lock in [h for h in self._held if h.name == name]:
            lock.__exit__()
            self._held.remove(lock)

    def __exit__(self, *exc: object) -> None:
        while self._held:
            self._held.pop().__exit__()
