"""A Debian 13 container on the simulated node: debian-13-standard comes from the appliance index (the
simulator debootstraps trixie from Debian's archive once, under its cache), the container really runs
Debian 13, and there the Vulkan backend is planned as a build instead of refused as on Debian 12."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from provision_cli import last_json, provision_cli

from provisioner.sim import assets
from provisioner.sim.hostfile import write_host_file

pytestmark = [pytest.mark.sim, pytest.mark.timeout(1800)]

VMID = 645


def test_debian_13_container_and_vulkan_plan(sim_node, tmp_path: Path) -> None:
    path = write_host_file(tmp_path / "d13.yaml", sim_node.conn, vmid=VMID, gpu=False, extra={
        "container": {"template": "debian-13-standard"},
        # host_cache off: the plan must say "build" even on a machine whose shared host cache already
        # holds a Vulkan build for Debian 13 (a developer's earlier run)
        "llama_cpp": {"backend": "vulkan", "host_cache": False,
                      "source": {"tarball": str(assets.llama_source()), "subdir": "llama.cpp"}}})
    try:
        rep = last_json(provision_cli("--json", "up", str(path), "--yes", "--only", "container", timeout=1500))
        assert [(c["step"], c["action"]) for c in rep["applied"]][:1] == [("container", "create")]
        code, out, err = sim_node.run(f"pct exec {VMID} -- sh -c '. /etc/os-release; echo $ID $VERSION_ID'")
        assert (code, out.strip()) == (0, "debian 13"), err
        planned = last_json(provision_cli("--json", "plan", str(path), "--only", "llama"))["planned"]
        assert [(c["step"], c["action"], c["summary"]) for c in planned] == \
            [("llama", "build", "build llama-server (vulkan)")]
        # the same host file on the Debian 12 template is refused before anything runs
        data = yaml.safe_load(path.read_text())
        data["container"]["template"] = "debian-12-standard"
        (tmp_path / "d12.yaml").write_text(yaml.safe_dump(data))
        proc = provision_cli("plan", str(tmp_path / "d12.yaml"), check=False)
        assert proc.returncode == 2 and "does not compile on Debian 12" in proc.stderr, proc.stderr
    finally:
        provision_cli("down", str(path), "--yes", check=False)
