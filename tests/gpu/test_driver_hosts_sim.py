"""Real hosts' GPUs and drivers against NVIDIA's real package graph (issue 15), on one simulated node.

Each host gets its own container and `up --only gpu,container,driver,cuda` (no llama.cpp build):
the userspace at exactly the host module's version from the simulated NVIDIA repository
(sim/repos/nvidia_graph.py: the 535-595 graph, same-prefix packages with their own versions,
toolkits from 12.3 only), a toolkit that repository really offers, then a second run with zero
changes. Between hosts the node's GPU and loaded driver are swapped (faults), as if the test moved
to another machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_cli import last_json, provision_cli

from provisioner.sim import manage
from provisioner.sim.fixture import SimNode, start_sim_node
from provisioner.sim.host.nvidia import Gpu, NvidiaHost
from provisioner.sim.hostfile import write_host_file

pytestmark = [pytest.mark.sim, pytest.mark.timeout(1200)]

STEPS = "gpu,container,driver,cuda"
GTX1080 = Gpu("NVIDIA GeForce GTX 1080", "6.1", 8192)
RTX4090 = Gpu()
RTX5090 = Gpu("NVIDIA GeForce RTX 5090", "12.0", 32607)
TIMES: dict[str, float] = {}
#: host files of the containers made so far: each test removes its own (`down`), a failed one's
#: is removed by the next test, so one node's single GPU is never held by a leftover container
CREATED: list[Path] = []


@pytest.fixture(scope="module")
def node() -> Iterator[SimNode]:
    import os
    n = start_sim_node(driver="535.247.01", gpus=[GTX1080], name=f"pt{os.getpid()}x")
    try:
        yield n
    finally:
        manage.stop(n.name)
        print("\ndriver hosts (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMES.items()))


def host(node: SimNode, gpu: Gpu, driver: str) -> None:
    while CREATED:
        down(CREATED.pop())
    node.faults.set_gpus([gpu])
    NvidiaHost(node.sim_root).set_driver(driver)


def up(path: Path, check: bool = True) -> dict:
    return last_json(provision_cli("--json", "up", str(path), "--yes", "--only", STEPS, check=check, timeout=900))


def ct(node: SimNode, vmid: int, script: str) -> str:
    code, out, err = node.run(f"pct exec {vmid} -- bash -s", stdin=script.encode())
    assert code == 0, out + err
    return out


def versions(node: SimNode, vmid: int) -> dict[str, str]:
    out = ct(node, vmid, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                         "'nvidia-*' 'libnvidia-*' 'libcuda*' 'firmware-nvidia-*' 'cuda-nvcc-*' 2>/dev/null; true")
    return {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if len(ln.split()) >= 3 and ln.split()[2][1] == "i"}


def converge(node: SimNode, tmp: Path, vmid: int, driver: str, toolkit: str, rule: str) -> dict:
    path = write_host_file(tmp / f"h{vmid}.yaml", node.conn, vmid=vmid, gpu=True,
                           extra={"llama_cpp": {"backend": "auto"}})
    CREATED.append(path)
    t0 = time.monotonic()
    first = up(path)
    TIMES[f"CT {vmid} first up"] = time.monotonic() - t0
    installed = versions(node, vmid)
    # the userspace at exactly the module's version, and every package of the driver with it
    for name in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-kernel-support", "libcudadebugger1"):
        assert installed.get(name) == f"{driver}-1", (name, installed)
    assert not [n for n in installed if n.endswith("-dkms") or n in ("nvidia-open", "cuda-drivers")], installed
    assert f"cuda-nvcc-{toolkit.replace('.', '-')}" in installed, installed
    cuda = next(c for c in first["applied"] if c["step"] == "cuda")
    assert f"CUDA toolkit {toolkit} " in cuda["summary"] and rule in cuda["summary"], cuda["summary"]
    assert ct(node, vmid, f"/usr/local/cuda-{toolkit}/bin/nvcc --version").count(f"release {toolkit}") == 1
    assert driver in ct(node, vmid, "nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    t0 = time.monotonic()
    again = up(path)
    TIMES[f"CT {vmid} second up"] = time.monotonic() - t0
    assert again["applied"] == [] and again["planned"] == [], again["planned"]
    return {"path": path, "first": first}


def down(path: Path) -> None:
    provision_cli("down", str(path), "--yes", check=False)


def test_gtx1080_on_535_gets_a_12x_toolkit_by_minor_version_compatibility(node: SimNode, tmp_path: Path) -> None:
    host(node, GTX1080, "535.247.01")
    r = converge(node, tmp_path, 681, "535.247.01", "12.9", "minor-version compatibility: driver 535.247.01 ≥ 525.60.13")
    assert any("CUDA 12.9 by minor-version compatibility" in n for n in r["first"]["notes"])
    down(r["path"])


def test_rtx4090_on_550(node: SimNode, tmp_path: Path) -> None:
    host(node, RTX4090, "550.163.01")
    r = converge(node, tmp_path, 682, "550.163.01", "12.4", "driver 550.163.01 ≥ 550.54.14, CUDA 12.4's own minimum")
    down(r["path"])


def test_rtx5090_on_595(node: SimNode, tmp_path: Path) -> None:
    host(node, RTX5090, "595.71.05")
    r = converge(node, tmp_path, 683, "595.71.05", "13.2", "CUDA 13.2's own minimum")
    down(r["path"])


def test_container_with_nvidia_container_toolkit_converges(node: SimNode, tmp_path: Path) -> None:
    """Same-prefix packages with versions of their own (nvidia-container-toolkit 1.19.0-1, libnvidia-egl-xcb1
    1:1.0.5-1) are not "the driver": nothing moves them, and the driver still follows the host."""
    host(node, RTX4090, "580.95.05")
    r = converge(node, tmp_path, 684, "580.95.05", "13.0", "CUDA 13.0's own minimum")
    ct(node, 684, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                  "nvidia-container-toolkit libnvidia-egl-xcb1 libnvidia-egl-gbm1 >/dev/null")
    own = {n: v for n, v in versions(node, 684).items() if not v.startswith("580.") and not n.startswith("cuda-")}
    assert own == {"nvidia-container-toolkit": "1.19.0-1", "nvidia-container-toolkit-base": "1.19.0-1",
                   "libnvidia-container-tools": "1.19.0-1", "libnvidia-container1": "1.19.0-1",
                   "libnvidia-egl-xcb1": "1:1.0.5-1", "libnvidia-egl-gbm1": "1.1.3-1"}, own
    assert up(r["path"])["planned"] == []
    # the host moves on within the branch: the driver's packages follow, the others stay as they are
    NvidiaHost(node.sim_root).set_driver("580.105.08")
    moved = up(r["path"])
    assert ("driver", "install") in [(c["step"], c["action"]) for c in moved["applied"]]
    after = versions(node, 684)
    assert {n: v for n, v in after.items() if n in own} == own
    assert all(v == "580.105.08-1" for n, v in after.items() if n not in own and not n.startswith("cuda-")), after
    assert up(r["path"])["planned"] == []
    down(r["path"])
