"""GPU passthrough: which GPUs, the ``devN`` entries for them, and the host boot fix.

``devN`` entries are contributed to the container step (``container.CONTRIBUTORS``)
so they converge in the same config update as everything else. We own every
``devN`` whose path is under ``/dev/nvidia``: missing ones are added, stale ones
removed, and an entry keeps its index from run to run (a no-op run diffs clean).

Options: ``uid=0,gid=<GPU_GID>,mode=0660`` (``provisioner/gpu_access.py``). PVE does not
copy the host node's mode: without ``mode=`` the node in the CT is 0660 root:root
(pve-container src/PVE/LXC.pm:1897-1921@94f5585), which llama-server, running as ``llama``,
cannot open. The ids are container-side (mapped through the idmap of an unprivileged CT);
``llama`` is in the group with that gid (the services step creates it).

The host step (``gpu.host``) runs *before* the container step: PVE refuses a ``devN``
whose host node does not exist (``Device /dev/nvidia-uvm does not exist``), and
``/dev/nvidia-uvm`` is usually missing after a host boot until something loads
``nvidia_uvm``. It creates the nodes now and installs a oneshot unit that does it at
every boot, before ``pve-guests.service``.
"""

from __future__ import annotations

import hashlib
import re
import shlex

from ..config.schema import PCI_RE
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError, RemoteError
from ..facts import kernel as kernel_facts
from ..facts.nvidia import (BOOT, BOOT_UNIT, BOOT_UNIT_PATH, BOOT_WANTS_LINK, DEVICES, DRIVER, GPUS,
                            MODULES_CONF_PATH, BootSetup, DeviceNodes, DriverVersion, GpuInfo)
from ..gpu_access import dev_options
from ..templating import render
from .container import CONTRIBUTORS, OwnedKeys
from .gpu_exclusive import exclusive
from ..facts.gpu_claims import CLAIMS
from ..facts.guard import GUARD

STEP = "gpu.host"
DEV_OPTIONS = dev_options()
UVM_NODES = ("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
_DEV_KEY = re.compile(r"^dev(\d+)$")


# -- selection ------------------------------------------------------------------------------------

def _norm_bus(bus: str) -> str:
    return ":".join(bus.lower().split(":")[-2:])


def select_gpus(gpus: list[GpuInfo], select: str | list[int | str]) -> list[GpuInfo]:
    """The GPUs ``gpu.select`` names: ``all``, or indexes, PCI bus ids, model substrings."""
    if select == "all":
        return list(gpus)
    chosen: dict[int, GpuInfo] = {}
    for sel in select:
        if isinstance(sel, int):  # a YAML number is an index; a string never is ("5090" is a model)
            hits = [g for g in gpus if g.index == sel]
        elif PCI_RE.match(sel):
            hits = [g for g in gpus if _norm_bus(g.bus_id) == _norm_bus(sel)]
        else:
            hits = [g for g in gpus if sel.lower() in g.name.lower()]
        if not hits:
            have = "; ".join(f"{g.index}: {g.name} ({g.short_bus_id})" for g in gpus) or "none"
            raise ConfigError(f"no GPU matches {sel!r} (GPUs on the host: {have})", key="gpu.select",
                              fix="use an index, a PCI bus id like 01:00.0, a part of the model name, or 'all'")
        for g in hits:
            chosen[g.index] = g
    return [chosen[i] for i in sorted(chosen)]


def selected_gpus(ctx: PlanContext) -> list[GpuInfo]:
    """Selected GPUs, or [] when GPUs are off, the driver is not loaded or facts are missing."""
    driver: DriverVersion | None = ctx.fact(DRIVER.name)
    gpus: list[GpuInfo] = ctx.fact(GPUS.name) or []
    if not ctx.cfg.gpu.enabled or driver is None or not driver.loaded:
        return []
    return exclusive(ctx, select_gpus(gpus, ctx.cfg.gpu.select))


# -- devN -----------------------------------------------------------------------------------------

def desired_device_paths(ctx: PlanContext) -> list[str]:
    gpus = selected_gpus(ctx)
    if not gpus:
        return []
    paths = [g.device for g in gpus] + ["/dev/nvidiactl", *UVM_NODES]
    if ctx.cfg.gpu.modeset:
        paths.append("/dev/nvidia-modeset")
    if ctx.cfg.gpu.caps:
        devices: DeviceNodes = ctx.fact(DEVICES.name) or DeviceNodes()
        paths += devices.caps
    return paths


def owns_dev(key: str, value: str) -> bool:
    """devN entries under /dev/nvidia are ours (added and removed by this step)."""
    return bool(_DEV_KEY.match(key)) and _dev_path(value).startswith("/dev/nvidia")


def _dev_path(value: str) -> str:
    first = value.split(",", 1)[0]
    return first[5:] if first.startswith("path=") else first


def number_devices(paths: list[str], current: dict[str, str]) -> dict[str, str]:
    """``devN`` keys for ``paths``: existing entries keep their index, new ones take the lowest free."""
    ours = {_dev_path(v): k for k, v in current.items() if owns_dev(k, v)}
    taken = {int(_DEV_KEY.match(k).group(1)) for k in current if _DEV_KEY.match(k) and k not in ours.values()}
    out: dict[str, str] = {}
    for path in paths:
        key = ours.get(path)
        if key is not None:
            out[key] = f"{path},{DEV_OPTIONS}"
            taken.add(int(key[3:]))
    free = (i for i in range(0, 256) if i not in taken)
    for path in paths:
        if path not in ours:
            out[f"dev{next(free)}"] = f"{path},{DEV_OPTIONS}"
    return out


def device_keys(ctx: PlanContext) -> OwnedKeys:
    """The container step's contributor: our devN entries and what we own."""
    current: dict[str, str] = {}
    if ctx.pve.ct is not None:
        current = dict(ctx.pve.ct.config)
        current.update(ctx.pve.ct.pending)
        for k in ctx.pve.ct.pending_delete:
            current.pop(k, None)
    if DRIVER.name not in ctx.facts:
        # GPU facts were not gathered (e.g. `up --only container`): keep what is there
        return OwnedKeys(desired={k: v for k, v in current.items() if owns_dev(k, v)}, owns=owns_dev)
    return OwnedKeys(desired=number_devices(desired_device_paths(ctx), current), owns=owns_dev)


if device_keys not in CONTRIBUTORS:
    CONTRIBUTORS.append(device_keys)


# -- host boot fix --------------------------------------------------------------------------------

def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def boot_files(nvidia_modprobe: str) -> dict[str, str]:
    """Our unit and modules-load file, rendered from templates/host/."""
    return {BOOT_UNIT_PATH: render("host/provision-nvidia-uvm.service.j2", nvidia_modprobe=nvidia_modprobe),
            MODULES_CONF_PATH: render("host/nvidia-uvm.conf.j2")}


def enable_script(systemd: bool) -> str:
    """Enable the unit: systemctl when systemd runs, else the WantedBy symlink by hand
    (what `systemctl enable` would create; systemd honours it at the next boot)."""
    unit = shlex.quote(BOOT_UNIT)
    if systemd:
        return f"systemctl daemon-reload && systemctl enable {unit}"
    link = shlex.quote(BOOT_WANTS_LINK)
    return f"mkdir -p \"$(dirname {link})\" && ln -sfn {shlex.quote(BOOT_UNIT_PATH)} {link}"


class GpuHostStep:
    """Host side of passthrough: uvm nodes now, and at every boot (``gpu.boot_fix``)."""

    name = STEP
    facts = [DRIVER, GPUS, DEVICES, BOOT, kernel_facts.KERNEL, CLAIMS, GUARD]

    def plan(self, ctx: PlanContext) -> list[Change]:
        if not ctx.cfg.gpu.enabled:
            ctx.notes.append("gpu.enabled is false: no GPU passthrough")
            return []
        driver: DriverVersion | None = ctx.fact(DRIVER.name)
        if driver is None or not driver.loaded:
            ctx.notes.append("no NVIDIA kernel module is loaded on the host (/sys/module/nvidia/version): "
                             "no GPU passthrough; llama.cpp builds for the CPU")
            return []
        kmods = ctx.fact(kernel_facts.KERNEL.name)
        if kmods is not None:
            ctx.notes += kernel_facts.warnings(kmods)
        if not selected_gpus(ctx):
            ctx.notes.append("nvidia-smi lists no GPU on the host: no GPU passthrough")
            return []
        boot: BootSetup | None = ctx.fact(BOOT.name)
        devices: DeviceNodes = ctx.fact(DEVICES.name) or DeviceNodes()
        modprobe = (boot.nvidia_modprobe if boot else None) or "/usr/bin/nvidia-modprobe"
        changes: list[Change] = []
        if ctx.cfg.gpu.boot_fix and boot is not None:
            files = boot_files(modprobe)
            stale = {p: t for p, t in files.items()
                     if _sha(t) != (boot.unit_sha256 if p == BOOT_UNIT_PATH else boot.modules_conf_sha256)}
            if stale or not boot.unit_enabled:
                changes.append(self._install_unit(files, stale, boot))
        elif not ctx.cfg.gpu.boot_fix and boot is not None and not boot.uvm_at_boot:
            ctx.notes.append("gpu.boot_fix is off and nothing loads nvidia_uvm at boot: after a host reboot "
                             "the container will not start until /dev/nvidia-uvm exists")
        missing = [p for p in UVM_NODES if not devices.has(p)]
        if missing:
            changes.append(self._make_nodes(missing, modprobe))
        from .guard import host_changes  # the host guard (driver.follow_host); imports the driver step
        return changes + host_changes(ctx)

    def _install_unit(self, files: dict[str, str], stale: dict[str, str], boot: BootSetup) -> Change:
        def apply(actx: ApplyContext) -> None:
            for path, text in files.items():
                actx.ssh.put(text.encode(), path, mode="0644")
            actx.ssh.run(enable_script(boot.systemd)).check(f"enabling {BOOT_UNIT}", step=STEP)

        before = {BOOT_UNIT_PATH: boot.unit_sha256, MODULES_CONF_PATH: boot.modules_conf_sha256}
        diff: dict[str, tuple[object, object]] = {
            p: ("differs" if before[p] else None, "written") for p in stale}
        diff[f"{BOOT_UNIT} enabled"] = (boot.unit_enabled, True)
        how = "systemctl enable" if boot.systemd else "WantedBy symlink (systemd is not PID 1 here)"
        return Change(STEP, "write", "host", f"boot unit {BOOT_UNIT} (loads nvidia_uvm before guests; {how})",
                      apply, diff=diff)

    def _make_nodes(self, missing: list[str], modprobe: str) -> Change:
        def apply(actx: ApplyContext) -> None:
            cmd = f"{shlex.quote(modprobe)} -u -c=0 && [ -c /dev/nvidia-uvm ] && [ -c /dev/nvidia-uvm-tools ]"
            result = actx.ssh.run(cmd)
            if not result.ok:
                raise RemoteError("could not load nvidia_uvm and create /dev/nvidia-uvm*", command=cmd,
                                  exit_code=result.exit_code, output=result.stderr or result.stdout, step=STEP,
                                  fix="run `nvidia-modprobe -u -c=0` on the host and check `dmesg`")

        return Change(STEP, "create", "host", f"load nvidia_uvm and create {', '.join(missing)}", apply,
                      diff={p: (None, "char device") for p in missing}, refresh=True)
