"""The simulated NVIDIA host: loaded driver, GPUs, device nodes, host tools.

Files (under ``SIM_ROOT/host``, shown at the real paths inside the sim host's
mount namespace, see ``provisioner.sim.host.namespace``):

- ``sys/module/nvidia/version``            bare version of the *loaded* module
- ``proc/driver/nvidia/version``           open-module NVRM banner
- ``proc/driver/nvidia/gpus/<bus>/information``  like the real driver's
- ``proc/driver/nvidia/sim-gpus``          sim extra: what nvidia-smi reports (index|name|cc|MiB|bus|used|uuid)
- ``proc/devices``                         the real list plus nvidia (195), nvidia-uvm, nvidia-caps
- ``lib/modules/<kver>/updates/dkms/nvidia.ko``  markers (version=, vermagic=) of the on-disk
  module for the running kernel (real ``uname -r``) and optionally a newer installed one
- ``bin/nvidia-smi``, ``bin/nvidia-modprobe``, ``bin/modinfo`` (answers for the nvidia modules only)
- ``nvidia.json``                          the simulator's state of all the above

Device nodes are real char nodes in ``SIM_ROOT/host/dev``, the node's own /dev
(the sim namespace shows it at /dev; see sim/host.py), so simulated nodes never
share them. ``nvidia-uvm`` takes a free dynamic major from 234..254 (highest
first, like the kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import stat
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

NVIDIA_MAJOR = 195
SMI_TEMPLATE = Path(__file__).with_name("nvidia_smi.sh")


@dataclass
class Gpu:
    name: str = "NVIDIA GeForce RTX 4090"
    compute_cap: str = "8.9"
    vram_mib: int = 24564
    bus_id: str = ""
    used_mib: int = 1


@dataclass
class NvidiaState:
    driver: str = "580.95.05"
    gpus: list[Gpu] = field(default_factory=lambda: [Gpu()])
    uvm_loaded: bool = True
    uvm_major: int = 0
    caps_major: int = 0
    running_kernel: str = field(default_factory=lambda: platform.release())
    #: a newer installed kernel (as after `apt upgrade` before a reboot); "" for none
    newer_kernel: str = ""
    newer_kernel_has_module: bool = True
    #: version of the installed (on-disk) module and host userspace; "" = same as ``driver``.
    #: Differs after a driver upgrade without reboot: modinfo and the host's nvidia-smi
    #: then show the new one while /sys/module/nvidia/version keeps the loaded one.
    #: "none": no module on disk (driver "" and ondisk "": a host without any NVIDIA driver)
    ondisk_driver: str = ""
    #: /lib/modules/<kver> directories of kernels whose package is gone, left behind with a DKMS-built
    #: module in updates/dkms (dpkg removes only the files it owns)
    leftover_kernels: list[str] = field(default_factory=list)

    @property
    def installed(self) -> str:
        """The on-disk module version ("" when none)."""
        v = self.ondisk_driver or self.driver
        return "" if v == "none" else v


def parse_gpu(spec: str) -> Gpu:
    """``"NAME,CC,VRAM_MIB[,BUS_ID]"`` → Gpu (the CLI's --gpu)."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) < 3:
        raise ValueError(f"--gpu {spec!r}: expected NAME,COMPUTE_CAP,VRAM_MIB[,PCI_BUS_ID]")
    return Gpu(parts[0], parts[1], int(parts[2]), parts[3] if len(parts) > 3 else "")


def smi_script(lib_version: str) -> str:
    """The fake nvidia-smi; ``lib_version="host"`` means 'matches the loaded driver'."""
    return SMI_TEMPLATE.read_text().replace("@LIB_VERSION@", lib_version)


class NvidiaHost:
    """Reads and writes the fake host view of one simulated node."""

    def __init__(self, sim_root: Path) -> None:
        self.host = Path(sim_root) / "host"
        self.dev = self.host / "dev"
        self.state_file = self.host / "nvidia.json"

    # -- state -------------------------------------------------------------
    def load(self) -> NvidiaState:
        raw = json.loads(self.state_file.read_text())
        raw["gpus"] = [Gpu(**g) for g in raw["gpus"]]
        return NvidiaState(**raw)

    def save(self, st: NvidiaState) -> None:
        self.host.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(st), indent=2))
        tmp.rename(self.state_file)

    def install(self, st: NvidiaState) -> NvidiaState:
        """Set up the whole view (files, tools, nodes) for ``st``."""
        for i, gpu in enumerate(st.gpus):
            gpu.bus_id = gpu.bus_id or f"00000000:{i + 1:02x}:00.0"
        taken = _real_majors()
        free = [m for m in range(254, 233, -1) if m not in taken]
        st.uvm_major = st.uvm_major or free[0]
        st.caps_major = st.caps_major or free[1]
        self.save(st)
        self.refresh(st)
        return st

    def refresh(self, st: NvidiaState | None = None) -> None:
        """Rewrite every file and node from the state (files in place: they are bind-mounted)."""
        st = st or self.load()
        self._write_files(st)
        self._write_tools(st)
        self.make_nodes(st)

    # -- files -------------------------------------------------------------
    def _write_files(self, st: NvidiaState) -> None:
        if not st.driver:  # no module loaded: no /sys/module/nvidia, no /proc/driver/nvidia
            for d in (self.host / "sys/module/nvidia", self.host / "proc/driver/nvidia"):
                if d.exists():
                    shutil.rmtree(d)
            (self.host / "proc/driver").mkdir(parents=True, exist_ok=True)
            st.uvm_loaded = False
            shutil.rmtree(self.host / "sys/module/nvidia_uvm", ignore_errors=True)
            src = self.host / "proc/devices"
            devices = Path("/proc/devices").read_text() if _outside_fake() or not src.exists() else src.read_text()
            _write_in_place(src, "".join(ln + "\n" for ln in devices.splitlines() if "nvidia" not in ln))
        else:
            self._write_loaded(st)
        self._write_modules(st)

    def _write_loaded(self, st: NvidiaState) -> None:
        _write_in_place(self.host / "sys/module/nvidia/version", st.driver + "\n")
        uvm = self.host / "sys/module/nvidia_uvm"
        if st.uvm_loaded:
            (uvm / "parameters").mkdir(parents=True, exist_ok=True)
        else:
            shutil.rmtree(uvm, ignore_errors=True)
        drv = self.host / "proc/driver/nvidia"
        _write_in_place(drv / "version",
                        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {st.driver}  "
                        "Release Build  (dvs-builder@U22-I3-AE18-23-3)  Wed Sep 24 23:30:47 UTC 2025\n"
                        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n")
        lines = []
        shutil.rmtree(drv / "gpus", ignore_errors=True)
        for i, g in enumerate(st.gpus):
            gid = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_OID, f"{g.bus_id}{g.name}"))
            lines.append(f"{i}|{g.name}|{g.compute_cap}|{g.vram_mib}|{g.bus_id}|{g.used_mib}|{gid}")
            info = drv / "gpus" / g.bus_id[4:] / "information"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(f"Model: \t\t {g.name}\nIRQ:   \t\t 160\nGPU UUID: \t {gid}\n"
                            f"Video BIOS: \t 95.02.18.80.5f\nBus Type: \t PCIe\nDMA Size: \t 47 bits\n"
                            f"DMA Mask: \t 0x7fffffffffff\nBus Location: \t {g.bus_id[4:]}\n"
                            f"Device Minor: \t {i}\nGPU Excluded:\t No\n")
        _write_in_place(drv / "sim-gpus", "\n".join(lines) + "\n")
        devices = Path("/proc/devices").read_text() if _outside_fake() else self._real_devices()
        chars, _, blocks = devices.partition("\nBlock devices:")
        extra = [f"{NVIDIA_MAJOR:3d} nvidia-frontend", f"{st.caps_major:3d} nvidia-caps"]
        if st.uvm_loaded:
            extra.append(f"{st.uvm_major:3d} nvidia-uvm")
        rows = [r for r in chars.splitlines() if "nvidia" not in r] + extra
        head, body = rows[0], sorted(rows[1:], key=lambda r: int(r.split()[0]))
        _write_in_place(self.host / "proc/devices",
                        head + "\n" + "\n".join(body) + "\n\nBlock devices:" + blocks)

    def _write_modules(self, st: NvidiaState) -> None:
        mods = self.host / "lib/modules"
        mods.mkdir(parents=True, exist_ok=True)
        for old in mods.iterdir():  # not the dir itself: it is bind-mounted on /lib/modules
            shutil.rmtree(old)
        kernels = [st.running_kernel] + ([st.newer_kernel] if st.newer_kernel else [])
        for kver in kernels:
            dkms = mods / kver / "updates" / "dkms"
            dkms.mkdir(parents=True, exist_ok=True)
            if st.installed and (kver == st.running_kernel or st.newer_kernel_has_module):
                for mod in ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm"):
                    (dkms / f"{mod}.ko").write_text(
                        f"version={st.installed}\nvermagic={kver} SMP mod_unload\n")
        for kver in st.leftover_kernels:
            left = mods / kver / "updates" / "dkms"
            left.mkdir(parents=True, exist_ok=True)
            (left / "nvidia.ko").write_text(f"version=leftover\nvermagic={kver} SMP mod_unload\n")

    def _real_devices(self) -> str:
        # Inside the sim namespace /proc/devices is our own file: keep its real rows.
        return (self.host / "proc/devices").read_text()

    def _write_tools(self, st: NvidiaState) -> None:
        bindir = self.host / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        if st.installed:
            _write_exec(bindir / "nvidia-smi", smi_script(st.installed))
        else:
            (bindir / "nvidia-smi").unlink(missing_ok=True)
        _write_exec(bindir / "modinfo", MODINFO)
        _write_exec(bindir / "nvidia-modprobe",
                    _python_tool("provisioner.sim.host.nvidia", "modprobe", self.host.parent))

    # -- device nodes ------------------------------------------------------
    def node_specs(self, st: NvidiaState) -> dict[Path, tuple[int, int]]:
        specs = {self.dev / f"nvidia{i}": (NVIDIA_MAJOR, i) for i in range(len(st.gpus))}
        specs[self.dev / "nvidiactl"] = (NVIDIA_MAJOR, 255)
        specs[self.dev / "nvidia-modeset"] = (NVIDIA_MAJOR, 254)
        specs[self.dev / "nvidia-caps/nvidia-cap1"] = (st.caps_major, 1)
        specs[self.dev / "nvidia-caps/nvidia-cap2"] = (st.caps_major, 2)
        if st.uvm_loaded:
            specs[self.dev / "nvidia-uvm"] = (st.uvm_major, 0)
            specs[self.dev / "nvidia-uvm-tools"] = (st.uvm_major, 1)
        return specs

    def make_nodes(self, st: NvidiaState) -> None:
        if not st.driver:
            return
        for path, (major, minor) in self.node_specs(st).items():
            _mknod(path, major, minor, 0o400 if "caps" in str(path) else 0o666)

    def remove_nodes(self) -> None:
        for name in ("nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools"):
            (self.dev / name).unlink(missing_ok=True)
        for node in self.dev.glob("nvidia[0-9]*"):
            node.unlink()
        shutil.rmtree(self.dev / "nvidia-caps", ignore_errors=True)

    # -- changes (faults and tools) ----------------------------------------
    def set_driver(self, version: str, *, loaded: bool = True) -> None:
        """Install driver ``version``; ``loaded=False``: not rebooted yet (old module still loaded)."""
        st = self.load()
        st.ondisk_driver = version
        if loaded:
            st.driver, st.ondisk_driver = version, ""
        self.save(st)
        self.refresh(st)

    def drop_uvm(self) -> None:
        """As after a host reboot: nvidia_uvm not loaded, no /dev/nvidia-uvm*."""
        st = self.load()
        st.uvm_loaded = False
        self.save(st)
        (self.dev / "nvidia-uvm").unlink(missing_ok=True)
        (self.dev / "nvidia-uvm-tools").unlink(missing_ok=True)
        self.refresh(st)

    def load_uvm(self) -> None:
        st = self.load()
        st.uvm_loaded = True
        self.save(st)
        self.refresh(st)


MODINFO = r"""#!/bin/sh
# provision-sim: modinfo for the simulated NVIDIA modules (reads the on-disk module markers)
kver=$(uname -r); field=""; mod=""
while [ $# -gt 0 ]; do
    case "$1" in
        -k) kver=$2; shift ;;
        -F) field=$2; shift ;;
        --field=*) field=${1#--field=} ;;
        -*) ;;
        *) mod=$1 ;;
    esac
    shift
done
file=/lib/modules/$kver/updates/dkms/$(echo "$mod" | tr _ -).ko
if [ -z "$mod" ] || [ ! -f "$file" ]; then
    echo "modinfo: ERROR: Module $mod not found." >&2
    exit 1
fi
version=$(sed -n 's/^version=//p' "$file")
vermagic=$(sed -n 's/^vermagic=//p' "$file")
case "$field" in
    "") printf 'filename:       %s
version:        %s
license:        Dual MIT/GPL
vermagic:       %s
'             "$file" "$version" "$vermagic" ;;
    filename) echo "$file" ;;
    version) echo "$version" ;;
    vermagic) echo "$vermagic" ;;
    license) echo "Dual MIT/GPL" ;;
esac
"""


def _outside_fake() -> bool:
    return "nvidia" not in Path("/proc/devices").read_text()


def _real_majors() -> set[int]:
    text = Path("/proc/devices").read_text().split("Block devices:")[0]
    return {int(r.split()[0]) for r in text.splitlines()[1:] if r.strip()}


def _mknod(path: Path, major: int, minor: int, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(major, minor):
            return
        path.unlink()
    except FileNotFoundError:
        pass
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)


def _write_in_place(path: Path, text: str) -> None:
    """Truncate-and-write, never rename: the file may be bind-mounted somewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def _write_exec(path: Path, text: str) -> None:
    _write_in_place(path, text)
    path.chmod(0o755)


def _python_tool(module: str, sub: str, sim_root: Path) -> str:
    """A host tool script that runs ``python -m module sub --root SIM_ROOT args``."""
    repo = Path(__file__).resolve().parents[3]
    sub = f"{sub} " if sub else ""
    return (f"#!/bin/sh\nPYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "
            f"-m {module} {sub}--root {sim_root} \"$@\"\n")


def main(argv: list[str] | None = None) -> int:
    """``nvidia-modprobe`` of the sim host: ``-u`` loads nvidia_uvm and makes its nodes."""
    ap = argparse.ArgumentParser(prog="nvidia-modprobe")
    ap.add_argument("sub", choices=["modprobe"])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("-u", "--unified-memory", action="store_true")
    ap.add_argument("-c", "--create-nvidia-device-file", action="append", default=[])
    ap.add_argument("-m", "--modeset", action="store_true")
    args = ap.parse_args(argv)
    host = NvidiaHost(args.root)
    if args.unified_memory:
        host.load_uvm()
    st = host.load()
    for minor in args.create_nvidia_device_file:
        if int(minor.lstrip("=")) >= len(st.gpus):
            return 1
    host.make_nodes(st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
