"""The GPU stack against the simulated node: the real CLI, SSH, LXC, apt and a real llama.cpp build.

One container (CT 643) is shared by the whole module and the steps are run in
the order `up` runs them. Its CPU build of llama-server has the same spec as the end-to-end
test's and the interruption test's (the llama.cpp tarball of assets.llama_source(), the
VM-safe CPU flags of sim/hostfile.py), so the host build cache holds one entry for the three:
the first of them on a machine compiles, the others install it (the interruption test switches
the cache off: it must interrupt a real compile). A second container (CT 644) then gets
the cached build.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from provision_cli import last_json, provision_cli

from provisioner.facts.nvidia import BOOT_UNIT_PATH, BOOT_WANTS_LINK, MODULES_CONF_PATH
from provisioner.sim import assets
from provisioner.sim.host.nvidia import NvidiaHost
from provisioner.sim.hostfile import write_host_file

# the CPU build takes ~5 min on 2 idle cores and much longer when other builds share them
pytestmark = [pytest.mark.sim, pytest.mark.timeout(3600)]

VMID = 643  # LXC names and bridge IPs are shared by every sim node on this machine: keep it unusual
SECOND_VMID = 644
STEPS = "gpu,container,driver,cuda,llama"
MEASURED = Path("/tmp/provision-gpu-sim-build.json")


def provision(*args: str, only: str = STEPS, check: bool = True, timeout: float = 1800
              ) -> subprocess.CompletedProcess[str]:
    if any(a in ("up", "plan") for a in args[:3]):
        args = (*args, "--only", only)
    return provision_cli(*args, check=check, timeout=timeout)


report = last_json


def applied(rep: dict) -> list[tuple[str, str]]:
    return [(c["step"], c["action"]) for c in rep["applied"]]


def ct(sim_node, script: str) -> tuple[int, str]:
    code, out, err = sim_node.run(f"pct exec {VMID} -- bash -s", stdin=script.encode())
    return code, out + err


@pytest.fixture(scope="module")
def host_file(sim_node, tmp_path_factory) -> Iterator[Path]:
    path = write_host_file(tmp_path_factory.mktemp("gpu") / "host.yaml", sim_node.conn, vmid=VMID, gpu=True,
                           extra={"llama_cpp": {"backend": "cpu", "keep_builds": 2,
                                                "source": {"tarball": str(assets.llama_source()),
                                                           "subdir": "llama.cpp"}}})
    try:
        yield path
    finally:
        provision("down", str(path), "--yes", check=False)


@pytest.fixture(scope="module")
def passthrough(host_file: Path) -> dict:
    """First `up` of the host and container part: boot unit, CT with devN, started."""
    return report(provision("--json", "up", str(host_file), "--yes", only="gpu,container"))


def test_passthrough_entries_appear_and_converge(sim_node, host_file: Path, passthrough: dict) -> None:
    assert ("container", "create") in applied(passthrough)
    code, conf, _ = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf")
    devs = sorted(ln for ln in conf.splitlines() if ln.startswith("dev"))
    opt = "uid=0,gid=59999,mode=0660"  # provisioner/gpu_access.py
    assert devs == [f"dev0: /dev/nvidia0,{opt}", f"dev1: /dev/nvidiactl,{opt}",
                    f"dev2: /dev/nvidia-uvm,{opt}", f"dev3: /dev/nvidia-uvm-tools,{opt}"]
    code, out = ct(sim_node, "for n in /dev/nvidia0 /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools; do "
                             "[ -c $n ] || echo missing $n; done")
    assert (code, out) == (0, "")
    again = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container"))
    assert again["applied"] == []


def test_boot_unit_written_and_enabled_by_symlink(sim_node, host_file: Path, passthrough: dict) -> None:
    # the sim host has no systemd as PID 1: the unit is enabled by its WantedBy symlink. The node has
    # its own /etc/systemd/system and /etc/modules-load.d (SIM_ROOT/host/etc/...), never this machine's.
    def on_node(path: str) -> Path:
        return sim_node.sim_root / "host" / path.lstrip("/")

    before = {p: Path(p).exists() or Path(p).is_symlink() for p in (BOOT_UNIT_PATH, BOOT_WANTS_LINK)}
    on_node(BOOT_WANTS_LINK).unlink(missing_ok=True)
    rep = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container"))
    assert applied(rep) == [("gpu.host", "write")]
    unit = on_node(BOOT_UNIT_PATH).read_text()
    assert "Before=pve-guests.service" in unit and " -u -c=0" in unit
    assert os.readlink(on_node(BOOT_WANTS_LINK)) == BOOT_UNIT_PATH
    assert on_node(MODULES_CONF_PATH).read_text().strip().endswith("nvidia_uvm")
    # and this machine's own /etc is as it was
    assert before == {p: Path(p).exists() or Path(p).is_symlink() for p in (BOOT_UNIT_PATH, BOOT_WANTS_LINK)}


def test_missing_uvm_nodes_are_created(sim_node, host_file: Path, passthrough: dict) -> None:
    NvidiaHost(sim_node.sim_root).drop_uvm()
    assert not Path("/dev/nvidia-uvm").exists()
    rep = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container"))
    assert applied(rep) == [("gpu.host", "create")]  # its apply checks [ -c /dev/nvidia-uvm* ] itself
    # /dev is shared with every other sim node on this machine (one may remove the nodes at its
    # stop), so check this node's own state: nvidia-modprobe -u loaded nvidia_uvm
    assert NvidiaHost(sim_node.sim_root).load().uvm_loaded


def _versions(sim_node) -> dict[str, str]:
    code, out = ct(sim_node, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                             "nvidia-driver-cuda libcuda1 libnvidia-ml1")
    assert code == 0, out
    return {ln.split()[0]: " ".join(ln.split()[1:]) for ln in out.splitlines()}


def test_driver_userspace_pinned_to_host_version(sim_node, host_file: Path, passthrough: dict) -> None:
    rep = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container,driver"))
    # the pin, the apt configuration, the install, then the host guard's files for this container
    assert applied(rep) == [("driver", "write"), ("driver", "write"), ("driver", "install"), ("driver", "write")]
    assert _versions(sim_node) == {p: "580.95.05-1 hi" for p in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1")}
    code, out = ct(sim_node, "ls /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.* /usr/lib/x86_64-linux-gnu/libcuda.so.*; "
                             "nvidia-smi -L; cat /etc/apt/preferences.d/provision-nvidia; "
                             "dpkg -l | awk '$2 ~ /dkms/'")
    assert code == 0, out
    assert "libnvidia-ml.so.580.95.05" in out and "libcuda.so.580.95.05" in out
    assert "Pin: version 580.95.05-*" in out and "dkms" not in out.split("Pin-Priority")[1]
    again = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container,driver"))
    assert again["applied"] == [] and again["ssh_round_trips"] <= 3


def test_dkms_package_is_refused(sim_node, host_file: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(host_file.read_text())
    data["driver"] = {**data["driver"], "packages": ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-open"]}
    bad = tmp_path / "dkms.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = provision("up", str(bad), "--yes", only="gpu,container,driver", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "would install" in proc.stderr and "nvidia-kernel-open-dkms" in proc.stderr
    assert "never nvidia-open, cuda-drivers* or *-dkms" in proc.stderr
    code, out = ct(sim_node, "dpkg-query -W -f='${db:Status-Abbrev}' nvidia-kernel-open-dkms dkms 2>/dev/null; true")
    assert "ii" not in out
    # simulated before any hold was released: the container is exactly as it was
    assert _versions(sim_node) == {p: "580.95.05-1 hi" for p in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1")}
    assert report(provision("--json", "up", str(host_file), "--yes", only="gpu,container,driver"))["applied"] == []


@pytest.mark.parametrize("version", ["580.105.08", "580.95.05"])  # upgrade, then back down
def test_host_driver_change_moves_the_container(sim_node, host_file: Path, version: str) -> None:
    NvidiaHost(sim_node.sim_root).set_driver(version)
    rep = report(provision("--json", "up", str(host_file), "--yes", only="gpu,container,driver"))
    assert ("driver", "install") in applied(rep)
    assert _versions(sim_node) == {p: f"{version}-1 hi" for p in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1")}
    code, out = ct(sim_node, f"ls /usr/lib/x86_64-linux-gnu/libcuda.so.{version} && nvidia-smi -L")
    assert code == 0, out
    assert report(provision("--json", "up", str(host_file), "--yes", only="gpu,container,driver"))["applied"] == []


def test_cpu_build_of_llama_server_then_skipped(sim_node, host_file: Path, passthrough: dict) -> None:
    t0 = time.monotonic()
    rep = report(provision("--json", "up", str(host_file), "--yes", timeout=3600))
    build_s = time.monotonic() - t0
    llama = [a for s, a in applied(rep) if s == "llama"]
    # "install" when another test on this machine (same spec, see the module doc) built it first
    assert llama in (["build"], ["install"]), applied(rep)
    code, out = ct(sim_node, "/opt/provision/llama.cpp/current/bin/llama-server --version")
    assert code == 0 and "version:" in out, out
    code, out = ct(sim_node, "cat /opt/provision/llama.cpp/current/BUILD-STAMP.json")
    stamp = json.loads(out)
    assert stamp["backend"] == "cpu" and stamp["architectures"] == []
    code, link = ct(sim_node, "readlink /opt/provision/llama.cpp/current")
    assert link.strip() == f"builds/{stamp['hash']}"
    t1 = time.monotonic()
    again = report(provision("--json", "up", str(host_file), "--yes"))
    assert again["applied"] == []
    assert any("is current: no rebuild" in n for n in again["notes"])
    MEASURED.write_text(json.dumps({"first_llama_change": llama[0], "build_seconds": round(build_s, 1),
                                    "llama_step_seconds": rep["timings"].get("llama"),
                                    "second_run_seconds": round(time.monotonic() - t1, 1),
                                    "second_run_applied": again["applied"]}))


def test_second_container_installs_the_build_from_the_host_cache(sim_node, host_file: Path,
                                                                 tmp_path: Path) -> None:
    """Same spec, new container (as a re-created one): the plan says "from host cache", nothing compiles,
    and the pushed build passes --version and ldd in its new home before `current` flips.
    Needs the entry kept by the test above (or by any same-spec build on this machine)."""
    data = yaml.safe_load(host_file.read_text())
    second = write_host_file(tmp_path / "second.yaml", sim_node.conn, vmid=SECOND_VMID, gpu=False,
                             extra={"llama_cpp": data["llama_cpp"]})
    try:
        planned = report(provision("--json", "plan", str(second), only="container,llama"))["planned"]
        llama = [c for c in planned if c["step"] == "llama"]
        assert [c["action"] for c in llama] == ["install"], planned
        assert "from host cache" in llama[0]["summary"]
        rep = report(provision("--json", "up", str(second), "--yes", only="container,llama"))
        assert [a for s, a in applied(rep) if s == "llama"] == ["install"], applied(rep)
        code, out, err = sim_node.run(f"pct exec {SECOND_VMID} -- bash -s", stdin=(
            b"/opt/provision/llama.cpp/current/bin/llama-server --version; "
            b"ls /var/cache/provision/llama.cpp/build 2>/dev/null | wc -l"))
        assert code == 0 and "version:" in out + err, out + err
        assert out.split()[-1] == "0", out  # no CMake build tree: nothing was compiled here
        again = report(provision("--json", "up", str(second), "--yes", only="container,llama"))
        assert again["applied"] == []
        saved = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
        MEASURED.write_text(json.dumps({**saved, "second_container_llama_step_seconds": rep["timings"]["llama"],
                                        "unchanged_spec_llama_changes": len(again["applied"])}))
    finally:
        provision("down", str(second), "--yes", check=False)


def test_service_user_can_open_every_gpu_node_and_doctor_agrees(sim_node, host_file: Path, tmp_path: Path) -> None:
    """PVE makes each devN node 0660 root:root unless mode/gid say otherwise (pve-container
    src/PVE/LXC.pm:1897-1921@94f5585; the sim does the same). After a full `up` with a model the
    `llama` user must read and write every node, checked as llama itself, and doctor must agree.
    (``--regid`` too: without it setpriv keeps root's gid 0, which opens a root:root 0660 node anyway.)"""
    data = yaml.safe_load(host_file.read_text())
    data["model"] = {"path": str(assets.smollm2_model()), "location": "container"}
    data["gateway"] = {"enabled": False}
    # the tiny model says 8K; clients.claude_code needs 32K (as tests/doctor/test_services_sim.py)
    data["server"] = {"ctx_size": 32768, "override_kv": ["llama.context_length=int:32768"], "threads": 1}
    served = tmp_path / "served.yaml"
    served.write_text(yaml.safe_dump(data))
    provision_cli("up", str(served), "--yes", timeout=1800)
    nodes = "/dev/nvidia0 /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools"
    code, out = ct(sim_node, f"for n in {nodes}; do stat -c '%n %a %g' $n; "
                             "setpriv --reuid=llama --regid=llama --init-groups test -r $n -a -w $n || echo CANNOT $n; done")
    assert code == 0 and "CANNOT" not in out, out
    assert all(line.split()[1:] == ["660", "59999"] for line in out.splitlines()), out  # ours, not the host's 666
    doc = provision_cli("--json", "doctor", str(served), check=False)
    found = [f for f in json.loads(doc.stdout.strip().splitlines()[-1])["findings"] if f["id"] == "container.node_access"]
    assert found and all(f["status"] == "ok" for f in found), found
    # a devN without mode/gid (what earlier versions wrote) is a node llama cannot open: doctor says so
    rc, conf, _ = sim_node.run(f"pct config {VMID} | grep '^dev0:'")
    path = conf.strip().split(": ", 1)[1].split(",")[0]
    rc, _, err = sim_node.run(f"pct set {VMID} --dev0 {path} && pct stop {VMID} && pct start {VMID}")
    assert rc == 0, err
    code, out = ct(sim_node, "setpriv --reuid=llama --regid=llama --init-groups test -w /dev/nvidia0 || echo CANNOT")
    assert "CANNOT" in out
    doc = provision_cli("--json", "doctor", str(served), check=False)
    bad = [f for f in json.loads(doc.stdout.strip().splitlines()[-1])["findings"]
           if f["id"] == "container.node_access" and f["status"] == "fail"]
    assert bad and "cannot open /dev/nvidia0" in bad[0]["title"]
    provision_cli("up", str(served), "--yes", "--restart", timeout=1800)  # back to ours
    code, out = ct(sim_node, "setpriv --reuid=llama --regid=llama --init-groups test -r /dev/nvidia0 -a -w /dev/nvidia0 || echo CANNOT")
    assert "CANNOT" not in out, out


def test_changed_flags_rebuild_with_ccache_and_prune(sim_node, host_file: Path, tmp_path: Path) -> None:
    """Another flag → another stamp → a rebuild (ccache hits); keep_builds: 1 prunes the old build."""
    code, old = ct(sim_node, "readlink /opt/provision/llama.cpp/current")
    data = yaml.safe_load(host_file.read_text())
    data["llama_cpp"]["cmake_flags"] = [*data["llama_cpp"]["cmake_flags"], "-DPROVISION_TEST_FLAG=1"]
    data["llama_cpp"]["keep_builds"] = 1
    data["llama_cpp"]["host_cache"] = False  # a real rebuild each run (the cache would keep this spec too)
    changed = tmp_path / "flags.yaml"
    changed.write_text(yaml.safe_dump(data))
    t0 = time.monotonic()
    rep = report(provision("--json", "up", str(changed), "--yes"))
    rebuild_s = time.monotonic() - t0
    assert ("llama", "build") in applied(rep)
    code, out = ct(sim_node, "readlink /opt/provision/llama.cpp/current; ls -1 /opt/provision/llama.cpp/builds; "
                             "CCACHE_DIR=/var/cache/provision/ccache ccache -s")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] != old.strip() and lines[1] == lines[0].split("/", 1)[1], out  # only the new build is left
    saved = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
    MEASURED.write_text(json.dumps({**saved, "rebuild_with_ccache_seconds": round(rebuild_s, 1),
                                    "ccache_stats": " | ".join(ln.strip() for ln in lines[2:8])}))

def test_failed_build_leaves_the_previous_build_serving(sim_node, host_file: Path, tmp_path: Path) -> None:
    """A build that fails (here: the server target switched off) shows its tail; `current` stays."""
    code, before = ct(sim_node, "readlink /opt/provision/llama.cpp/current")
    assert code == 0 and before.startswith("builds/"), before
    data = yaml.safe_load(host_file.read_text())
    data["llama_cpp"]["cmake_flags"] = ["-DLLAMA_BUILD_SERVER=OFF"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = provision("up", str(bad), "--yes", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "building llama-server failed during 'build'" in proc.stderr
    assert "keeps serving from /opt/provision/llama.cpp/current" in proc.stderr
    assert "output (tail):" in proc.stderr and "llama-server" in proc.stderr.split("output (tail):")[1]
    code, after = ct(sim_node, "readlink /opt/provision/llama.cpp/current && "
                               "/opt/provision/llama.cpp/current/bin/llama-server --version")
    assert code == 0 and after.splitlines()[0] == before.strip(), after
