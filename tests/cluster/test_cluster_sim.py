"""A 2-node simulated PVE cluster: the API answers for both nodes, vmids are cluster-wide,
containers go to a named node or to the node with the wanted GPU, and stay there.

pve1 has an RTX 4090, pve2 an RTX 5090; every host file talks to pve1's API only
(like a real cluster, any node's API serves all of them) and lists both nodes' SSH.
`up --only container,gpu`: nothing compiles.
"""

from __future__ import annotations

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from provisioner.sim.fixture import SimNode

from .simutil import gpu_devs, host_file, provision, up

pytestmark = [pytest.mark.sim, pytest.mark.timeout(900)]

NAMED, PLACED, OTHER = 9771, 9772, 9773  # LXC names are shared by every sim node on this machine
TEMPLATE = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


@pytest.fixture(scope="module")
def cluster(sim_cluster) -> list[SimNode]:
    return sim_cluster


@pytest.fixture(scope="module")
def api(cluster) -> ProxmoxAPI:
    n1 = cluster[0]
    user, token = n1.token_id.split("!")
    return ProxmoxAPI("127.0.0.1", port=n1.api_port, user=user, token_name=token,
                      token_value=n1.token_secret, verify_ssl=False)


def test_one_api_answers_for_the_cluster(cluster, api) -> None:
    n1, n2 = cluster
    assert [(n["node"], n["status"]) for n in api.nodes.get()] == [("pve1", "online"), ("pve2", "online")]
    n2.create_ct(OTHER)
    try:
        assert {(r["vmid"], r["node"]) for r in api.cluster.resources.get(type="vm")} == {(OTHER, "pve2")}
        # /nodes/pve2/... asked of pve1 is answered by pve2 (proxied, like pveproxy)
        assert [c["vmid"] for c in api.nodes("pve2").lxc.get()] == [OTHER]
        assert api.nodes("pve2").lxc(OTHER).config.get()["hostname"] == f"ct{OTHER}"
        assert api.nodes("pve1").lxc.get() == []
        with pytest.raises(ResourceException) as err:  # nextid is cluster-wide
            api.cluster.nextid.get(vmid=OTHER)
        assert err.value.errors == {"vmid": f"VM {OTHER} already exists"}
        with pytest.raises(ResourceException) as err:  # PVE::Cluster::check_vmid_unused
            api.nodes("pve1").lxc.post(vmid=OTHER, ostemplate=TEMPLATE, hostname="dup", rootfs="local-lvm:8")
        assert err.value.status_code == 500
        assert err.value.content == f"CT {OTHER} already exists on node 'pve2'"
    finally:
        n2.destroy_ct(OTHER)
    with pytest.raises(ResourceException) as err:  # not a member: as on a real node (sim/api/server.py cites it)
        api.nodes("pve9").lxc.get()
    assert err.value.status_code == 500 and "hostname lookup 'pve9' failed" in str(err.value)


def test_named_node_and_cluster_wide_vmid(cluster, tmp_path) -> None:
    n1, n2 = cluster
    path = host_file(tmp_path / "named.yaml", n1, cluster, vmid=NAMED, node="pve2", ip_node=n2)
    rep = up(path)
    assert ("container", "create") in [(c["step"], c["action"]) for c in rep["applied"]]
    assert (n2.sim_root / "etc/pve/lxc" / f"{NAMED}.conf").exists()
    assert not (n1.sim_root / "etc/pve/lxc" / f"{NAMED}.conf").exists()
    assert gpu_devs(n2, NAMED) == ["/dev/nvidia0"]
    code, out, _ = n2.run(f"pct exec {NAMED} -- ls /dev/nvidia0")  # the container runs on pve2
    assert code == 0, out
    assert up(path)["applied"] == []  # converged: zero changes
    # the same vmid asked for on pve1: it exists on pve2 (vmids are cluster-wide)
    clash = host_file(tmp_path / "clash.yaml", n1, cluster, vmid=NAMED, node="pve1",
                      extra={"container": {"hostname": "clash"}})
    proc = provision("plan", str(clash), check=False)
    assert proc.returncode != 0 and f"vmid {NAMED} exists on node pve2, not on pve1" in proc.stderr + proc.stdout


def test_placed_by_gpu_kind_and_found_again(cluster, tmp_path) -> None:
    n1, n2 = cluster
    path = host_file(tmp_path / "placed.yaml", n1, cluster, vmid=PLACED, node="auto", ip_node=n1,
                     extra={"proxmox": {"placement": {"gpu": "4090", "min_vram_gb": 24}}})
    rep = up(path)
    assert any("placed the container on node pve1" in n for n in rep["notes"]), rep["notes"]
    assert (n1.sim_root / "etc/pve/lxc" / f"{PLACED}.conf").exists()
    assert gpu_devs(n1, PLACED) == ["/dev/nvidia0"]
    again = up(path)
    assert again["applied"] == []
    assert any("the container is on node pve1" in n for n in again["notes"])
    # the only 5090 (pve2) is taken by the named-node container and the 4090 is now taken too
    busy = host_file(tmp_path / "busy.yaml", n1, cluster, vmid=OTHER, node="auto",
                     extra={"proxmox": {"placement": {"compute_capability": "8.9"}}})
    proc = provision("plan", str(busy), check=False)
    text = proc.stderr + proc.stdout
    assert proc.returncode == 2, text
    assert f"pve1: NVIDIA GeForce RTX 4090 (held by CT {PLACED})" in text
    assert f"pve2: NVIDIA GeForce RTX 5090 (held by CT {NAMED})" in text
    provision("down", str(path), "--yes")
