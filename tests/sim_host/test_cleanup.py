"""Stopping a node leaves nothing behind; faults that need no container."""

from __future__ import annotations

import json
import time

import pytest

from provisioner.sim import manage
from provisioner.sim.fixture import leftovers, start_sim_node

pytestmark = pytest.mark.sim


def test_stop_removes_everything(sim_node):
    other = start_sim_node(name=f"{sim_node.name}x")
    other.create_ct(741)
    other.create_ct(742)
    rc, _, err = other.run("pct start 741 && pct mount 742")
    assert rc == 0, err
    assert other.backend.status(741) == "running"
    assert manage.start(manage.StartOptions(name=other.name), log=lambda _: None)["ssh"]["port"] == other.ssh_port
    manage.stop(other.name)
    assert leftovers(other, [741, 742]) == []
    assert manage.status(other.name)["state"] == "absent"


def test_ssh_delay_and_drop(sim_node):
    sim_node.faults.set_ssh_delay(700)
    try:
        t0 = time.monotonic()
        assert sim_node.run("true")[0] == 0
        assert time.monotonic() - t0 >= 0.7
    finally:
        sim_node.faults.set_ssh_delay(0)
    client = sim_node.ssh()
    chan = client.get_transport().open_session()
    chan.exec_command("sleep 30")
    time.sleep(0.5)
    assert sim_node.faults.drop_ssh_connections() >= 1
    assert chan.recv_exit_status() != 0 or not client.get_transport().is_active()
    client.close()


def test_api_delay_and_task_failure_are_recorded(sim_node):
    sim_node.faults.set_api_delay(250)
    sim_node.faults.fail_next_task("vzstart", "boom")
    data = json.loads((sim_node.sim_root / "sim.json").read_text())
    assert data["delay_ms"] == 250
    assert json.loads((sim_node.sim_root / "faults/fail_next_task.json").read_text()) == \
        {"type": "vzstart", "message": "boom"}
    sim_node.faults.clear()
