"""`provision up|plan|status` over an inventory against two real simulated nodes and one broken host.

Node A is the session's ``sim_node``; node B is started here (its own name, ports, API
certificate and SSH keys). The inventory mixes both shapes: a directory holding one host
file (``a.yaml``) and one inventory file (``fleet.yaml``: ``defaults:`` plus host ``b`` and
host ``broken``, whose API fingerprint is wrong). Only the container and GPU passthrough
steps run (nothing compiles), with ``gpu.boot_fix: false`` and ``driver.follow_host: off``: the GPU
step only sets the devN entries (the boot unit has its own tests in tests/gpu, the host guard in
tests/guard).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from provisioner.sim import manage
from provisioner.sim.fixture import SimNode, allocate_ip, start_sim_node
from provisioner.sim.hostfile import host_data
from provision_cli import last_json, provision_cli

pytestmark = [pytest.mark.sim, pytest.mark.timeout(600)]

VMID_A, VMID_B, VMID_BROKEN = 961, 962, 963  # unusual: LXC names and IPs are shared by all sim nodes
MEASURED = Path("/tmp/provision-fleet-sim.json")  # numbers quoted in the README
STEPS = "container,gpu"  # gpu: the devN entries (boot_fix off)


def provision(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return provision_cli(*args, check=False, timeout=timeout)


def data_for(node: SimNode, vmid: int) -> dict:
    ip = allocate_ip(node.name, vmid)
    return host_data(node.conn, vmid=vmid, hostname=f"fleet-{vmid}", gpu=True,
                     extra={"container": {"network": {"ip": f"{ip}/24"}, "memory_mb": 1024},
                            "gpu": {"boot_fix": False}, "driver": {"follow_host": "off"}})


@pytest.fixture(scope="module")
def node_b(sim_node) -> Iterator[SimNode]:
    node = start_sim_node(name=f"{sim_node.name}x", driver="570.195.03")
    try:
        yield node
    finally:
        manage.stop(node.name)


@pytest.fixture(scope="module")
def fleet(sim_node, node_b, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("fleet")
    inv = root / "inventory"
    inv.mkdir()
    a = data_for(sim_node, VMID_A)
    (inv / "a.yaml").write_text(yaml.safe_dump(a, sort_keys=False))
    b = data_for(node_b, VMID_B)
    broken = data_for(sim_node, VMID_BROKEN)
    broken["proxmox"]["fingerprint"] = ":".join(["AB"] * 32)
    # what b and broken share goes to defaults; each entry keeps what differs
    shared = {k: b.pop(k) for k in ("version", "gpu", "driver", "llama_cpp")}
    for k in shared:
        broken.pop(k)
    (inv / "fleet.yaml").write_text(yaml.safe_dump({"defaults": shared, "hosts": {"b": b, "broken": broken}},
                                                   sort_keys=False))
    (inv / "README.md").write_text("not a host file: ignored\n")
    # single host files for clean-up (`down` takes one host)
    singles = {}
    for name, node, vmid in (("a", sim_node, VMID_A), ("b", node_b, VMID_B)):
        singles[name] = root / f"{name}-single.yaml"
        singles[name].write_text(yaml.safe_dump(data_for(node, vmid), sort_keys=False))
    try:
        yield {"dir": inv, "file": inv / "fleet.yaml", "singles": singles}
    finally:
        for path in singles.values():
            provision("down", str(path), "--yes")


@pytest.fixture(scope="module")
def first_up(fleet) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = provision("--json", "up", str(fleet["dir"]), "--yes", "--only", STEPS, "--workers", "4")
    return proc, time.monotonic() - t0


def test_good_hosts_converge_in_parallel_broken_one_fails_clearly(first_up, sim_node, node_b) -> None:
    proc, wall = first_up
    assert proc.returncode == 1, proc.stderr
    report = last_json(proc)
    assert report["ok"] is False
    hosts = {h["name"]: h for h in report["hosts"]}
    assert list(hosts) == ["a", "b", "broken"]
    for name in ("a", "b"):
        assert hosts[name]["ok"] and hosts[name]["result"] == "changed 2", hosts[name]
        assert [c["action"] for c in hosts[name]["applied"]] == ["create", "start"]
    bad = hosts["broken"]
    assert bad["ok"] is False and bad["result"] == "failed"
    assert "cannot reach the Proxmox API" in bad["error"] and "proxmox.fingerprint" in bad["error"]
    # a and b (different nodes) overlapped: the run took less than the two hosts one after the other
    assert report["seconds"] < hosts["a"]["seconds"] + hosts["b"]["seconds"], report
    MEASURED.write_text(json.dumps({"fleet_seconds": report["seconds"], "process_seconds": round(wall, 2),
                                    **{f"{n}_seconds": hosts[n]["seconds"] for n in hosts}}))
    for node, vmid in ((sim_node, VMID_A), (node_b, VMID_B)):
        code, out, _ = node.run(f"pct status {vmid}")
        assert (code, out.strip()) == (0, "status: running")
    _, out, _ = sim_node.run(f"test -e /etc/pve/lxc/{VMID_BROKEN}.conf; echo $?")
    assert out.strip() == "1"  # nothing was made for the broken host


def test_second_run_changes_nothing_and_shows_a_summary(first_up, fleet) -> None:
    proc = provision("up", str(fleet["dir"]), "--yes", "--only", STEPS)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    # not a terminal: one line per event, then every error in full, then the summary table
    assert " a: started" in err and " b: started" in err
    lines = err.splitlines()
    assert any(ln.endswith("s)") and " a: ok (" in ln for ln in lines), err
    assert any(" b: ok (" in ln for ln in lines), err
    assert "error: broken: " in err and "fix:" in err
    table = err[err.index("API calls"):]
    for name in ("a", "b", "broken"):
        assert any(ln.split()[:2] in (["a", "ok"], ["b", "ok"], ["broken", "failed"])
                   for ln in table.splitlines() if ln.split()[:1] == [name]), table
    assert "3 host(s): 2 ok, 1 failed (" in err
    rep = last_json(provision("--json", "up", str(fleet["dir"]), "--yes", "--only", STEPS))
    good = [h for h in rep["hosts"] if h["name"] in ("a", "b")]
    assert [h["applied"] for h in good] == [[], []]
    assert all(h["api_calls"] <= 10 and h["ssh_round_trips"] <= 3 for h in good), good


def test_plan_over_an_inventory_file_exit_codes(first_up, fleet, tmp_path: Path) -> None:
    data = yaml.safe_load(fleet["file"].read_text())
    del data["hosts"]["broken"]
    ok = tmp_path / "fleet.yaml"
    ok.write_text(yaml.safe_dump(data))
    proc = provision("plan", str(ok), "--exit-code", "--only", STEPS)
    assert proc.returncode == 0, proc.stderr
    data["hosts"]["b"]["container"]["cores"] = 3
    ok.write_text(yaml.safe_dump(data))
    proc = provision("plan", str(ok), "--exit-code", "--only", STEPS)
    assert proc.returncode == 2, proc.stderr
    assert "b: 1 change(s) planned" in proc.stderr and "cores: 2 → 3" in proc.stderr
    # with a failed host the failure wins: exit 1
    assert provision("plan", str(fleet["dir"]), "--exit-code", "--only", STEPS).returncode == 1


def test_status_shows_each_container(first_up, fleet, sim_node, node_b) -> None:
    proc = provision("--json", "status", str(fleet["dir"]))
    assert proc.returncode == 1, proc.stderr
    hosts = {h["name"]: h for h in last_json(proc)["hosts"]}
    a, b = hosts["a"], hosts["b"]
    assert (a["vmid"], a["node"], a["state"]) == (VMID_A, sim_node.node, "running")
    assert (b["vmid"], b["node"], b["state"]) == (VMID_B, node_b.node, "running")
    assert a["host_driver"] == "580.95.05" and b["host_driver"] == "570.195.03"
    assert a["gpus"] and all("(" in g for g in a["gpus"]), a
    assert a["ct_driver"] is None and a["driver_mismatch"] is False  # --only container: no userspace yet
    assert a["llama"] == a["gateway"] == "n/a"  # no model configured: no services to probe
    assert hosts["broken"]["ok"] is False and "cannot reach the Proxmox API" in hosts["broken"]["error"]
    text = provision("status", str(fleet["dir"])).stderr
    assert "host driver" in text and "llama-server" in text
    row_a = next(ln for ln in text.splitlines() if ln.split()[:1] == ["a"])
    assert str(VMID_A) in row_a and sim_node.node in row_a and "running" in row_a and "580.95.05" in row_a


def test_a_host_locked_by_another_run_waits_while_the_others_go_on(first_up, fleet, tmp_path: Path) -> None:
    """Another workstation's `up` holds a's run lock: the fleet waits for it (default --wait for
    an inventory) instead of failing, and b does not wait for a."""
    import shutil

    from provisioner.config import load
    from provisioner.engine import run
    from provisioner.engine.lock import ContainerLock

    inv = tmp_path / "inv"
    inv.mkdir()
    shutil.copy(fleet["dir"] / "a.yaml", inv / "a.yaml")
    data = yaml.safe_load(fleet["file"].read_text())
    del data["hosts"]["broken"]
    (inv / "fleet.yaml").write_text(yaml.safe_dump(data))
    cfg = load(inv / "a.yaml").config
    conn = run.connect(cfg)
    try:
        with ContainerLock(cfg, conn):
            proc = subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "-v", "up", str(inv), "--yes",
                                     "--only", STEPS], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            time.sleep(5)
            assert proc.poll() is None  # still waiting for a
    finally:
        conn.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    waiting = [i for i, ln in enumerate(lines) if " a: … waiting for the lock held by " in ln]
    a_done = next(i for i, ln in enumerate(lines) if " a: ok (" in ln)
    b_done = next(i for i, ln in enumerate(lines) if " b: ok (" in ln)
    assert waiting and b_done < a_done, err
    assert float(lines[a_done].split(" a: ok (")[1].split("s)")[0]) >= 4.0
