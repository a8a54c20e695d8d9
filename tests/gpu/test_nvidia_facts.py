"""Parsing host facts: driver version (both /proc formats), GPUs, device nodes, kernel modules."""

from __future__ import annotations

from provisioner.facts.kernel import KernelModules, parse_kernel, warnings
from provisioner.facts.nvidia import (cc_from_name, parse_boot, parse_devices, parse_driver, parse_gpus,
                                      parse_proc_version)
from provisioner.facts.nvidia_ct import parse_cuda, parse_driver_userspace

OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U22-I3-AE18-23-3)  Wed Sep 24 23:30:47 UTC 2025")
PROPRIETARY = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024"


def test_proc_version_open_format() -> None:
    assert parse_proc_version(OPEN + "\nGCC version:  gcc version 12.2.0\n") == ("580.95.05", "open")


def test_proc_version_proprietary_format() -> None:
    assert parse_proc_version(PROPRIETARY) == ("550.54.14", "proprietary")


def test_proc_version_garbage() -> None:
    assert parse_proc_version("") == (None, None)
    assert parse_proc_version("cat: /proc/driver/nvidia/version: No such file") == (None, None)


def test_driver_prefers_sys_module_version() -> None:
    d = parse_driver(f"sys=580.105.08\nproc={OPEN}\n", 0)
    assert (d.version, d.source, d.flavour) == ("580.105.08", "sys", "open")


def test_driver_falls_back_to_proc() -> None:
    d = parse_driver(f"sys=\nproc={PROPRIETARY}\n", 0)
    assert (d.version, d.source, d.flavour) == ("550.54.14", "proc", "proprietary")


def test_driver_not_loaded() -> None:
    d = parse_driver("sys=\nproc=\n", 0)
    assert d.version is None and not d.loaded


def test_gpus_with_compute_cap_and_minors() -> None:
    out = ("0, NVIDIA GeForce RTX 4090, 8.9, 24564, 00000000:01:00.0\n"
           "1, NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 12.0, 97887, 00000000:41:00.0\n"
           "#minor 0000:01:00.0 1\n#minor 0000:41:00.0 0\n")
    gpus = parse_gpus(out, 0)
    assert [(g.index, g.compute_cap, g.memory_mib, g.minor, g.device, g.short_bus_id) for g in gpus] == [
        (0, "8.9", 24564, 1, "/dev/nvidia1", "01:00.0"),
        (1, "12.0", 97887, 0, "/dev/nvidia0", "41:00.0")]


def test_gpus_old_driver_without_compute_cap_uses_name_table() -> None:
    out = "#nocc\n0, Tesla P40, 24451, 00000000:03:00.0\n1, NVIDIA GeForce RTX 3090, 24576, 00000000:04:00.0\n"
    assert [(g.name, g.compute_cap, g.minor) for g in parse_gpus(out, 0)] == [
        ("Tesla P40", "6.1", None), ("NVIDIA GeForce RTX 3090", "8.6", None)]


def test_gpus_no_nvidia_smi() -> None:
    assert parse_gpus("", 127) == []


def test_cc_from_name_generation_before_series() -> None:
    assert cc_from_name("NVIDIA RTX 2000 Ada Generation Laptop GPU") == "8.9"
    assert cc_from_name("NVIDIA L40S") == "8.9"
    assert cc_from_name("NVIDIA A100-SXM4-80GB") == "8.0"
    assert cc_from_name("NVIDIA GeForce RTX 5090") == "12.0"
    assert cc_from_name("Mystery Card") is None


def test_device_nodes_and_majors() -> None:
    out = ("node /dev/nvidia0 c3 0\nnode /dev/nvidiactl c3 ff\nnode /dev/nvidia-uvm 1fe 0\n"
           "node /dev/nvidia-uvm-tools 1fe 1\nnode /dev/nvidia-caps/nvidia-cap1 eb 1\n"
           "major 195 nvidia-frontend\nmajor 510 nvidia-uvm\nmajor 235 nvidia-caps\n")
    d = parse_devices(out, 0)
    assert d.nodes["/dev/nvidiactl"] == (195, 255)
    assert d.nodes["/dev/nvidia-uvm-tools"] == (510, 1)
    assert d.majors == {"nvidia-frontend": 195, "nvidia-uvm": 510, "nvidia-caps": 235}
    assert d.caps == ["/dev/nvidia-caps/nvidia-cap1"]


def test_boot_setup() -> None:
    b = parse_boot("uvm_loaded=0\nuvm_at_boot=1\nsystemd=0\nunit=\nmodules_conf=abc\nenabled=0\n"
                   "nvidia_modprobe=/usr/bin/nvidia-modprobe\n", 0)
    assert (b.uvm_loaded, b.uvm_at_boot, b.systemd, b.unit_sha256, b.modules_conf_sha256, b.unit_enabled,
            b.nvidia_modprobe) == (False, True, False, None, "abc", False, "/usr/bin/nvidia-modprobe")


def test_kernel_upgrade_trap_is_reported() -> None:
    k = parse_kernel("running 6.8.12-4-pve\nkernel 6.8.12-4-pve yes\nkernel 6.14.8-2-pve \nkernel 6.5.13-1-pve \n"
                     "dkms nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed\n", 0)
    assert k == KernelModules("6.8.12-4-pve", {"6.8.12-4-pve": True, "6.14.8-2-pve": False,
                                               "6.5.13-1-pve": False},
                              ["nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed"])
    assert k.newer_without_module() == ["6.14.8-2-pve"]
    notes = warnings(k)
    assert len(notes) == 1 and "kernel 6.14.8-2-pve is installed but has no NVIDIA module" in notes[0]


def test_kernel_all_good() -> None:
    assert warnings(parse_kernel("running 6.8.12-4-pve\nkernel 6.8.12-4-pve yes\n", 0)) == []


def test_container_driver_userspace() -> None:
    out = ("os_id=debian\nos_version=12\n"
           "pkg libcuda1 580.95.05-1 hi \npkg libnvidia-ml1 580.95.05-1 ii \n"
           "pkg nvidia-open 580.95.05-1 un \npkg nvidia-driver-pinning-580.95.05 1.0-1 ii \n"
           "pin=abc\nsource /etc/apt/sources.list.d/cuda-debian12-x86_64.list def\nkeyring=1\n"
           "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05\n/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n"
           "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05\navail nvidia-driver-pinning-580.95.05\n")
    d = parse_driver_userspace(out, 0)
    assert d.distro == "debian12"
    assert d.installed("libcuda1").held and not d.installed("libnvidia-ml1").held
    assert d.installed("nvidia-open") is None
    assert d.pinning_packages == ["nvidia-driver-pinning-580.95.05"]
    assert (d.pin_sha256, d.keyring, d.nvml_libs, d.cuda_libs) == ("abc", True, ["580.95.05"], ["580.95.05"])
    assert d.sources == {"/etc/apt/sources.list.d/cuda-debian12-x86_64.list": "def"}
    assert d.pinning_available == ["nvidia-driver-pinning-580.95.05"]


def test_container_cuda_packages() -> None:
    c = parse_cuda("pkg cuda-nvcc-13-0 13.0.88-1 ii \npkg cuda-nvcc-12-8 12.8.93-1 un \n"
                   "avail cuda-nvcc-13-0\navail cuda-nvcc-12-8\navail cuda-nvcc-12-10\n", 0)
    assert c.installed == {"cuda-nvcc-13-0": "13.0.88-1"}
    assert c.available == ["12.8", "12.10", "13.0"]


def test_dkms_status_with_a_warning_after_installed_counts() -> None:
    """dkms 3.0.10 appends module_status_built_extra's warnings after the state (dkms.in:1774-1788)."""
    from provisioner.facts.kernel import dkms_installed
    status = ("nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed (WARNING! Diff between built and installed module!)\n"
              "nvidia/580.95.05, 6.14.8-2-pve, x86_64: built\nnvidia/595.71.05: added\n")
    assert dkms_installed(status, "580.95.05", "6.8.12-4-pve")
    assert not dkms_installed(status, "580.95.05", "6.14.8-2-pve")  # built, not installed
    assert not dkms_installed(status, "595.71.05", "6.8.12-4-pve")


def test_installed_kernels_come_from_packages() -> None:
    k = parse_kernel("running 6.8.12-4-pve\nkernel 6.8.12-4-pve yes\nkernel 6.99.0-1-pve yes\nkernel 6.5.13-1-pve \n"
                     "kpkg\nkpkg proxmox-kernel-6.8.12-4-pve-signed ii \nkpkg proxmox-kernel-6.8 ii \n"
                     "kpkg proxmox-kernel-6.14.8-2-pve-signed ii \nkpkg pve-kernel-6.2.16-3-pve rc \n", 0)
    assert k.installed == ["6.8.12-4-pve", "6.14.8-2-pve"]
    assert k.leftovers == ["6.5.13-1-pve", "6.99.0-1-pve"] and k.newer() == ["6.14.8-2-pve"]
    assert k.newer_without_module() == ["6.14.8-2-pve"]
