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
    doc = {f["id"]: f for f in last_json(provision_cli("--json", "doctor", str(path), check=False))["findings"]}
    assert doc["driver.reboot_pending"]["title"] == (f"NVIDIA module {NEW} on disk, {OLD} loaded: containers will "
                                                     "be moved at the next boot"), doc.get("driver.reboot_pending")
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
    # a start while a provision run holds the container's lock (`up` or `provision host` starting it, or
    # moving it after a reboot): the hook leaves the userspace to that run, never two apt runs in one CT
    lock = f"/run/lock/provision-{node.conn['node']}-ct{vmid}.lock"
    rc, out, err = node.run(f"flock {lock} /usr/local/sbin/provision-guard hook {vmid} post-start")
    assert rc == 0 and f"CT {vmid}: a provision run holds its lock" in out, out + err
    # down: the container (and its hookscript entry) goes, and with no managed container left, the guard
    assert "host guard removed" in provision_cli("down", str(path), "--yes").stderr
    assert node.run("ls /var/lib/provision/guard/ct-* /usr/local/sbin/provision-guard "
                    "/etc/systemd/system/provision-guard.service /var/lib/vz/snippets/provision-guard")[0] != 0


def journal(node: SimNode, vmid: int) -> str:
    return ct(node, vmid, "journalctl -u llama-server --no-pager -o cat 2>/dev/null | tail -n 40; true")


def wait_active(node: SimNode, vmid: int, timeout: float = 120) -> str:
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state = ct(node, vmid, "systemctl is-active llama-server; true").strip()
        if state == "active":
            break
        time.sleep(2)
    return state


def restart_ct(node: SimNode, vmid: int) -> tuple[str, str]:
    rc, out, err = node.run(f"pct stop {vmid} && pct start {vmid}", timeout=900)
    assert rc == 0, out + err  # a failing post-start hook is a warning: the container starts
    return out, err


def test_refuse_then_unreachable_repository_then_the_move(node: SimNode, tmp_path: Path) -> None:
    """refuse: llama-server stays stopped with the reason; sync without the repository: the container
    starts, llama-server is refused, dpkg clean and nothing moved; with it back the next start moves it."""
    import shlex

    import yaml
    from services.llama_bin import install_script, llama_server

    from provisioner.sim import assets
    from provisioner.sim.hostfile import host_data

    vmid = 692
    node.faults.upgrade_host_driver(OLD)  # whatever the other test left
    models = Path("/var/lib/provision-guard-test") / f"models-{os.getpid()}"
    data = host_data(node.conn, vmid=vmid, gpu=True, extra={
        "model": {"path": str(assets.smollm2_model()), "name": "smollm2", "host_dir": str(models)},
        "server": {"ctx_size": 4096, "threads": 2, "health_timeout": 300},
        "gateway": {"enabled": False}, "clients": {"claude_code": False},
        "driver": {"follow_host": "refuse"}})
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    def up_all(check: bool = True) -> dict:
        return last_json(provision_cli("--json", "up", str(path), "--yes", "--only",
                                       STEPS + ",model,services,verify", check=check, timeout=1200))

    last_json(provision_cli("--json", "up", str(path), "--yes", "--only", STEPS + ",model", timeout=900))
    # llama-server where the llama step puts it, stamped as the CUDA build it stands in for
    script = install_script("guard1").replace('"backend": "cpu"', '"backend": "cuda"')
    assert '"backend": "cuda"' in script
    code, _, err = node.run(f"pct exec {vmid} -- sh -c {shlex.quote(script)}", stdin=llama_server().read_bytes())
    assert code == 0, err
    first = up_all()
    assert ("services", "start") in [(c["step"], c["action"]) for c in first["applied"]], first["applied"]
    assert wait_active(node, vmid) == "active"
    try:
        # refuse: the host moves on, the container is left as it is, llama-server refuses to start
        node.faults.upgrade_host_driver(NEW, reboot=False)
        reboot(node)
        assert node.backend.status(vmid) == "running"
        assert wait_active(node, vmid, timeout=15) != "active"
        j = journal(node, vmid)
        assert (f"refusing to start the CUDA llama-server: the container's NVIDIA userspace is {OLD} (libcuda.so), "
                f"the host's module is {NEW}") in j, j
        assert "fix: run provision up for this container" in j
        _, log, _ = node.run(f"cat {GUARD_LOG}")
        assert f"CT {vmid}: userspace {OLD}, module {NEW}: not moved (driver.follow_host=refuse)" in log, log
        assert userspace(node, vmid)["libcuda1"] == f"{OLD}-1 held"
        # doctor names the fix
        doc = {f["id"]: f for f in last_json(provision_cli("--json", "doctor", str(path), check=False))["findings"]}
        assert doc["guard.recent"]["status"] == "warn" and "provision up" in doc["guard.recent"]["fix"], doc
        assert doc["driver.userspace"]["status"] == "fail", doc["driver.userspace"]

        # the fix doctor names: `up` (here with sync from now on) moves it
        data["driver"]["follow_host"] = "sync"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        last_json(provision_cli("--json", "up", str(path), "--yes", "--only", "driver", timeout=600))
        assert userspace(node, vmid)["libcuda1"] == f"{NEW}-1 held"
        restart_ct(node, vmid)
        assert wait_active(node, vmid) == "active"

        # sync, but the repository is down at the next driver change (back to OLD) and reboot:
        # the container starts, llama-server is refused, nothing is half-done
        before = userspace(node, vmid)
        pin = ct(node, vmid, "cat /etc/apt/preferences.d/provision-nvidia")
        ct(node, vmid, "apt-get clean")  # OLD's .debs from the first install would make the network moot
        node.faults.upgrade_host_driver(OLD, reboot=False)
        node.faults.stop_apt_server()
        try:
            reboot(node)
            assert node.backend.status(vmid) == "running"
            _, log, _ = node.run(f"cat {GUARD_LOG}")
            assert f"CT {vmid}: FAILED to move the userspace to {OLD}" in log, log
            assert "nothing was changed" in log
            assert userspace(node, vmid) == before
            assert ct(node, vmid, "cat /etc/apt/preferences.d/provision-nvidia") == pin
            assert ct(node, vmid, "dpkg --audit; echo rc=$?").strip() == "rc=0"
            assert wait_active(node, vmid, timeout=10) != "active"
            assert f"userspace is {NEW} (libcuda.so), the host's module is {OLD}" in journal(node, vmid)
        finally:
            node.faults.stop_apt_server(False)
        # the repository is back: the next start completes the move and llama-server starts
        restart_ct(node, vmid)
        assert wait_active(node, vmid) == "active"
        assert userspace(node, vmid)["libcuda1"] == f"{OLD}-1 held"
        again = up_all()
        assert again["applied"] == [] and again["planned"] == [], again["planned"]
    finally:
        provision_cli("down", str(path), "--yes", check=False)
        node.faults.upgrade_host_driver(OLD)
