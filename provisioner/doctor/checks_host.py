"""Host checks: the NVIDIA module, the kernels it is built for, device nodes, the boot unit."""

from __future__ import annotations

from ..errors import ProvisionError
from ..facts import kernel as kernel_facts
from ..facts.nvidia import (
    BOOT,
    BOOT_UNIT,
    DEVICES,
    DRIVER,
    GPUS,
    MODULES_CONF_PATH,
    DeviceNodes,
)
from ..operations.passthrough import UVM_NODES, GpuHostStep, select_gpus
from .context import DoctorContext
from .findings import Evidence, Finding, fail, ok, warn


def _gpu_on(d: DoctorContext) -> bool:
    return d.cfg.gpu.enabled and d.access.ssh_ok and d.plan is not None


def check_driver_loaded(d: DoctorContext) -> list[Finding]:
    if not _gpu_on(d):
        return []
    drv = d.fact(DRIVER.name)
    ev = Evidence(d.on_host("cat /sys/module/nvidia/version /proc/driver/nvidia/version"),
                  d.raw_output(DRIVER.name))
    if drv is None or not drv.loaded:
        return [fail("host.driver_loaded", "no NVIDIA kernel module is loaded on the host", ev,
                     fix="install the NVIDIA driver on the Proxmox host (with its DKMS module for the running "
                         "kernel) and run `modprobe nvidia`, or set gpu.enabled: false for a CPU-only setup",
                     detail="without the host module the container cannot use the GPU")]
    gpus = d.fact(GPUS.name) or []
    names = ", ".join(f"{g.name} (cc {g.compute_cap or '?'})" for g in gpus) or "no GPU listed by nvidia-smi"
    return [ok("host.driver_loaded", f"NVIDIA module {drv.version} loaded ({drv.flavour or 'unknown flavour'}); "
               f"{names}", ev)]


def check_kernel_modules(d: DoctorContext) -> list[Finding]:
    if not _gpu_on(d):
        return []
    k = d.fact(kernel_facts.KERNEL.name)
    if k is None:
        return []
    ev = Evidence(d.on_host("'uname -r; ls /lib/modules/*/updates/dkms/nvidia.ko*; dkms status'"),
                  d.raw_output(kernel_facts.KERNEL.name))
    newer = k.newer_without_module()
    if newer:
        kver = newer[-1]
        return [warn("host.kernel_modules", f"kernel {', '.join(newer)} is installed but has no NVIDIA module", ev,
                     fix=f"on the host: apt install proxmox-headers-{kver} && dkms autoinstall -k {kver} "
                         f"(or keep booting {k.running}: proxmox-boot-tool kernel pin {k.running})",
                     detail="the upgrade trap: after the next reboot into that kernel the GPU is gone and the "
                            "container does not start")]
    if k.running and not k.running_has_module:
        return [warn("host.kernel_modules", f"no nvidia.ko* for the running kernel {k.running} under /lib/modules",
                     ev, fix=f"check `dkms status`; reinstall the driver's DKMS module for {k.running}",
                     detail="the loaded module came from somewhere else; a reboot may lose it")]
    return [ok("host.kernel_modules", f"NVIDIA module built for the running kernel {k.running}"
               + (f" and {len(k.kernels) - 1} other installed kernel(s)" if len(k.kernels) > 1 else ""), ev)]


def _host_plan(d: DoctorContext) -> list:
    """The gpu.host step's changes now: what `up` (and `doctor --fix`) would do on the host."""
    try:
        return GpuHostStep().plan(d.plan)  # type: ignore[arg-type]
    except ProvisionError:  # a config error (gpu.select) is reported by the container checks
        return []


def check_device_nodes(d: DoctorContext) -> list[Finding]:
    if not _gpu_on(d):
        return []
    drv = d.fact(DRIVER.name)
    if drv is None or not drv.loaded:
        return []
    devices: DeviceNodes = d.fact(DEVICES.name) or DeviceNodes()
    try:
        gpus = select_gpus(d.fact(GPUS.name) or [], d.cfg.gpu.select)
    except ProvisionError:
        gpus = d.fact(GPUS.name) or []
    want = [g.device for g in gpus] + ["/dev/nvidiactl", *UVM_NODES]
    missing = [p for p in want if not devices.has(p)]
    lines = [f"{p} {maj}:{mi}" for p, (maj, mi) in sorted(devices.nodes.items())]
    ev = Evidence(d.on_host("'ls -l /dev/nvidia*; grep nvidia /proc/devices'"),
                  "\n".join(lines + [f"major {v} {k}" for k, v in sorted(devices.majors.items())]))
    if not missing:
        return [ok("host.device_nodes", f"device nodes present: {', '.join(want)}", ev)]
    uvm_only = all(p in UVM_NODES for p in missing)
    if uvm_only:
        return [fail("host.device_nodes", f"missing on the host: {', '.join(missing)}", ev,
                     fix="on the host: nvidia-modprobe -u -c=0 (doctor --fix does it; the boot unit "
                         f"{BOOT_UNIT} makes it happen at every boot)", fixable=True,
                     detail="nvidia_uvm is not loaded (usual after a host boot): a container with a devN "
                            "for /dev/nvidia-uvm fails to start, and every config change fails, with "
                            "'Device /dev/nvidia-uvm does not exist' (PVE stats each devN first)")]
    return [fail("host.device_nodes", f"missing on the host: {', '.join(missing)}", ev,
                 fix="the NVIDIA driver is not fully up: check `dmesg | grep -i nvidia` and run "
                     "`nvidia-modprobe -c=0 -u` on the host",
                 detail="the GPU's own nodes come from the driver; without them there is nothing to pass through")]


def check_boot_unit(d: DoctorContext) -> list[Finding]:
    if not _gpu_on(d):
        return []
    boot = d.fact(BOOT.name)
    drv = d.fact(DRIVER.name)
    if boot is None or drv is None or not drv.loaded:
        return []
    ev = Evidence(d.on_host(f"'systemctl is-enabled {BOOT_UNIT}; cat {MODULES_CONF_PATH}'"),
                  d.raw_output(BOOT.name))
    if not d.cfg.gpu.boot_fix:
        if boot.uvm_at_boot:
            return [ok("host.boot_unit", "nvidia_uvm is loaded at boot (your own setup; gpu.boot_fix is off)", ev)]
        return [warn("host.boot_unit", "nothing loads nvidia_uvm at boot (gpu.boot_fix: false)", ev,
                     fix="set gpu.boot_fix: true and run `provision up`, or add nvidia-uvm to /etc/modules-load.d/",
                     detail="after a host reboot the container will not start until /dev/nvidia-uvm exists")]
    writes = [c for c in _host_plan(d) if c.action == "write"]
    if not writes:
        return [ok("host.boot_unit", f"boot unit {BOOT_UNIT} installed and enabled", ev)]
    return [warn("host.boot_unit", f"boot unit {BOOT_UNIT} missing, changed or not enabled", ev,
                 fix="doctor --fix (or `provision up`) writes and enables it", fixable=True,
                 detail="without it /dev/nvidia-uvm is missing after a host reboot and the container fails "
                        "to start")]


CHECKS = [check_driver_loaded, check_kernel_modules, check_device_nodes, check_boot_unit]
