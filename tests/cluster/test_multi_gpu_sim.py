"""A multi-GPU node: containers each get their own GPU; a taken one is refused unless shared.

A stand-alone sim node with two RTX 4090s; three containers through the real CLI
(`up --only container,gpu`: nothing compiles).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from provisioner.sim import manage
from provisioner.sim.fixture import SimNode, leftovers, start_sim_node
from provisioner.sim.host.nvidia import Gpu

from provision_cli import last_json

from .simutil import gpu_devs, host_file, provision, up

pytestmark = [pytest.mark.sim, pytest.mark.timeout(900)]

A, B, C = 9761, 9762, 9763  # LXC names are shared by every sim node on this machine: keep them unusual


@pytest.fixture(scope="module")
def node() -> Iterator[SimNode]:
    n = start_sim_node(name=f"pt{os.getpid()}c0", gpus=[Gpu(bus_id="00000000:01:00.0"),
                                                        Gpu(bus_id="00000000:02:00.0")])
    try:
        yield n
    finally:
        vmids = [int(p.name) for p in (n.sim_root / "lxc").iterdir() if p.name.isdigit()]
        manage.stop(n.name)
        assert not leftovers(n, vmids)


def _file(tmp_path, node: SimNode, vmid: int, gpu: dict) -> os.PathLike:
    return host_file(tmp_path / f"{vmid}.yaml", node, [node], vmid=vmid, node=node.node,
                     extra={"gpu": gpu})


def test_each_container_gets_its_own_gpu_and_a_taken_one_is_refused(node, tmp_path) -> None:
    a = _file(tmp_path, node, A, {"select": [0]})
    b = _file(tmp_path, node, B, {"select": "all"})
    up(a)
    assert gpu_devs(node, A) == ["/dev/nvidia0"]
    rep = up(b)  # select: all on a node where GPU 0 is taken = the free one
    assert gpu_devs(node, B) == ["/dev/nvidia1"]
    assert any("skips GPU 0" in n and f"CT {A}" in n for n in rep["notes"])
    assert up(a)["applied"] == [] and up(b)["applied"] == []  # converged: zero changes

    c = _file(tmp_path, node, C, {"select": [0]})
    proc = provision("up", str(c), "--yes", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr + proc.stdout
    assert f"GPU 0 (NVIDIA GeForce RTX 4090, 01:00.0, /dev/nvidia0) is already passed to CT {A} (llm-{A})" in err
    assert "gpu.share: true" in err
    assert not (node.sim_root / "etc/pve/lxc" / f"{C}.conf").exists()  # refused before anything was made

    shared = _file(tmp_path, node, C, {"select": [0], "share": True})
    up(shared)
    assert gpu_devs(node, C) == ["/dev/nvidia0"]
    assert up(shared)["applied"] == []
    # A, the first holder, keeps working with its unchanged host file (issue 20 point 10: exit 2 before)
    assert provision("plan", str(a), "--exit-code").returncode == 0
    rep = up(a)
    assert rep["applied"] == [] and any(f"CT {C}" in n and "asked to share it" in n for n in rep["notes"])
    proc = provision("--json", "doctor", str(a), check=False)
    found = [f for f in last_json(proc)["findings"] if f["id"] == "container.gpu_exclusive"]
    assert [f["status"] for f in found] == ["warn"] and f"CT {C}" in found[0]["title"], found
    for vmid, path in ((A, a), (B, b), (C, shared)):
        provision("down", str(path), "--yes")
