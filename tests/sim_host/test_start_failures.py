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


def test_missing_device_node_fails_start_and_later_puts(sim_node, ct):
    """vm_start and every config PUT run update_lxc_config, which stats each devN (pve-container
    src/PVE/LXC.pm:769-785, src/PVE/LXC/Tools.pm:157-167, src/PVE/API2/LXC/Config.pm:253-256@94f5585)."""
    rc, _, err = sim_node.run(f"pct set {ct} --dev0 /dev/nvidia0 && rm /dev/nvidia0 && pct start {ct}")
    try:
        assert rc == 255
        assert "Device /dev/nvidia0 does not exist" in err
        assert sim_node.backend.status(ct) == "stopped"
        rc, _, err = sim_node.run(f"pct set {ct} --memory 1100")
        assert rc == 255 and "Device /dev/nvidia0 does not exist" in err
    finally:
        sim_node.faults.upgrade_host_driver("580.95.05")  # recreates the node for the other tests


def test_dev_without_path_is_refused(sim_node, ct):
    rc, _, err = sim_node.run(f"pct set {ct} --dev0 mode=0666")
    assert rc == 255 and "Path has to be defined" in err  # src/PVE/LXC/Config.pm:1535@94f5585


def test_immutable_resolv_conf_fails_start_until_ignored(sim_node, ct):
    """The hook's words stay in LXC's DEBUG log: the start only says it failed, unless debug=1
    (pve-container src/PVE/LXC.pm:3110-3122, src/pve-container@.service@94f5585)."""
    rootfs = f"/var/lib/lxc/{ct}/rootfs"
    rc, _, err = sim_node.run(f"pct mount {ct} && chattr +i {rootfs}/etc/resolv.conf && pct unmount {ct}")
    assert rc == 0, err
    rc, out, err = sim_node.run(f"pct start {ct}")
    assert rc == 255
    assert f"startup for container '{ct}' failed" in err
    assert "atomic file" not in out + err
    assert f'Failed to run lxc.hook.pre-start for container "{ct}"' in out
    rc, out, err = sim_node.run(f"pct start {ct} --debug")
    assert rc == 255
    assert "close (rename) atomic file '/etc/resolv.conf' failed: Operation not permitted" in out
    rc, _, err = sim_node.run(f"pct mount {ct} && touch {rootfs}/etc/.pve-ignore.resolv.conf "
                              f"&& pct unmount {ct} && pct start {ct}")
    assert rc == 0, err
    assert sim_node.run(f"pct status {ct}")[1].strip() == "status: running"
