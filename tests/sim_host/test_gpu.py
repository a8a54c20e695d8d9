"""The simulated NVIDIA host: dynamic uvm major, userspace from the sim CUDA repo, mismatch."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.sim

VMID = 731
GPU_DEVS = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


@pytest.fixture(scope="module")
def gpu_ct(sim_node):
    sim_node.create_ct(VMID, **{f"dev{i}": path for i, path in enumerate(GPU_DEVS)})
    rc, _, err = sim_node.run(f"pct start {VMID}")
    assert rc == 0, err
    yield VMID
    sim_node.destroy_ct(VMID)
    sim_node.faults.upgrade_host_driver("580.95.05")


def _uvm_major(sim_node) -> int:
    rc, out, _ = sim_node.run("awk '$2 == \"nvidia-uvm\" {print $1}' /proc/devices")
    assert rc == 0 and out.strip(), "no nvidia-uvm in the host's /proc/devices"
    return int(out)


def test_host_view(sim_node):
    rc, out, err = sim_node.run(
        "cat /sys/module/nvidia/version; nvidia-smi --query-gpu=index,name,driver_version,compute_cap,"
        "memory.total,memory.used,memory.free,pci.bus_id --format=csv,noheader,nounits; "
        "ls /lib/modules/$(uname -r)/updates/dkms/")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "580.95.05"
    assert lines[1] == "0, NVIDIA GeForce RTX 4090, 580.95.05, 8.9, 24564, 1, 24563, 00000000:01:00.0"
    assert "nvidia.ko" in out


def test_uvm_node_has_the_hosts_dynamic_major(sim_node, gpu_ct):
    major = _uvm_major(sim_node)
    assert major not in (195,) and 234 <= major <= 254
    _rc, out, _ = sim_node.run(f"pct exec {gpu_ct} -- stat -c '%t:%T' /dev/nvidia-uvm /dev/nvidia0")
    assert out.split() == [f"{major:x}:0", "c3:0"]


def test_nvidia_smi_mismatch_after_host_upgrade(sim_node, gpu_ct):
    repo = sim_node.conn["cuda_repo_url"]
    rc, out, err = sim_node.run(
        f"pct exec {gpu_ct} -- sh -c 'curl -fsSO {repo}cuda-keyring_1.1-1_all.deb && "
        "dpkg -i cuda-keyring_1.1-1_all.deb && apt-get update -q && "
        "apt-get install -y -q --no-install-recommends nvidia-driver-pinning-580 && "
        "apt-cache policy nvidia-driver-cuda'", timeout=600)
    assert rc == 0, out[-2000:] + err[-2000:]
    # NVIDIA's branch pinning package holds the branch, not a release: the newest 580 is the candidate
    assert "Candidate: 580.105.08-1" in out, out[-2000:]
    rc, out, err = sim_node.run(
        f"pct exec {gpu_ct} -- sh -c 'printf \"Package: nvidia-* libnvidia-* libcuda* firmware-nvidia-*\\n"
        "Pin: version 580.95.05-*\\nPin-Priority: 1001\\n\" > /etc/apt/preferences.d/exact && "
        "apt-get install -y -q --no-install-recommends nvidia-driver-cuda libcuda1 libnvidia-ml1'", timeout=600)
    assert rc == 0, out[-2000:] + err[-2000:]
    rc, out, _ = sim_node.run(f"pct exec {gpu_ct} -- nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert (rc, out.strip()) == (0, "580.95.05")
    rc, out, _ = sim_node.run(f"pct exec {gpu_ct} -- ls /usr/lib/x86_64-linux-gnu/")
    assert "libcuda.so.580.95.05" in out and "libnvidia-ml.so.580.95.05" in out
    rc, out, _ = sim_node.run(f"pct exec {gpu_ct} -- apt-get -s install nvidia-open")
    assert "Inst nvidia-kernel-open-dkms (580.95.05-1" in out  # pinned, and a dkms package

    sim_node.faults.upgrade_host_driver("595.71.05")
    rc, out, _ = sim_node.run(f"pct exec {gpu_ct} -- nvidia-smi")
    assert rc == 18
    assert out == ("Failed to initialize NVML: Driver/library version mismatch\n"
                   "NVML library version: 580.95\n")


def test_nvidia_smi_without_nvidiactl(sim_node):
    vmid = VMID + 1
    sim_node.create_ct(vmid)
    try:
        rc, _, err = sim_node.run(f"pct start {vmid} && pct push {vmid} /usr/local/sbin/nvidia-smi "
                                  f"/usr/bin/nvidia-smi --perms 0755")
        assert rc == 0, err
        rc, out, _ = sim_node.run(f"pct exec {vmid} -- nvidia-smi")
        assert rc == 9
        assert out.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    finally:
        sim_node.destroy_ct(vmid)


def test_uvm_dropped_then_recreated_by_nvidia_modprobe(sim_node, gpu_ct):
    major = _uvm_major(sim_node)
    sim_node.faults.drop_uvm()
    rc, out, _ = sim_node.run("test -e /dev/nvidia-uvm; echo $?; grep -c nvidia-uvm /proc/devices; "
                              "test -d /sys/module/nvidia_uvm; echo $?")
    assert out.split() == ["1", "0", "1"]
    sim_node.run(f"pct stop {gpu_ct}")
    rc, _, err = sim_node.run(f"pct start {gpu_ct}")
    # vm_start's update_lxc_config stats every devN (pve-container src/PVE/LXC/Tools.pm:157-167@94f5585)
    assert rc == 255 and "Device /dev/nvidia-uvm does not exist" in err
    rc, out, err = sim_node.run(f"nvidia-modprobe -u -c=0 && stat -c '%t:%T' /dev/nvidia-uvm && pct start {gpu_ct}")
    assert rc == 0, err
    assert out.strip() == f"{major:x}:0"


@pytest.mark.parametrize("unprivileged", ["1", "0"])
def test_new_dev_hotplugs_into_running_ct_on_pve9(sim_node, unprivileged):
    vmid = VMID + 2 + int(unprivileged)
    sim_node.create_ct(vmid, unprivileged=unprivileged)
    try:
        rc, out, err = sim_node.run(f"pct start {vmid} && pct set {vmid} --dev0 /dev/nvidia0,gid=44,mode=0660 "
                                    f"&& pct pending {vmid} && pct exec {vmid} -- stat -c '%t:%T %a %G' /dev/nvidia0")
        assert rc == 0, err
        assert "cur dev0: /dev/nvidia0,gid=44,mode=0660" in out
        assert out.splitlines()[-1] == "c3:0 660 video"
    finally:
        sim_node.destroy_ct(vmid)


@pytest.mark.parametrize("unprivileged", ["1", "0"])
def test_node_is_0660_root_unless_mode_or_gid_say_otherwise(sim_node, unprivileged):
    """create_passthrough_device_node: mode 0660 unless mode=, owner uid/gid (default 0) mapped
    through the idmap; the host node's 0666 is not copied (pve-container src/PVE/LXC.pm:1897-1921
    @94f5585; 8.4: stable-bookworm src/lxc-pve-prestart-hook:150-165@6475873)."""
    vmid = VMID + 4 + int(unprivileged)
    sim_node.create_ct(vmid, unprivileged=unprivileged, dev0="/dev/nvidia0",
                       dev1="/dev/nvidiactl,gid=44,mode=0606")
    try:
        rc, out, err = sim_node.run(f"stat -c %a /dev/nvidia0 && pct start {vmid} && "
                                    f"pct exec {vmid} -- stat -c '%n %a %u %g' /dev/nvidia0 /dev/nvidiactl")
        assert rc == 0, err
        assert out.splitlines() == ["666", "/dev/nvidia0 660 0 0", "/dev/nvidiactl 606 0 44"]
    finally:
        sim_node.destroy_ct(vmid)


def test_driver_upgrade_before_and_after_reboot(sim_node):
    check = ("cat /sys/module/nvidia/version; modinfo -F version nvidia; "
             "nvidia-smi --query-gpu=driver_version --format=csv,noheader; echo rc=$?")
    sim_node.faults.upgrade_host_driver("580.95.05")  # baseline, whatever ran before
    try:
        sim_node.faults.upgrade_host_driver("580.105.08", reboot=False)
        _, out, _ = sim_node.run(check)
        assert out.splitlines() == ["580.95.05", "580.105.08",
                                    "Failed to initialize NVML: Driver/library version mismatch",
                                    "NVML library version: 580.105", "rc=18"]
        sim_node.faults.upgrade_host_driver("580.105.08")
        _, out, _ = sim_node.run(check)
        assert out.splitlines() == ["580.105.08", "580.105.08", "580.105.08", "rc=0"]
    finally:
        sim_node.faults.upgrade_host_driver("580.95.05")


def test_newer_kernel_without_module(sim_node):
    try:
        sim_node.faults.set_newer_kernel("6.99.1-1-pve", has_module=False)
        rc, out, err = sim_node.run("ls /lib/modules; modinfo -k 6.99.1-1-pve nvidia")
        assert rc == 1 and "6.99.1-1-pve" in out
        assert err.strip() == "modinfo: ERROR: Module nvidia not found."
    finally:
        sim_node.faults.set_newer_kernel("", has_module=True)
