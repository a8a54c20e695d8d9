"""The task runner: UPIDs in PVE's format, exit statuses, logs kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve.tasks import TaskLog, TaskManager, make_upid, parse_upid


def test_upid_format_round_trip() -> None:
    upid = make_upid("pve", 0x1A2B, 0x3C4D, 0x6920A0B0, "vzstart", "120", "root@pam!provision")
    assert upid == "UPID:pve:00001A2B:00003C4D:6920A0B0:vzstart:120:root@pam!provision:"
    assert parse_upid(upid) == {"node": "pve", "pid": 0x1A2B, "pstart": 0x3C4D, "starttime": 0x6920A0B0,
                                "type": "vzstart", "id": "120", "user": "root@pam!provision"}
    with pytest.raises(ValueError, match="unable to parse worker upid 'UPID:x'"):
        parse_upid("UPID:x")


@pytest.mark.parametrize("body, exitstatus, last", [
    (lambda log: log("working"), "OK", "TASK OK"),
    (lambda log: (log.warn("a"), log.warn("b")), "WARNINGS: 2", "TASK WARNINGS: 2"),
    (lambda log: (_ for _ in ()).throw(SimTaskError("Device /dev/x does not exist")),
     "Device /dev/x does not exist", "TASK ERROR: Device /dev/x does not exist"),
])
def test_exit_status_and_log(tmp_path: Path, body, exitstatus: str, last: str) -> None:  # type: ignore[no-untyped-def]
    tasks = TaskManager(tmp_path, "pve")
    upid = tasks.start("vzstart", "120", "root@pam", body)
    status = tasks.wait(upid)
    assert status is not None and status["status"] == "stopped" and status["exitstatus"] == exitstatus
    assert tasks.log(upid)[-1] == last
    # a new manager (a restarted server) still knows the task
    again = TaskManager(tmp_path, "pve")
    assert again.status(upid)["exitstatus"] == exitstatus  # type: ignore[index]
    assert again.log(upid) == tasks.log(upid)
    assert [t["upid"] for t in again.list()] == [upid]


def test_warning_lines_look_like_pve(tmp_path: Path) -> None:
    log = TaskLog()
    log("line one\nline two")
    log.warn("careful")
    assert log.lines == ["line one", "line two", "WARN: careful"]
    assert log.warnings == 1
