"""Snapshots and rollback on the simulated node: the real CLI, real API tasks, real LXC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.config import load
from provisioner.engine import run
from provisioner.facts.pve import MARKER_LINE
from provisioner.sim.hostfile import write_host_file
from provision_cli import last_json, provision_cli

pytestmark = pytest.mark.sim
VMID = 901


def provision(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return provision_cli(*args, check=check)


as_json = last_json


def with_changes(path: Path, tmp: Path, name: str, **container) -> Path:
    data = yaml.safe_load(path.read_text())
    data["container"].update(container)
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def snapshots(path: Path, vmid: int) -> list[dict]:
    conn = run.connect(load(path).config)
    try:
        return [s for s in conn.pve.get(conn.pve.ct(vmid, "snapshot")) if s["name"] != "current"]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def host(sim_node, tmp_path_factory) -> Path:
    path = write_host_file(tmp_path_factory.mktemp("snap") / "host.yaml", sim_node.conn, vmid=VMID, gpu=False,
                           extra={"container": {"snapshots_keep": 2}})
    first = as_json(provision("--json", "up", str(path), "--yes", "--only", "container"))
    assert [c["action"] for c in first["applied"]] == ["create", "start"]
    assert snapshots(path, VMID) == []  # nothing to protect yet: no snapshot of a new CT
    yield path
    provision("down", str(path), "--yes", check=False)


def test_up_takes_a_snapshot_before_changing_and_keeps_the_last_n(sim_node, host, tmp_path):
    conn = run.connect(load(host).config)
    try:  # the user's own snapshot: listed, never pruned
        conn.pve.wait_task(conn.pve.post(conn.pve.ct(VMID, "snapshot"), snapname="before-upgrade",
                                         description="mine"))
    finally:
        conn.close()
    taken = []
    for i, mem in enumerate((1536, 2048, 2560)):
        report = as_json(provision("--json", "up", str(with_changes(host, tmp_path, f"m{i}", memory_mb=mem)),
                                   "--yes", "--only", "container"))
        assert [c["action"] for c in report["applied"]] == ["update"]
        note = next(n for n in report["notes"] if "snapshot provision-" in n)
        taken.append(note.split("snapshot ")[1].split()[0])
    names = [s["name"] for s in snapshots(host, VMID)]
    assert "before-upgrade" in names
    assert sorted(n for n in names if n.startswith("provision-")) == sorted(taken[-2:])
    newest = next(s for s in snapshots(host, VMID) if s["name"] == taken[-1])
    assert "taken by provision" in newest["description"] and "container 1" in newest["description"]
    # a converged run changes nothing and takes no snapshot
    same = as_json(provision("--json", "up", str(tmp_path / "m2.yaml"), "--yes", "--only", "container"))
    assert same["applied"] == [] and len(snapshots(host, VMID)) == 3


def test_rollback_shows_a_plan_then_returns_to_the_newest(sim_node, host, tmp_path):
    newest = max(s["name"] for s in snapshots(host, VMID) if s["name"].startswith("provision-"))
    code, _, err = sim_node.run(f"pct exec {VMID} -- touch /root/written-after-the-snapshot")
    assert code == 0, err
    refused = provision("rollback", str(host), check=False)  # no terminal, no --yes: refuse
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = provision("rollback", str(host), "--yes")
    assert f"to snapshot {newest}" in done.stderr and "stopped, rolled back and started" in done.stderr
    assert "and started" in done.stderr.splitlines()[-1]
    assert "memory: 2048 → 2560" in done.stderr  # what changed since (config)
    code, _, _ = sim_node.run(f"pct exec {VMID} -- test -e /root/written-after-the-snapshot")
    assert code == 1  # the file written after the snapshot is gone
    code, out, _ = sim_node.run(f"pct status {VMID}")
    assert "running" in out
    code, out, _ = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf")
    assert out.split("\n[")[0].count("memory: 2048") == 1


def test_rollback_to_a_named_snapshot_and_unknown_name(host):
    bad = provision("rollback", str(host), "--to", "nope", "--yes", check=False)
    assert bad.returncode == 1 and "has no snapshot 'nope'" in bad.stderr and "before-upgrade" in bad.stderr
    ok = as_json(provision("--json", "rollback", str(host), "--to", "before-upgrade", "--yes"))
    assert ok["snapshot"] == "before-upgrade" and ok["ok"]


def test_bind_mount_means_no_snapshot_and_up_goes_on(sim_node, tmp_path):
    vmid = VMID + 1
    shared = sim_node.sim_root / "shared-models"
    shared.mkdir(exist_ok=True)
    sim_node.create_ct(vmid, tags="provision", description=f"{MARKER_LINE}\n", hostname=f"llm-{vmid}",
                       mp0=f"{shared},mp=/srv/models")
    path = write_host_file(tmp_path / "bind.yaml", sim_node.conn, vmid=vmid, gpu=False,
                           extra={"container": {"mounts": [{"host": str(shared), "path": "/srv/models"}]}})
    try:
        report = as_json(provision("--json", "up", str(path), "--yes", "--only", "container"))
        assert report["applied"], report
        assert any(f"mp0 is a bind mount ({shared})" in n and "continuing without one" in n
                   for n in report["notes"]), report["notes"]
        assert snapshots(path, vmid) == []
    finally:
        provision("down", str(path), "--yes", check=False)


def test_snapshot_off_takes_none(sim_node, host, tmp_path):
    before = len(snapshots(host, VMID))
    off = with_changes(host, tmp_path, "off", snapshot=False, cores=1)
    report = as_json(provision("--json", "up", str(off), "--yes", "--only", "container"))
    assert report["applied"] and len(snapshots(host, VMID)) == before
    assert not any("snapshot" in n for n in report["notes"])


def test_rollback_that_zfs_refuses_leaves_the_ct_running(sim_node, tmp_path):
    """PVE checks volume_rollback_is_possible before it stops the CT (pve-guest-common
    src/PVE/AbstractConfig.pm:1124-1210@4a8f6cb); ZFS allows only the newest snapshot (pve-storage
    src/PVE/Storage/ZFSPoolPlugin.pm:588-614@0c56bad). A product that stopped the CT first left it
    down after the refusal; now the rollback task alone decides, with start=1."""
    vmid = VMID + 2
    path = write_host_file(tmp_path / "zfs.yaml", sim_node.conn, vmid=vmid, gpu=False,
                           extra={"container": {"storage": "local-zfs"}})
    try:
        first = as_json(provision("--json", "up", str(path), "--yes", "--only", "container"))
        assert [c["action"] for c in first["applied"]] == ["create", "start"]
        for i, mem in enumerate((1536, 2560)):  # two runs, two snapshots
            provision("up", str(with_changes(path, tmp_path, f"z{i}", memory_mb=mem)), "--yes", "--only", "container")
        ours = sorted(s["name"] for s in snapshots(path, vmid) if s["name"].startswith("provision-"))
        assert len(ours) == 2
        refused = provision("rollback", str(path), "--to", ours[0], "--yes", check=False)
        assert refused.returncode == 1
        assert f"can't rollback, '{ours[0]}' is not most recent snapshot on 'local-zfs:" in refused.stderr
        code, out, _ = sim_node.run(f"pct status {vmid}")
        assert "running" in out, "the refused rollback must not leave the CT stopped"
        ok = provision("rollback", str(path), "--to", ours[1], "--yes")
        assert "and started" in ok.stderr
        assert "running" in sim_node.run(f"pct status {vmid}")[1]
        # a stopped CT is rolled back and stays stopped
        assert sim_node.run(f"pct stop {vmid}")[0] == 0
        stopped = provision("rollback", str(path), "--to", ours[1], "--yes")
        assert "stay stopped" in stopped.stderr and "stopped" in sim_node.run(f"pct status {vmid}")[1]
    finally:
        provision("down", str(path), "--yes", check=False)


def test_trivial_changes_take_none_and_the_one_before_a_driver_change_is_kept(sim_node, host, tmp_path):
    """Issue 20 point 7: starting a stopped CT took a snapshot, and three trivial runs pushed out the one
    from before a driver change (snapshots_keep: 2 here)."""
    import time

    from provisioner.engine.snapshot import snapshot_name

    driver = snapshot_name(time.time() - 86400)  # as `up` takes before a driver change, a day ago
    conn = run.connect(load(host).config)
    try:
        conn.pve.wait_task(conn.pve.post(conn.pve.ct(VMID, "snapshot"), snapname=driver,
                                         description="kinds: driver; taken by provision `up` before: driver: pin"))
    finally:
        conn.close()
    provision("up", str(host), "--yes", "--only", "container")  # converged to the host file again
    before = {s["name"] for s in snapshots(host, VMID)}
    code, _, err = sim_node.run(f"pct stop {VMID}")
    assert code == 0, err
    report = as_json(provision("--json", "up", str(host), "--yes", "--only", "container"))
    assert [c["action"] for c in report["applied"]] == ["start"]
    assert {s["name"] for s in snapshots(host, VMID)} == before  # none for a start
    note = next(n for n in report["notes"] if "no snapshot taken" in n)
    assert "`provision rollback FILE` would return to provision-" in note
    for i, cores in enumerate((1, 2, 1)):  # the host file says 2
        edit = as_json(provision("--json", "up", str(with_changes(host, tmp_path, f"c{i}", cores=cores)), "--yes",
                                 "--only", "container"))
        assert any("snapshot provision-" in n and "taken" in n for n in edit["notes"]), edit["notes"]
    ours = sorted(s["name"] for s in snapshots(host, VMID) if s["name"].startswith("provision-"))
    assert driver in ours and len(ours) == 3, ours  # the newest two, and the last one before a driver change
