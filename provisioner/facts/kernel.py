"""The host kernel and whether the NVIDIA module is built for it (the upgrade trap).

Fact ``kernel.modules`` → :class:`KernelModules`. A newer installed kernel without
an ``nvidia.ko*`` means the next reboot comes up without the GPU (DKMS did not
build for it, often for want of headers); we warn before that happens.

Which kernels are *installed* comes from the kernel packages dpkg knows
(``proxmox-kernel-<kver>[-signed]``, ``pve-kernel-<kver>``, ``linux-image-<kver>``), not from
the directories under /lib/modules: removing a kernel package leaves its directory behind when
DKMS-built modules (files dpkg does not own) are still in it, and such a leftover is no kernel
anyone can boot. The directories only tell whether a module exists for a kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import Fact

#: where distributions and DKMS put the module, relative to /lib/modules/<kver>/
MODULE_DIRS = ("updates/dkms", "kernel/drivers/video", "extra", "updates")
#: kernel image packages -> the kernel release they install (series metapackages such as
#: ``proxmox-kernel-6.8`` carry no release and are skipped)
KERNEL_PACKAGE = re.compile(r"^(?:proxmox-kernel|pve-kernel|linux-image)-(\d+\.\d+\.\d+[-.+][^ ]*?)(?:-signed)?$")
#: ``nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed`` plus whatever dkms appends after the state,
#: e.g. " (WARNING! Diff between built and installed module!)" (dkms 3.0.10 dkms.in:1774-1788, the
#: extras of module_status_built_extra at :1715-1731)
DKMS_LINE = re.compile(r"^(?P<module>[^/\s]+)/(?P<version>[^,\s]+), (?P<kernel>[^,\s]+), (?P<arch>[^:\s]+): "
                       r"(?P<state>added|built|installed)(?P<extra>.*)$")


@dataclass(frozen=True)
class KernelModules:
    running: str
    #: kernel directory under /lib/modules -> an nvidia.ko* exists for it
    kernels: dict[str, bool] = field(default_factory=dict)
    #: `dkms status` lines ("nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed")
    dkms: list[str] = field(default_factory=list)
    #: kernel releases of installed kernel packages; None when dpkg knows none (not a Debian host)
    packaged: tuple[str, ...] | None = None

    @property
    def running_has_module(self) -> bool:
        return self.kernels.get(self.running, False)

    @property
    def installed(self) -> list[str]:
        """Installed kernels: from the packages, the running one always (sorted)."""
        found = set(self.packaged) if self.packaged is not None else set(self.kernels)
        return sorted(found | ({self.running} if self.running else set()), key=_kver_key)

    @property
    def leftovers(self) -> list[str]:
        """/lib/modules directories of kernels no package installs any more."""
        if self.packaged is None:
            return []
        return sorted(k for k in self.kernels if k not in self.installed)

    def newer(self) -> list[str]:
        """Installed kernels sorting after the running one."""
        return [k for k in self.installed if _kver_key(k) > _kver_key(self.running)]

    def newer_without_module(self) -> list[str]:
        """Installed kernels sorting after the running one that have no nvidia module."""
        return [k for k in self.newer() if not self.kernels.get(k, False)]

    def dkms_installed(self, version: str, kernel: str, module: str = "nvidia") -> bool:
        """``dkms status`` says ``module/version`` is installed for ``kernel`` (warnings after the state allowed)."""
        for line in self.dkms:
            m = DKMS_LINE.match(line)
            if m and (m["module"], m["version"], m["kernel"], m["state"]) == (module, version, kernel, "installed"):
                return True
        return False


def dkms_installed(status: str, version: str, kernel: str, module: str = "nvidia") -> bool:
    """The same check on raw ``dkms status`` output."""
    return KernelModules("", dkms=status.splitlines()).dkms_installed(version, kernel, module)


def _kver_key(kver: str) -> tuple:
    out: list[tuple[int, object]] = []
    for part in kver.replace("-", ".").split("."):
        out.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(out)


def parse_kernel(output: str, code: int) -> KernelModules:
    running = ""
    kernels: dict[str, bool] = {}
    dkms: list[str] = []
    packaged: set[str] = set()
    saw_dpkg = False
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "running":
            running = rest.strip()
        elif word == "kernel" and rest.strip():
            kver, _, has = rest.strip().partition(" ")
            kernels[kver] = has.strip() == "yes"
        elif word == "dkms" and rest.strip():
            dkms.append(rest.strip())
        elif word == "kpkg":
            saw_dpkg = True
            name, _, state = rest.strip().partition(" ")
            m = KERNEL_PACKAGE.match(name)
            if m and state.strip()[1:2] == "i":
                packaged.add(m.group(1))
    return KernelModules(running, kernels, dkms, tuple(sorted(packaged, key=_kver_key)) if saw_dpkg else None)


def warnings(k: KernelModules) -> list[str]:
    """Human notes about the upgrade trap (empty when all is well)."""
    notes = []
    if k.running and not k.running_has_module:
        notes.append(f"no nvidia.ko* under /lib/modules/{k.running}/ for the running kernel; "
                     "the loaded module may have come from elsewhere — check `dkms status`")
    for kver in k.newer_without_module():
        notes.append(f"kernel {kver} is installed but has no NVIDIA module: after a reboot into it the GPU "
                     f"is gone. Install its headers (proxmox-headers-{kver} / linux-headers-{kver}) and run "
                     "`dkms autoinstall -k " + kver + "`, or pin the running kernel")
    return notes


_DIRS = " ".join(f"\"$d/{sub}\"" for sub in MODULE_DIRS)

KERNEL = Fact("kernel.modules",
              "echo \"running $(uname -r)\"\n"
              "for d in /lib/modules/*/; do d=${d%/}; [ -d \"$d\" ] || continue\n"
              f"  f=$(find {_DIRS} -maxdepth 3 -name 'nvidia.ko*' 2>/dev/null | head -n1)\n"
              "  echo \"kernel ${d##*/} ${f:+yes}\"\n"
              "done\n"
              "command -v dpkg-query >/dev/null 2>&1 && { echo kpkg; "
              "dpkg-query -W -f='kpkg ${Package} ${db:Status-Abbrev}\\n' 'proxmox-kernel-*' 'pve-kernel-*' "
              "'linux-image-*' 2>/dev/null; }\n"
              "command -v dkms >/dev/null 2>&1 && dkms status 2>/dev/null | sed 's/^/dkms /'\n"
              "true",
              parse_kernel)
