"""The host guard (driver.follow_host) on a simulated node: the host moves its GPU containers by itself.

One node of its own (its driver is upgraded and it is rebooted). Containers get
`up --only gpu,container,driver` (no CUDA toolkit, no llama.cpp build); the rest is the guard on the
sim host: its hookscript in PVE's phases (sim/pve/hookscript.py), its boot unit run before the
guests (sim/host/bootunits.py), the container's own apt against the simulated NVIDIA repository.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_cli import last_json, provision_cli

from provisioner.sim import manage
from provisioner.sim.fixture import SimNode, start_sim_node
from provisioner.sim.hostfile import write_host_file

pytestmark = [pytest.mark.sim, pytest.mark.timeout(1500)]

STEPS = "gpu,container,driver"
OLD, NEW = "580.95.05", "580.105.08"
GUARD_LOG = "/var/lib/provision/guard/guard.log"


@pytest.fixture(scope="module")
def node() -> Iterator[SimNode]:
    n = start_sim_node(driver=OLD, name=f"pt{os.getpid()}g")
    try:
        yield n
    finally:
        manage.stop(n.name)


def up(path: Path, check: bool = True) -> dict:
    return last_json(provision_cli("--json", "up", str(path), "--yes", "--only", STEPS, check=check, timeout=900))


def ct(node: SimNode, vmid: int, script: str) -> str:
    code, out, err = node.run(f"pct exec {vmid} -- bash -s", stdin=script.encode())
    assert code == 0, out + err
    return out


def userspace(node: SimNode, vmid: int) -> dict[str, str]:
    out = ct(node, vmid, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                         "'nvidia-*' 'libnvidia-*' 'libcuda*' 2>/dev/null; true")
    return {ln.split()[0]: ln.split()[1] + (" held" if ln.split()[2][0] == "h" else "")
            for ln in out.splitlines() if len(ln.split()) >= 3 and ln.split()[2][1] == "i"}


def reboot(node: SimNode, timeout: float = 600) -> None:
    boots = node.sim_root / "host" / "pkg" / "boots"
    before = int(boots.read_text()) if boots.exists() else 0
    assert node.run("reboot")[0] == 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the reboot is over when it counted the boot and the onboot containers have been started
        if boots.exists() and int(boots.read_text()) > before and not (node.sim_root / "run" / "rebooting").exists():
            ps = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
            if not any("reboot-worker" in _cmdline(p) and str(node.sim_root) in _cmdline(p) for p in ps):
                return
        time.sleep(1)
    raise AssertionError("the simulated host did not come back")


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_driver_upgrade_and_reboot_moves_the_container_without_provision(node: SimNode, tmp_path: Path) -> None:
    vmid = 691
    path = write_host_file(tmp_path / "h.yaml", node.conn, vmid=vmid, gpu=True)
    first = up(path)
    assert any(c["summary"].startswith("host guard:") for c in first["applied"]), first["applied"]
    assert node.run(f"pct config {vmid}")[1].count("hookscript: local:snippets/provision-guard") == 1
    assert up(path)["planned"] == []
    # unattended upgrades install the new driver; the old module stays loaded until the reboot
    node.faults.upgrade_host_driver(NEW, reboot=False)
    rc, out, err = node.run("/usr/local/sbin/provision-guard dpkg-post-invoke >/dev/null; "
                            "cat /var/lib/provision/guard/reboot-pending")
    assert rc == 0 and out.strip() == f"ondisk={NEW} loaded={OLD}", out + err
    # ... and days later the host reboots: no provision command in between
    reboot(node)
    assert node.backend.status(vmid) == "running"
    _, log, _ = node.run(f"cat {GUARD_LOG}")
    assert f"boot: NVIDIA module {NEW} loaded" in log, log
    assert f"CT {vmid}: moving the NVIDIA userspace {OLD} -> {NEW}" in log and f"CT {vmid}: userspace now {NEW}" in log, log
    assert node.run("test -e /var/lib/provision/guard/reboot-pending")[0] == 1
    pkgs = userspace(node, vmid)
    for name in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1"):
        assert pkgs[name] == f"{NEW}-1 held", pkgs
    assert all(v.startswith(NEW) for n, v in pkgs.items() if n != "nvidia-driver-pinning-580.105.08"), pkgs
    assert "nvidia-driver-pinning-580.105.08" in pkgs
    assert NEW in ct(node, vmid, "nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    again = up(path)
    assert again["planned"] == [] and again["applied"] == [], again["planned"]
    provision_cli("down", str(path), "--yes", check=False)
