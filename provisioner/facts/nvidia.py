"""NVIDIA facts on the Proxmox host: loaded driver, GPUs, device nodes, boot setup.

Stable names (other steps and doctor read them from ``PlanContext.facts``):

| fact name        | value                         |
| ---              | ---                           |
| ``nvidia.driver``  | :class:`DriverVersion`        |
| ``nvidia.gpus``    | ``list[GpuInfo]`` (``[]``: no nvidia-smi or no GPU) |
| ``nvidia.devices`` | :class:`DeviceNodes`          |
| ``nvidia.boot``    | :class:`BootSetup`            |

The kernel/module view (the upgrade trap) is in ``facts.kernel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import Fact, kv

_VERSION_RE = re.compile(r"(?<![\d.])(\d+\.\d+(?:\.\d+)?)(?![\d.])")

# compute capability by model name, for drivers whose nvidia-smi has no compute_cap field
# (before ~510). Ordered: the first match wins, so the generation words ("Ada", "Blackwell")
# are tried before series numbers ("RTX 2000 Ada" is Ada, not Turing).
_NAME_CC: list[tuple[str, str]] = [
    (r"\bADA\b", "8.9"), (r"BLACKWELL|RTX PRO", "12.0"), (r"\bGB10\b", "12.1"), (r"\bB200\b", "10.0"),
    (r"\bGH?[12]00\b|\bH[12]00\b", "9.0"), (r"\bL4\b|\bL40S?\b|RTX 40\d0", "8.9"),
    (r"RTX 50\d0", "12.0"), (r"RTX 30\d0|\bA(10|40|2|16)\b|RTX A\d{4}", "8.6"), (r"\bA(100|30)\b", "8.0"),
    (r"\bT4\b|RTX 20\d0|GTX 16\d0|TITAN RTX|QUADRO RTX", "7.5"), (r"V100|TITAN V\b", "7.0"),
    (r"\bP100\b", "6.0"), (r"GTX 10\d0|\bP40\b|\bP4\b|TITAN XP?\b", "6.1"),
]


@dataclass(frozen=True)
class DriverVersion:
    """The version of the *loaded* kernel module (what the container must match)."""

    version: str | None
    #: "sys" (/sys/module/nvidia/version) or "proc" (/proc/driver/nvidia/version)
    source: str | None = None
    #: "open" or "proprietary" (from the /proc banner), None when unknown
    flavour: str | None = None

    @property
    def loaded(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    #: "8.9"; None when neither nvidia-smi nor the name table knows it
    compute_cap: str | None
    memory_mib: int | None
    #: "00000000:01:00.0" as nvidia-smi prints it
    bus_id: str
    #: the /dev/nvidiaN minor ("Device Minor" in /proc/driver/nvidia/gpus/*/information);
    #: it usually equals the index but is not guaranteed to
    minor: int | None = None

    @property
    def device(self) -> str:
        return f"/dev/nvidia{self.minor if self.minor is not None else self.index}"

    @property
    def short_bus_id(self) -> str:
        """``01:00.0`` (lspci style), the form users write."""
        return self.bus_id.lower().split(":", 1)[1] if self.bus_id.count(":") == 2 else self.bus_id.lower()


@dataclass(frozen=True)
class DeviceNodes:
    """Character nodes under /dev/nvidia* and the majors from /proc/devices."""

    #: path -> (major, minor)
    nodes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: /proc/devices name -> major ("nvidia-uvm": 510, "nvidia-caps": 235, "nvidia-frontend": 195)
    majors: dict[str, int] = field(default_factory=dict)

    def has(self, path: str) -> bool:
        return path in self.nodes

    @property
    def caps(self) -> list[str]:
        return sorted(p for p in self.nodes if p.startswith("/dev/nvidia-caps/"))


@dataclass(frozen=True)
class BootSetup:
    """Whether nvidia_uvm comes back after a reboot, and the state of our boot unit."""

    uvm_loaded: bool
    #: some /etc/modules or /etc/modules-load.d/*.conf line loads nvidia_uvm / nvidia-uvm
    uvm_at_boot: bool
    #: systemd is PID 1 (/run/systemd/system exists); otherwise we enable units by symlink
    systemd: bool
    #: sha256 of our unit / modules-load file, None when absent
    unit_sha256: str | None
    modules_conf_sha256: str | None
    unit_enabled: bool
    #: where nvidia-modprobe lives on this host, None when missing
    nvidia_modprobe: str | None


# -- parsing --------------------------------------------------------------------------------------

def parse_proc_version(text: str) -> tuple[str | None, str | None]:
    """``(version, flavour)`` from the first line of /proc/driver/nvidia/version (either format)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if not line.startswith("NVRM version:"):
        return None, None
    flavour = "open" if "Open Kernel Module" in line else "proprietary"
    # the banner carries the version after "x86_64" / "aarch64"; the first N.N[.N] token is it
    m = _VERSION_RE.search(line.split(":", 1)[1].replace("x86_64", "").replace("aarch64", ""))
    return (m.group(1) if m else None), flavour


def parse_driver(output: str, code: int) -> DriverVersion:
    values = kv(output)
    sys_version = values.get("sys", "").strip()
    proc_version, flavour = parse_proc_version(values.get("proc", "").replace("\\n", "\n"))
    if sys_version and _VERSION_RE.fullmatch(sys_version):
        return DriverVersion(sys_version, "sys", flavour)
    if proc_version:
        return DriverVersion(proc_version, "proc", flavour)
    return DriverVersion(None)


def cc_from_name(name: str) -> str | None:
    """Compute capability from a model name (fallback for old nvidia-smi)."""
    upper = name.upper()
    for pattern, cc in _NAME_CC:
        if re.search(pattern, upper):
            return cc
    return None


def parse_gpus(output: str, code: int) -> list[GpuInfo]:
    """nvidia-smi CSV (index,name[,compute_cap],memory.total,pci.bus_id); ``#nocc`` marks the old form."""
    if code != 0:
        return []
    gpus: list[GpuInfo] = []
    minors: dict[str, int] = {}
    lines = []
    for ln in output.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "#minor" and parts[2].isdigit():
            minors[_bus_key(parts[1])] = int(parts[2])
        elif ln.strip():
            lines.append(ln)
    no_cc = bool(lines) and lines[0].strip() == "#nocc"
    for line in lines[1:] if no_cc else lines:
        cols = [c.strip() for c in line.split(",")]
        if no_cc and len(cols) == 4:
            idx, name, mem, bus = cols
            cc: str | None = None
        elif len(cols) == 5:
            idx, name, cc, mem, bus = cols
        else:
            continue
        if not idx.isdigit():
            continue
        if cc in (None, "", "[N/A]", "N/A") or not re.fullmatch(r"\d+\.\d+", cc or ""):
            cc = cc_from_name(name)
        gpus.append(GpuInfo(int(idx), name, cc, int(mem) if mem.isdigit() else None, bus,
                            minors.get(_bus_key(bus))))
    return gpus


def _bus_key(bus: str) -> str:
    """``00000000:01:00.0`` and ``0000:01:00.0`` → ``01:00.0``."""
    return ":".join(bus.lower().split(":")[-2:])


def parse_devices(output: str, code: int) -> DeviceNodes:
    """``node PATH MAJOR_HEX MINOR_HEX`` and ``major N NAME`` lines."""
    nodes: dict[str, tuple[int, int]] = {}
    majors: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "node":
            try:
                nodes[parts[1]] = (int(parts[2], 16), int(parts[3], 16))
            except ValueError:
                continue
        elif len(parts) == 3 and parts[0] == "major" and parts[1].isdigit():
            majors[parts[2]] = int(parts[1])
    return DeviceNodes(nodes, majors)


def parse_boot(output: str, code: int) -> BootSetup:
    v = kv(output)
    return BootSetup(uvm_loaded=v.get("uvm_loaded") == "1", uvm_at_boot=v.get("uvm_at_boot") == "1",
                     systemd=v.get("systemd") == "1", unit_sha256=v.get("unit") or None,
                     modules_conf_sha256=v.get("modules_conf") or None, unit_enabled=v.get("enabled") == "1",
                     nvidia_modprobe=v.get("nvidia_modprobe") or None)


# -- the facts ------------------------------------------------------------------------------------

#: our host boot unit and modules-load file (also read by operations.passthrough)
BOOT_UNIT = "provision-nvidia-uvm.service"
BOOT_UNIT_PATH = f"/etc/systemd/system/{BOOT_UNIT}"
BOOT_WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{BOOT_UNIT}"
MODULES_CONF_PATH = "/etc/modules-load.d/nvidia-uvm.conf"

DRIVER = Fact("nvidia.driver",
              "echo \"sys=$(cat /sys/module/nvidia/version 2>/dev/null)\"; "
              "echo \"proc=$(head -n1 /proc/driver/nvidia/version 2>/dev/null)\"",
              parse_driver)

GPUS = Fact("nvidia.gpus",
            "command -v nvidia-smi >/dev/null 2>&1 || exit 127\n"
            "q=index,name,compute_cap,memory.total,pci.bus_id\n"
            "if ! out=$(nvidia-smi --query-gpu=$q --format=csv,noheader,nounits 2>&1); then\n"
            "  echo '#nocc'; nvidia-smi --query-gpu=index,name,memory.total,pci.bus_id "
            "--format=csv,noheader,nounits || exit $?\n"
            "else printf '%s\\n' \"$out\"; fi\n"
            "for f in /proc/driver/nvidia/gpus/*/information; do [ -e \"$f\" ] || continue\n"
            "  b=${f%/information}; echo \"#minor ${b##*/} $(awk -F: '/Device Minor/ {gsub(/[ \\t]/, \"\", $2); "
            "print $2}' \"$f\")\"\n"
            "done",
            parse_gpus)

DEVICES = Fact("nvidia.devices",
               "for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c \"$n\" ] && stat -c 'node %n %t %T' \"$n\"; done\n"
               "sed -n '/^Character/,/^$/p' /proc/devices | awk '/nvidia/ {print \"major\", $1, $2}'\n"
               "true",
               parse_devices)

BOOT = Fact("nvidia.boot",
            "sha() { [ -e \"$1\" ] && sha256sum \"$1\" | cut -d' ' -f1; }\n"
            "echo \"uvm_loaded=$([ -d /sys/module/nvidia_uvm ] && echo 1 || echo 0)\"\n"
            "echo \"uvm_at_boot=$(grep -qsE '^[[:space:]]*nvidia[-_]uvm([[:space:]]|$)' /etc/modules "
            "/etc/modules-load.d/*.conf && echo 1 || echo 0)\"\n"
            "echo \"systemd=$([ -d /run/systemd/system ] && echo 1 || echo 0)\"\n"
            f"echo \"unit=$(sha {BOOT_UNIT_PATH})\"\n"
            f"echo \"modules_conf=$(sha {MODULES_CONF_PATH})\"\n"
            f"echo \"enabled=$([ -L {BOOT_WANTS_LINK} ] && echo 1 || echo 0)\"\n"
            "echo \"nvidia_modprobe=$(command -v nvidia-modprobe)\"",
            parse_boot)

HOST_FACTS: list[Fact] = [DRIVER, GPUS, DEVICES, BOOT]
