"""Start failures a real PVE node gives, with PVE's messages."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.sim

VMID = 721


@pytest.fixture
def ct(sim_node):
    sim_node.create_ct(VMID)
    yield VMID
    sim_node.destroy_ct(VMID)


def test_missing_device_node_fails_start(sim_node, ct):
    rc, _, err = sim_node.run(f"pct set {ct} --dev0 /dev/nvidia0 && rm /dev/nvidia0 && pct start {ct}")
    sim_node.faults.upgrade_host_driver("580.95.05")  # recreates the node for the other tests
    assert rc == 255
    assert "Could not get mode or device ID of /dev/nvidia0" in err
    assert sim_node.backend.status(ct) == "stopped"


def test_immutable_resolv_conf_fails_start_until_ignored(sim_node, ct):
    rootfs = f"/var/lib/lxc/{ct}/rootfs"
    rc, _, err = sim_node.run(f"pct mount {ct} && chattr +i {rootfs}/etc/resolv.conf && pct unmount {ct}")
    assert rc == 0, err
    rc, _, err = sim_node.run(f"pct start {ct}")
    assert rc == 255
    assert "close (rename) atomic file '/etc/resolv.conf' failed: Operation not permitted" in err
    rc, _, err = sim_node.run(f"pct mount {ct} && touch {rootfs}/etc/.pve-ignore.resolv.conf "
                              f"&& pct unmount {ct} && pct start {ct}")
    assert rc == 0, err
    assert sim_node.run(f"pct status {ct}")[1].strip() == "status: running"
