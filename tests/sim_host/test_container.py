"""A real container on the simulated node: create, boot systemd, pct over real SSH."""

from __future__ import annotations

import subprocess
import time

import paramiko
import pytest

pytestmark = pytest.mark.sim

VMID = 711


@pytest.fixture(scope="module")
def ct(sim_node):
    t0 = time.monotonic()
    sim_node.create_ct(VMID, hostname="simct")
    created = time.monotonic() - t0
    rc, _out, err = sim_node.run(f"pct start {VMID}")
    assert rc == 0, err
    yield created
    sim_node.destroy_ct(VMID)


def test_systemd_reaches_running(sim_node, ct):
    assert sim_node.wait_systemd(VMID) == "running"
    assert ct < 30  # created from the cache, not debootstrapped


def test_pct_exec_passes_exit_code_and_stdin(sim_node, ct):
    assert sim_node.run(f"pct exec {VMID} -- sh -c 'exit 7'")[0] == 7
    rc, out, _ = sim_node.run(f"pct exec {VMID} -- tr a-z A-Z", stdin=b"hello\n")
    assert (rc, out) == (0, "HELLO\n")


def test_ct_is_unprivileged_with_pve_network_files(sim_node, ct):
    rc, out, _ = sim_node.run(f"pct exec {VMID} -- sh -c 'cat /proc/self/uid_map; hostname; "
                              f"cat /etc/network/interfaces /etc/resolv.conf'")
    assert rc == 0
    assert out.split()[:3] == ["0", "100000", "65536"]
    assert "simct" in out and "address 10.0.3." in out and "nameserver 10.0.3.1" in out


def test_push_and_pull(sim_node, ct, tmp_path):
    rc, _, err = sim_node.run(f"printf 'key=1\\n' > /tmp/p{VMID} && pct push {VMID} /tmp/p{VMID} "
                              f"/root/pushed --perms 0600 --user 0 --group 0")
    assert rc == 0, err
    rc, out, _ = sim_node.run(f"pct exec {VMID} -- stat -c '%a %u %g' /root/pushed")
    assert out.strip() == "600 0 0"
    rc, out, err = sim_node.run(f"pct pull {VMID} /etc/hostname /tmp/h{VMID} && cat /tmp/h{VMID}")
    assert (rc, out.strip()) == (0, "simct"), err


def test_host_shows_pve_paths(sim_node, ct):
    rc, out, _ = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf; pveversion; pct status {VMID}")
    assert rc == 0
    assert "hostname: simct" in out and "pve-manager/9.1" in out and "status: running" in out


def test_ssh_rejects_a_wrong_host_key(sim_node, tmp_path):
    known = tmp_path / "known_hosts"
    key = paramiko.Ed25519Key.from_private_key_file(str(sim_node.ssh_key))  # a key that is not the host's
    known.write_text(f"[{sim_node.ssh_host}]:{sim_node.ssh_port} ssh-ed25519 {key.get_base64()}\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(sim_node.ssh_host, port=sim_node.ssh_port, username="root",
                       key_filename=str(sim_node.ssh_key), look_for_keys=False, allow_agent=False)


def test_mount_shows_rootfs_at_pve_path(sim_node):
    vmid = VMID + 1
    sim_node.create_ct(vmid)
    try:
        rc, out, err = sim_node.run(f"pct mount {vmid} && cat /var/lib/lxc/{vmid}/rootfs/etc/debian_version "
                                    f"&& grep '^lock' /etc/pve/lxc/{vmid}.conf && pct unmount {vmid} "
                                    f"&& ! test -e /var/lib/lxc/{vmid}/rootfs/etc/debian_version")
        assert rc == 0, err
        assert "mounted CT" in out and "lock: mounted" in out
    finally:
        sim_node.destroy_ct(vmid)


def test_snapshot_rollback_delete(sim_node):
    vmid = VMID + 2
    sim_node.create_ct(vmid)
    be, log = sim_node.backend, (lambda _: None)
    try:
        rootfs = be.rootfs_path(vmid)
        be.snapshot(vmid, "before", log)
        (rootfs / "root" / "after-snapshot").write_text("x")
        be.rollback(vmid, "before", log)
        assert not (rootfs / "root" / "after-snapshot").exists()
        assert (rootfs / "etc" / "debian_version").exists()
        be.delete_snapshot(vmid, "before", log)
        with pytest.raises(Exception, match="does not exist"):
            be.rollback(vmid, "before", log)
    finally:
        sim_node.destroy_ct(vmid)


def test_pvesh_acts_as_root_at_pam(sim_node):
    vmid = VMID + 3
    sim_node.create_ct(vmid)
    try:
        rc, out, err = sim_node.run(f"pvesh set /nodes/{sim_node.node}/lxc/{vmid}/config --dev0 /dev/nvidia0,gid=44 "
                                    f"&& pvesh get /nodes/{sim_node.node}/lxc/{vmid}/config --output-format json")
        assert rc == 0, err
        assert '"dev0": "/dev/nvidia0,gid=44"' in out
        rc, _, err = sim_node.run(f"pvesh set /nodes/{sim_node.node}/lxc/{vmid}/config --dev1 /dev/nvidia9")
        assert (rc, err.strip()) == (255, "Device /dev/nvidia9 does not exist")
    finally:
        sim_node.destroy_ct(vmid)


def test_backend_start_from_outside_the_sim_namespace(sim_node):
    """The API and pct start CTs inside the sim namespace; tests may call the backend directly."""
    vmid = VMID + 4
    conf = sim_node.create_ct(vmid)
    try:
        sim_node.backend.start(vmid, conf, lambda _: None)
        deadline = time.monotonic() + 60
        while True:  # until systemd's bus is up, systemctl cannot even ask
            proc = subprocess.run(["lxc-attach", "-P", str(sim_node.backend.lxcpath), "-n", str(vmid),
                                   "--", "systemctl", "is-system-running", "--wait"],
                                  capture_output=True, text=True, timeout=120, check=False)
            if "Failed to connect to bus" not in proc.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert proc.stdout.strip() == "running", proc.stderr
    finally:
        sim_node.destroy_ct(vmid)


def test_bind_mounts_at_start_and_hotplugged(sim_node):
    vmid = VMID + 5
    # a path the CT's (unprivileged) root can traverse, as a PVE storage path would be
    tmp_path = sim_node.sim_root / "test-binds"
    (tmp_path / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models" / "m.gguf").write_text("weights")
    (tmp_path / "cache").mkdir(exist_ok=True)
    sim_node.create_ct(vmid, mp0=f"{tmp_path}/models,mp=/models,ro=1")
    try:
        rc, out, err = sim_node.run(
            f"pct start {vmid} && pct exec {vmid} -- cat /models/m.gguf && "
            f"! pct exec {vmid} -- touch /models/x 2>/dev/null && "
            f"pct set {vmid} --mp1 {tmp_path}/cache,mp=/var/cache/llm && pct pending {vmid} && "
            f"pct exec {vmid} -- ls -d /var/cache/llm")
        assert rc == 0, err
        assert "weights" in out and "cur mp1: " in out and "/var/cache/llm" in out
    finally:
        sim_node.destroy_ct(vmid)
