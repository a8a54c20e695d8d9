"""The host kernel and whether the NVIDIA module is built for it (the upgrade trap).

Fact ``kernel.modules`` → :class:`KernelModules`. A newer installed kernel without
an ``nvidia.ko*`` means the next reboot comes up without the GPU (DKMS did not
build for it, often for want of headers); we warn before that happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Fact

#: where distributions and DKMS put the module, relative to /lib/modules/<kver>/
MODULE_DIRS = ("updates/dkms", "kernel/drivers/video", "extra", "updates")


@dataclass(frozen=True)
class KernelModules:
    running: str
    #: installed kernel version -> an nvidia.ko* exists for it
    kernels: dict[str, bool] = field(default_factory=dict)
    #: `dkms status` lines ("nvidia/580.95.05, 6.8.12-4-pve, x86_64: installed")
    dkms: list[str] = field(default_factory=list)

    @property
    def running_has_module(self) -> bool:
        return self.kernels.get(self.running, False)

    def newer_without_module(self) -> list[str]:
        """Installed kernels sorting after the running one that have no nvidia module."""
        return [k for k in sorted(self.kernels, key=_kver_key)
                if _kver_key(k) > _kver_key(self.running) and not self.kernels[k]]


def _kver_key(kver: str) -> tuple:
    out: list[tuple[int, object]] = []
    for part in kver.replace("-", ".").split("."):
        out.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(out)


def parse_kernel(output: str, code: int) -> KernelModules:
    running = ""
    kernels: dict[str, bool] = {}
    dkms: list[str] = []
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "running":
            running = rest.strip()
        elif word == "kernel" and rest.strip():
            kver, _, has = rest.strip().partition(" ")
            kernels[kver] = has.strip() == "yes"
        elif word == "dkms" and rest.strip():
            dkms.append(rest.strip())
    return KernelModules(running, kernels, dkms)


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
              "command -v dkms >/dev/null 2>&1 && dkms status 2>/dev/null | sed 's/^/dkms /'\n"
              "true",
              parse_kernel)
