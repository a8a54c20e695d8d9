"""PVE-style worker tasks for the simulated node: UPIDs, status, logs, injected failures.

A task runs its function in a thread. Its state lives under ``SIM_ROOT/tasks/``
(``<sha1-of-upid>.json`` with status, ``.log`` with the lines), so a restarted
server and ``pct``/tests can read it. Exit status is what PVE writes: ``OK``,
``WARNINGS: n`` (lines logged through ``warn``) or the error text.

Fault injection: ``SIM_ROOT/faults/fail_next_task.json`` or the ``fail_next_task``
key of ``sim.json`` = ``{"type": "vzstart", "message": "..."}`` makes the next
task of that type (``"*"``: any) fail with that message; the fault is consumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve.access import write_settings


@dataclass
class TaskLog:
    """What a task function gets: ``log(line)`` and ``warn(line)`` (counted as warnings)."""

    lines: list[str] = field(default_factory=list)
    warnings: int = 0
    on_line: Callable[[str], None] | None = None

    def __call__(self, line: str) -> None:
        for part in str(line).rstrip("\n").split("\n"):
            self.lines.append(part)
            if self.on_line:
                self.on_line(part)

    def warn(self, line: str) -> None:
        self.warnings += 1
        self(f"WARN: {line}")


TaskFn = Callable[[TaskLog], None]


def make_upid(node: str, pid: int, pstart: int, starttime: int, typ: str, ident: str, user: str) -> str:
    """``UPID:node:PID:PSTART:STARTTIME:type:id:user:`` with PVE's hex fields."""
    return f"UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{typ}:{ident}:{user}:"


def parse_upid(upid: str) -> dict[str, object]:
    """Split a UPID; raises ValueError like PVE's "unable to parse worker upid"."""
    parts = upid.split(":")
    if len(parts) != 9 or parts[0] != "UPID" or parts[8] != "":
        raise ValueError(f"unable to parse worker upid '{upid}'")
    try:
        pid, pstart, starttime = (int(x, 16) for x in parts[2:5])
    except ValueError:
        raise ValueError(f"unable to parse worker upid '{upid}'") from None
    return {"node": parts[1], "pid": pid, "pstart": pstart, "starttime": starttime,
            "type": parts[5], "id": parts[6], "user": parts[7]}


class TaskManager:
    """Starts tasks and answers status/log queries."""

    def __init__(self, sim_root: Path, node: str) -> None:
        self.sim_root = Path(sim_root)
        self.dir = self.sim_root / "tasks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node = node
        self._lock = threading.Lock()
        self._counter = 0
        self._threads: dict[str, threading.Thread] = {}

    def _paths(self, upid: str) -> tuple[Path, Path]:
        h = hashlib.sha1(upid.encode()).hexdigest()
        return self.dir / f"{h}.json", self.dir / f"{h}.log"

    def _write_status(self, upid: str, status: dict[str, object]) -> None:
        path, _ = self._paths(upid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)

    def _take_fault(self, typ: str) -> str | None:
        flag = self.sim_root / "faults" / "fail_next_task.json"
        with self._lock:
            for source in (flag, self.sim_root / "sim.json"):
                try:
                    data = json.loads(source.read_text())
                except (OSError, ValueError):
                    continue
                fault = data if source == flag else data.get("fail_next_task")
                if not isinstance(fault, dict) or fault.get("type") not in (typ, "*"):
                    continue
                if source == flag:
                    flag.unlink(missing_ok=True)
                else:
                    data.pop("fail_next_task")
                    write_settings(self.sim_root, data)
                return str(fault.get("message") or "injected failure")
        return None

    def start(self, typ: str, ident: str, user: str, fn: TaskFn,
              on_injected_failure: Callable[[], None] | None = None) -> str:
        """Run ``fn`` as a worker task; returns its UPID at once.

        An injected failure replaces ``fn``; ``on_injected_failure`` then undoes what the
        synchronous part of the request did, as ``fn``'s own error path would (a failed
        create removes its config, so no ``lock: create`` is left behind).
        """
        with self._lock:
            self._counter += 1
            pid = os.getpid() * 100 + self._counter % 100
        starttime = int(time.time())
        pstart = int(time.monotonic() * 100) & 0xFFFFFFFF
        upid = make_upid(self.node, pid, pstart, starttime, typ, ident, user)
        _, log_path = self._paths(upid)
        status: dict[str, object] = {"upid": upid, "status": "running", **parse_upid(upid)}
        self._write_status(upid, status)
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the thread

        def emit(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()

        tlog = TaskLog(on_line=emit)
        fault = self._take_fault(typ)

        def run() -> None:
            try:
                if fault is not None:
                    if on_injected_failure is not None:
                        on_injected_failure()
                    raise SimTaskError(fault)
                fn(tlog)
                exitstatus = f"WARNINGS: {tlog.warnings}" if tlog.warnings else "OK"
                emit(f"TASK {exitstatus}")
            except Exception as exc:  # noqa: BLE001 - any failure ends the task with its text
                exitstatus = str(exc).strip() or type(exc).__name__
                emit(f"TASK ERROR: {exitstatus}")
            finally:
                log_file.close()
            self._write_status(upid, {**status, "status": "stopped", "exitstatus": exitstatus,
                                      "endtime": int(time.time())})

        thread = threading.Thread(target=run, name=f"task-{typ}-{ident}", daemon=True)
        self._threads[upid] = thread
        thread.start()
        return upid

    def status(self, upid: str) -> dict[str, object] | None:
        path, _ = self._paths(upid)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def log(self, upid: str) -> list[str]:
        _, path = self._paths(upid)
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []

    def list(self) -> list[dict[str, object]]:
        out = []
        for path in self.dir.glob("*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda t: int(t.get("starttime", 0)), reverse=True)

    def wait(self, upid: str, timeout: float = 60.0) -> dict[str, object] | None:
        """Block until the task stops (for pct and tests); returns its final status."""
        thread = self._threads.get(upid)
        if thread is not None:
            thread.join(timeout)
        return self.status(upid)
