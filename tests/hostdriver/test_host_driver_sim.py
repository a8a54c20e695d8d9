"""`provision host`: the Proxmox host's own NVIDIA driver, against a simulated node (issue 11).

One node for the module, started *without* an NVIDIA driver. Its host answers the real
commands (apt-get, apt-cache, dpkg, dpkg-query, dkms, modprobe, update-initramfs, reboot,
lspci, mokutil) from sim/host/packages.py behind overlays that only exist in its mount namespace,
against the simulated NVIDIA repository's real package graph (sim/repos/nvidia_graph.py). In order:
a plan that announces the reboot, the tool staying off without `manage: true`, a refusal for a
GPU generation the branch dropped, a Secure Boot host refused with the MOK steps, a leftover
/lib/modules directory and `dkms status` warnings that must not stop anything, a fresh install with
--reboot (580.95.05: the index has no per-version pinning package, so our own pin), two managed
containers at 580, a refusal when DKMS cannot build for an installed newer kernel (nothing moves),
then the upgrade to 595 (NVIDIA's nvidia-driver-pinning-595.71.05) that moves both containers in
lockstep, and the way back planned.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_cli import last_json, provision_cli

from provisioner.sim import manage
from provisioner.sim.fixture import SimNode, start_sim_node
from provisioner.sim.host.nvidia import Gpu
from provisioner.sim.hostfile import write_host_file

pytestmark = [pytest.mark.sim, pytest.mark.timeout(900)]

VMIDS = (671, 672)  # LXC names and bridge IPs are shared by every sim node on this machine
NEWER = "6.99.1-1-pve"
LEFTOVER = "6.99.0-1-pve"  # a removed kernel whose /lib/modules directory DKMS's files kept
PIN = "/etc/apt/preferences.d/provision-nvidia"
ROOT = Path(__file__).resolve().parents[2]
TIMES: dict[str, float] = {}


def provision(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return provision_cli(*args, check=check, timeout=timeout)


def host(node: SimNode, cmd: str) -> str:
    _code, out, err = node.run(cmd)
    return out + err


def packages(node: SimNode) -> dict[str, str]:
    out = host(node, "dpkg-query -W -f='${Package} ${Version}\\n' 'nvidia-*' 'libnvidia-*' 'libcuda*' 'firmware-nvidia-*'")
    return dict(ln.split() for ln in out.splitlines() if len(ln.split()) == 2)


def boots(node: SimNode) -> int:
    """Simulated reboots so far (sim/hostpkg.py counts them)."""
    f = node.sim_root / "host/pkg/boots"
    return int(f.read_text()) if f.exists() else 0


def smi(node: SimNode, vmid: int) -> str:
    return host(node, f"pct exec {vmid} -- nvidia-smi --query-gpu=driver_version --format=csv,noheader").strip()


@pytest.fixture(scope="module")
def node() -> Iterator[SimNode]:
    t0 = time.monotonic()
    n = start_sim_node(driver="", name=f"pt{os.getpid()}x")
    TIMES["node start"] = time.monotonic() - t0
    try:
        yield n
    finally:
        manage.stop(n.name)
        print("\nhost driver phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))


@pytest.fixture(scope="module")
def files(node: SimNode, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostdriver")
    out = {}
    for name, version in (("580", "580.95.05"), ("595", "595.71.05"), ("latest", "latest-595")):
        out[name] = write_host_file(d / f"host-{name}.yaml", node.conn, vmid=VMIDS[0], gpu=True,
                                    extra={"host": {"driver": {"manage": True, "version": version}}})
    out["off"] = write_host_file(d / "host-off.yaml", node.conn, vmid=VMIDS[0], gpu=True)
    for vmid in VMIDS:
        # one GPU, two containers: they share it, which provision does only when asked
        out[f"ct{vmid}"] = write_host_file(d / f"ct{vmid}.yaml", node.conn, vmid=vmid, gpu=True,
                                           extra={"gpu": {"share": True}})
    return out


def test_plan_announces_the_reboot_and_changes_nothing(node: SimNode, files: dict[str, Path]) -> None:
    proc = provision("host", str(files["580"]), "--plan")
    assert "REBOOT REQUIRED: the host runs no NVIDIA module; 580.95.05 loads only after a reboot" in proc.stderr
    assert "provision does not reboot on its own: pass --reboot" in proc.stderr
    data = last_json(provision("--json", "host", str(files["580"]), "--plan"))
    assert data["reboot_required"] is True and data["loaded"] is None and data["target"] == "580.95.05"
    actions = [(c["action"], c["summary"].split(" (")[0]) for c in data["planned"]]
    assert [a for a, _ in actions] == ["write", "install", "check", "write", "install", "write", "write"], actions
    # a fresh host (the node has its own /etc) also gets nvidia_uvm at boot and the boot unit
    assert actions[-1][1].startswith("nvidia_uvm at boot"), actions
    assert "trial DKMS build of 580.95.05" in data["planned"][2]["summary"]
    # --plan touched nothing
    assert packages(node) == {}
    assert "nvidia" not in host(node, "dkms status; ls /etc/apt/sources.list.d")


def test_off_by_default(node: SimNode, files: dict[str, Path]) -> None:
    data = last_json(provision("--json", "host", str(files["off"]), "--yes"))
    assert data["planned"] == [] and "host.driver.manage is false" in data["notes"][0]


def test_refuses_a_branch_that_dropped_the_gpu(node: SimNode, files: dict[str, Path]) -> None:
    node.faults.set_gpus([Gpu("NVIDIA GeForce GTX 1080", "6.1", 8192)])
    try:
        proc = provision("host", str(files["595"]), "--yes", "--reboot", check=False)
        assert proc.returncode == 1, proc.stderr
        assert "GTX 1080 (compute capability 6.1, Maxwell, Pascal and Volta) is not supported by the 595 branch" \
            in proc.stderr and "580 is the last branch" in proc.stderr
        assert "the host's driver was not touched" in proc.stderr
        assert packages(node) == {}
    finally:
        node.faults.set_gpus([Gpu()])


def test_secure_boot_is_refused_with_the_mok_steps(node: SimNode, files: dict[str, Path]) -> None:
    node.faults.secure_boot(True)
    try:
        proc = provision("host", str(files["580"]), "--plan", check=False)
        assert proc.returncode == 1, proc.stderr
        assert "UEFI Secure Boot is on and DKMS's signing key is" in proc.stderr
        assert "mokutil --import /var/lib/dkms/mok.pub" in proc.stderr and "Enroll MOK" in proc.stderr
        assert "mokutil --sb-state: SecureBoot enabled" in proc.stderr  # the evidence
        assert "the host's driver was not touched" in proc.stderr
        assert packages(node) == {} and "cuda" not in host(node, "ls /etc/apt/sources.list.d")
    finally:
        node.faults.secure_boot(False)


def test_leftover_module_directory_is_no_kernel(node: SimNode, files: dict[str, Path]) -> None:
    """A removed kernel's /lib/modules directory (DKMS files kept it) needs no headers and no build."""
    node.faults.leftover_kernel_dir(LEFTOVER)
    node.faults.dkms_status_warning(True)  # and every later `dkms status` line carries dkms' warning
    assert host(node, f"ls -d /lib/modules/{LEFTOVER}").strip() == f"/lib/modules/{LEFTOVER}"
    data = last_json(provision("--json", "host", str(files["580"]), "--plan"))
    assert any(n.startswith(f"/lib/modules/{LEFTOVER} is left from a removed kernel") for n in data["notes"])
    headers = next(c for c in data["planned"] if c["summary"].startswith("kernel headers and dkms"))
    assert "proxmox-default-headers" in headers["summary"] and LEFTOVER not in headers["summary"]
    check = next(c for c in data["planned"] if c["action"] == "check")
    assert LEFTOVER not in check["summary"]


def test_fresh_install_with_reboot(node: SimNode, files: dict[str, Path]) -> None:
    t0 = time.monotonic()
    data = last_json(provision("--json", "host", str(files["580"]), "--yes", "--reboot"))
    TIMES["fresh install + reboot"] = time.monotonic() - t0
    assert [c["action"] for c in data["applied"]][-1] == "reboot"
    assert boots(node) == 1 and not list(Path("/run").glob("provision-reboot-*"))
    assert host(node, "cat /sys/module/nvidia/version").strip() == "580.95.05"
    assert set(packages(node)) >= {"nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-kernel-open-dkms",
                                   "nvidia-kernel-support", "libcudadebugger1", "nvidia-modprobe"}
    # NVIDIA's index has no nvidia-driver-pinning-580.95.05: our own pin holds the whole family there
    assert not [n for n in packages(node) if n.startswith("nvidia-driver-pinning-")]
    assert all(v.startswith("580.95.05-") for n, v in packages(node).items())
    assert "Pin: version 580.95.05-*" in host(node, f"cat {PIN}")
    # the headers of the kernel the next full-upgrade brings come with Proxmox's metapackage
    assert "proxmox-default-headers" in host(node, "dpkg-query -W proxmox-default-headers")
    assert set(host(node, "apt-mark showhold").split()) == {"nvidia-driver-cuda", "libcuda1", "libnvidia-ml1",
                                                            "nvidia-kernel-open-dkms"}
    kver = host(node, "uname -r").strip()
    assert f"nvidia/580.95.05, {kver}, x86_64: installed (WARNING! Diff" in host(node, "dkms status")
    assert "blacklist nouveau" in host(node, "cat /etc/modprobe.d/provision-blacklist-nouveau.conf")
    assert "c" == host(node, "[ -c /dev/nvidia-uvm ] && echo c").strip()  # nvidia_uvm came back at boot
    again = last_json(provision("--json", "host", str(files["580"]), "--plan"))
    assert again["planned"] == [] and again["reboot_required"] is False


@pytest.fixture(scope="module")
def two_cts(node: SimNode, files: dict[str, Path]) -> tuple[int, int]:
    t0 = time.monotonic()
    for vmid in VMIDS:
        provision("up", str(files[f"ct{vmid}"]), "--yes", "--only", "gpu,container,driver")
    TIMES["two containers (container+driver steps)"] = time.monotonic() - t0
    assert [smi(node, v) for v in VMIDS] == ["580.95.05", "580.95.05"]
    return VMIDS


def test_refuses_when_dkms_cannot_build_for_a_newer_kernel(node: SimNode, files: dict[str, Path],
                                                            two_cts: tuple[int, int]) -> None:
    node.faults.set_newer_kernel(NEWER, has_module=True)  # installed, headers in place, 580 built for it
    node.faults.dkms_build_fails("595.71.05", NEWER)      # ...but 595 does not build against it
    booted = boots(node)
    before, dkms_before = packages(node), host(node, "dkms status")
    try:
        plan = last_json(provision("--json", "host", str(files["595"]), "--plan"))
        assert NEWER in plan["planned"][0]["summary"] or any(NEWER in c["summary"] for c in plan["planned"])
        proc = provision("host", str(files["595"]), "--yes", "--reboot", check=False)
        assert proc.returncode == 1, proc.stderr
        assert f"DKMS cannot build NVIDIA 595.71.05 for kernel {NEWER}" in proc.stderr
        assert "the next reboot would lose the GPU" in proc.stderr
        assert f"Error! Bad return status for module build on kernel: {NEWER}" in proc.stderr
        # nothing moved: packages, DKMS, the loaded module, no reboot, the containers
        assert packages(node) == before and host(node, "dkms status") == dkms_before
        assert host(node, "cat /sys/module/nvidia/version").strip() == "580.95.05"
        assert boots(node) == booted  # no reboot
        assert [smi(node, v) for v in VMIDS] == ["580.95.05", "580.95.05"]
    finally:
        (node.sim_root / "host/pkg/dkms-broken").unlink(missing_ok=True)


def test_upgrade_moves_two_containers_in_lockstep(node: SimNode, files: dict[str, Path],
                                                  two_cts: tuple[int, int]) -> None:
    # the second container is stopped and not started at boot: lockstep starts it, moves it, stops it
    host(node, f"pct set {VMIDS[1]} --onboot 0 && pct stop {VMIDS[1]}")
    plan = last_json(provision("--json", "host", str(files["latest"]), "--plan", "--reboot"))
    assert plan["target"] == "595.71.05" and plan["reboot_required"] is True
    assert plan["lockstep"] == {str(VMIDS[0]): {"before": "580.95.05", "after": "595.71.05"},
                                str(VMIDS[1]): {"before": "stopped", "after": "595.71.05"}}
    assert [c["action"] for c in plan["planned"]][-2:] == ["reboot", "lockstep"]
    t0 = time.monotonic()
    data = last_json(provision("--json", "host", str(files["latest"]), "--yes", "--reboot"))
    TIMES["upgrade + reboot + lockstep of 2 CTs"] = time.monotonic() - t0
    assert [c["action"] for c in data["applied"]][-2:] == ["reboot", "lockstep"]
    assert boots(node) == 2
    assert host(node, "cat /sys/module/nvidia/version").strip() == "595.71.05"
    status = host(node, "dkms status")
    kver = host(node, "uname -r").strip()
    for k in (kver, NEWER):  # built for the running kernel and the installed newer one
        assert f"nvidia/595.71.05, {k}, x86_64: installed" in status, status
    assert "580.95.05" not in status
    # 595.71.05 has a per-version pinning package in NVIDIA's index: it replaces our own file
    assert "nvidia-driver-pinning-595.71.05" in packages(node)
    assert "Pin: version 595.71.05-*" in host(node, "cat /etc/apt/preferences.d/nvidia-driver-pin")
    assert host(node, f"ls {PIN} 2>&1").strip().endswith("No such file or directory")
    assert "status: stopped" in host(node, f"pct status {VMIDS[1]}")  # stopped again, as it was
    host(node, f"pct start {VMIDS[1]}")
    for vmid in VMIDS:
        assert smi(node, vmid) == "595.71.05"
        libs = host(node, f"pct exec {vmid} -- sh -c 'ls /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.*'")
        assert "libnvidia-ml.so.595.71.05" in libs and "580.95.05" not in libs
    again = last_json(provision("--json", "host", str(files["latest"]), "--plan"))
    assert again["planned"] == [] and again["lockstep"] == {}
    for vmid in VMIDS:
        assert last_json(provision("--json", "plan", str(files[f"ct{vmid}"]), "--only", "driver"))["planned"] == []
        doc = json.loads(provision("--json", "doctor", str(files[f"ct{vmid}"]), check=False).stdout)
        driver = [f for f in doc["findings"] if f["id"].startswith("driver.")]
        assert driver and all(f["status"] == "ok" for f in driver), driver


def test_the_previous_version_stays_installable(node: SimNode, files: dict[str, Path],
                                                two_cts: tuple[int, int]) -> None:
    assert "580.95.05" in host(node, "apt-cache madison nvidia-driver-cuda")
    plan = last_json(provision("--json", "host", str(files["580"]), "--plan"))
    actions = [c["action"] for c in plan["planned"]]
    assert "check" in actions and "downgrade" in actions and plan["reboot_required"] is True
    assert '"previous": "580.95.05"' in host(node, "cat /var/lib/provision/host-driver/state.json")
