"""Run one job per host of an inventory in parallel, each host isolated from the others.

* Bounded: at most ``workers`` hosts run at once (threads: the work is network-bound,
  and each host gets its own API session and SSH connection, nothing is shared).
* Isolated: a host's ProvisionError, or any other exception (a bug), is recorded on that
  host's result; the other hosts go on.
* Containers on one Proxmox node run one after the other, in inventory order. They share
  the node: `vmid: auto` picks "the next free id" (two parallel creates would pick the same),
  and the gpu.host step writes the same host files and runs apt/dpkg on the host. Each
  container's own run lock (engine/lock.py, taken by the job) still guards against other
  workstations; the fleet never holds two locks on one node, so it cannot deadlock itself.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProvisionError
from ..redact import redact
from .inventory import Host

ERROR_DIR = Path.home() / ".cache" / "provision"


@dataclass
class HostResult:
    """What happened on one host; updated by its worker, read by the view."""

    name: str
    node: str
    state: str = "queued"  # queued | running | done | failed
    step: str = ""
    started: float | None = None
    finished: float | None = None
    value: Any = None  # the job's return value (a Report, a PlanContext...)
    error: str | None = None  # redacted message with its fix
    error_kind: str | None = None
    api_calls: int = 0
    ssh_round_trips: int = 0
    changes: int = 0  # changes applied so far (up)
    log: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    @property
    def error_summary(self) -> str:
        """The first line of the error, for tables."""
        return (self.error or "").splitlines()[0] if self.error else ""


class Interrupted(ProvisionError):
    """Ctrl-C: a running host stops at its next step boundary."""


class Events:
    """What a job reports while it runs; thread-safe, forwards to the view."""

    def __init__(self, result: HostResult, notify: Callable[[HostResult, str, str], None],
                 stop: threading.Event | None = None) -> None:
        self.result = result
        self._notify = notify
        self._stop = stop or threading.Event()
        self.conn: Any = None  # set by the job once connected, so failures still count calls

    def status(self, message: str) -> None:
        # every status is a point where a single-host run may be interrupted too (Ctrl-C):
        # each step is safe to re-run
        if self._stop.is_set():
            raise Interrupted("interrupted; every step is safe to re-run")
        self.result.step = redact(message)
        self._notify(self.result, "status", self.result.step)

    def log(self, line: str) -> None:
        self._notify(self.result, "log", redact(line))

    def change(self, change: Any, seconds: float) -> None:
        self.result.changes += 1
        self._notify(self.result, "change", redact(f"{change.step}: {change.done_text} ({seconds:.1f}s)"))


#: the work done on one host; its return value becomes ``HostResult.value``
Job = Callable[[Host, Events], Any]


def _groups(hosts: list[Host]) -> list[list[Host]]:
    """Hosts by Proxmox node, in inventory order (one group runs sequentially)."""
    groups: dict[tuple[str, int, str], list[Host]] = {}
    for host in hosts:
        groups.setdefault(host.pve_key, []).append(host)
    return list(groups.values())


def new_results(hosts: list[Host]) -> list[HostResult]:
    """One queued result per host (a view may show them before the run starts)."""
    return [HostResult(name=h.name, node=h.loaded.config.proxmox.node) for h in hosts]


def run_fleet(hosts: list[Host], job: Job, *, workers: int,
              notify: Callable[[HostResult, str, str], None] = lambda r, kind, text: None,
              results: list[HostResult] | None = None, stop: threading.Event | None = None) -> list[HostResult]:
    """Run ``job`` on every host; returns one result per host (``results`` if given), in inventory order.

    Setting ``stop`` (done here on Ctrl-C) skips the hosts not started yet and makes the running
    ones stop at their next step boundary."""
    by_name = {r.name: r for r in (results or new_results(hosts))}
    lock = threading.Lock()
    stop = stop or threading.Event()

    def safe_notify(result: HostResult, kind: str, text: str) -> None:
        with lock:  # one event at a time reaches the view
            notify(result, kind, text)

    def one(host: Host) -> None:
        result = by_name[host.name]
        events = Events(result, safe_notify, stop)
        result.state, result.started = "running", time.monotonic()
        safe_notify(result, "start", "")
        try:
            result.value = job(host, events)
            result.state = "done"
        except ProvisionError as exc:
            result.state, result.error_kind, result.error = "failed", type(exc).__name__, redact(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug on one host must not stop the others
            ERROR_DIR.mkdir(parents=True, exist_ok=True)
            log = ERROR_DIR / f"last-error-{host.name}.log"
            log.write_text(redact(traceback.format_exc()))
            result.state, result.error_kind = "failed", "internal"
            result.error = f"internal error: {redact(str(exc)) or type(exc).__name__} (traceback in {log})"
        finally:
            result.finished = time.monotonic()
            conn = events.conn
            if conn is not None:
                result.api_calls, result.ssh_round_trips = conn.pve.calls, conn.ssh.round_trips
            safe_notify(result, "end", result.error_summary)

    def group(members: list[Host]) -> None:
        for host in members:
            if stop.is_set():
                return
            one(host)

    groups = _groups(hosts)
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(groups))))
    futures = [pool.submit(group, g) for g in groups]
    try:
        for f in futures:
            f.result()
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)  # the running hosts stop at their next step
        raise
    pool.shutdown()
    return [by_name[h.name] for h in hosts]
