"""The package graph of the simulated NVIDIA CUDA repository (debian12/x86_64), as data.

``graph()`` returns every package the repository carries: name, version, source package,
relations and a *payload* (what files the .deb holds, by kind; ``nvidia.py`` turns payloads into
files, so a later change can give a kind real contents, e.g. toolkit packages from NVIDIA's PyPI
wheels, without touching the graph).

Sources, cited per fact (none of the stanzas below is copied; each field is written from these):

[L595] ``dpkg -l`` of a Debian host that installed the driver from NVIDIA's repository: driver
       595.58.03-1 with firmware-nvidia-gsp, libcuda1, libcudadebugger1, libnvidia-ml1,
       libnvidia-nvvm4, libnvidia-ptxjitcompiler1, nvidia-driver, nvidia-driver-cuda,
       nvidia-kernel-dkms, nvidia-kernel-support, nvidia-modprobe, nvidia-persistenced, cuda-drivers
       at the driver's version; nvidia-container-toolkit / -base, libnvidia-container-tools and
       libnvidia-container1 at 1.19.0-1, libnvidia-egl-gbm1 1.1.3-1, libnvidia-egl-wayland21
       1.0.1-1, libnvidia-egl-xcb1 and libnvidia-egl-xlib1 1:1.0.5-1; CUDA 13.2 as
       cuda-cccl-13-2 13.2.27-1, cuda-nvcc-13-2 / cuda-cudart-13-2 / cuda-cudart-dev-13-2 13.2.51-1;
       cuda-drivers' description "CUDA Driver meta-package, branch-specific". (A public
       write-up, stored in the search library as file id 59804962712.)
[D535] NVIDIA/debian-packaging-nvidia-driver, branch 535 (af70dd13), debian/control: libcuda1
       Depends on libnvidia-ptxjitcompiler1 and libnvidia-nvvm4 (= its version) and *Recommends*
       the kernel module (``${nvidia:kmod:binary}``, i.e. nvidia-kernel-dkms) and
       nvidia-persistenced; nvidia-smi Depends on libnvidia-ml1 (=); nvidia-kernel-dkms Depends
       on dkms and nvidia-kernel-support; nvidia-kernel-support Depends on nvidia-modprobe (>= 352).
[A550] apt's error for ``nvidia-driver=550.90.12-1`` from NVIDIA's debian12 repository while
       560.35.03-1 was the candidate: ``nvidia-driver : Depends: nvidia-driver-libs (= …),
       nvidia-driver-bin (= …), nvidia-alternative (= …), nvidia-kernel-dkms (= …) or
       nvidia-kernel-open-dkms (= …)`` (file id 49238425694): branches before 560 still carry
       Debian's nvidia-alternative; 595 [L595] has none.
[PIN] ``apt-cache search nvidia-driver-pinning`` on NVIDIA's repository: ``nvidia-driver-pinning-580
      - APT driver pinning file for driver branch 580`` at versions 580-1 and 580-5 (debian12
      index), and per-version ``nvidia-driver-pinning-580.105.08`` (also 580.126.09, 580.126.16,
      570.211.01) "APT driver pinning file for driver version …" (file id 54187524998); such a
      package ships /etc/apt/preferences.d/nvidia-driver-pin with stanzas like ``Package:
      cuda-drivers* src:nvidia-open:any`` / ``Pin: version 595.71.05-*`` / ``Pin-Priority: 1000``
      (a host with nvidia-driver-pinning-595.71.05, file id 63581721936); branch and version
      packages share that file, so they conflict (file id 56134255054). NVIDIA's install guide
      documents the branch form, ``apt install nvidia-driver-pinning-<branch>``.
[GSP]  a project that rebuilds nvidia-kernel-open-dkms checks that its Depends keep
       ``firmware-nvidia-gsp (= <version>)`` like the official package (file id 69004430364).
[CTK]  nvidia-container-toolkit's packaging: the toolkit Depends on -base and
       libnvidia-container-tools, the tools on libnvidia-container1 (same version).

Not found, so written as an assumption (each marked "assumed" where it is used): the exact
Depends of ``nvidia-driver-cuda`` (taken as libcuda1, libnvidia-ml1, nvidia-kernel-support and
libcudadebugger1 at its version: the userspace a CUDA host needs, the last two outside the
container's former pin globs and FORBIDDEN list as issue 15 describes), source package names
other than ``nvidia-open`` (Debian's: nvidia-graphics-drivers, nvidia-persistenced,
nvidia-modprobe), the Debian revision of per-version pinning packages (``<version>-1``), the
other toolkits' package versions, and which driver releases of the 535/550 branches the debian12
index holds (535.247.01 and 550.163.01 here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: driver releases the simulated repository carries (bare versions)
DRIVER_VERSIONS = ["535.247.01", "550.163.01", "580.95.05", "580.105.08", "590.44.01", "595.71.05"]
#: per-version pinning packages the index has ([PIN]: not every release gets one)
VERSION_PINNING = ["580.105.08", "595.71.05"]
#: branch pinning packages and their versions ([PIN]: "580-1", "580-5" in the debian12 index)
BRANCH_PINNING = {"535": ["535-1"], "550": ["550-1"], "580": ["580-1", "580-5"], "590": ["590-1"],
                  "595": ["595-1"]}
#: toolkit -> {package stem: version}; the debian12 repository starts at CUDA 12.3
#: (github.com/NVIDIA/nvidia-docker/issues/1791). 13.2 from [L595]; 12.5's cccl/cudart from the
#: 12.5 package manifest of RobotLocomotion/drake (cuda-cccl-12-5_12.5.39-1, cuda-cudart-12-5_12.5.82-1);
#: the rest follow the same X.Y.<build>-1 form (assumed builds).
TOOLKITS: dict[str, dict[str, str]] = {
    "12.3": {"cuda-nvcc": "12.3.107-1", "cuda-cudart": "12.3.101-1", "cuda-cudart-dev": "12.3.101-1",
             "cuda-cccl": "12.3.101-1", "libcublas": "12.3.4.1-1", "libcublas-dev": "12.3.4.1-1"},
    "12.4": {"cuda-nvcc": "12.4.131-1", "cuda-cudart": "12.4.127-1", "cuda-cudart-dev": "12.4.127-1",
             "cuda-cccl": "12.4.127-1", "libcublas": "12.4.5.8-1", "libcublas-dev": "12.4.5.8-1"},
    "12.5": {"cuda-nvcc": "12.5.82-1", "cuda-cudart": "12.5.82-1", "cuda-cudart-dev": "12.5.82-1",
             "cuda-cccl": "12.5.39-1", "libcublas": "12.5.3.2-1", "libcublas-dev": "12.5.3.2-1"},
    "12.6": {"cuda-nvcc": "12.6.85-1", "cuda-cudart": "12.6.77-1", "cuda-cudart-dev": "12.6.77-1",
             "cuda-cccl": "12.6.77-1", "libcublas": "12.6.4.1-1", "libcublas-dev": "12.6.4.1-1"},
    "12.8": {"cuda-nvcc": "12.8.93-1", "cuda-cudart": "12.8.90-1", "cuda-cudart-dev": "12.8.90-1",
             "cuda-cccl": "12.8.90-1", "libcublas": "12.8.4.1-1", "libcublas-dev": "12.8.4.1-1"},
    "12.9": {"cuda-nvcc": "12.9.86-1", "cuda-cudart": "12.9.79-1", "cuda-cudart-dev": "12.9.79-1",
             "cuda-cccl": "12.9.27-1", "libcublas": "12.9.1.4-1", "libcublas-dev": "12.9.1.4-1"},
    "13.0": {"cuda-nvcc": "13.0.88-1", "cuda-cudart": "13.0.96-1", "cuda-cudart-dev": "13.0.96-1",
             "cuda-cccl": "13.0.85-1", "libcublas": "13.0.2.14-1", "libcublas-dev": "13.0.2.14-1"},
    "13.1": {"cuda-nvcc": "13.1.80-1", "cuda-cudart": "13.1.80-1", "cuda-cudart-dev": "13.1.80-1",
             "cuda-cccl": "13.1.78-1", "libcublas": "13.1.1.3-1", "libcublas-dev": "13.1.1.3-1"},
    "13.2": {"cuda-nvcc": "13.2.51-1", "cuda-cudart": "13.2.51-1", "cuda-cudart-dev": "13.2.51-1",
             "cuda-cccl": "13.2.27-1", "libcublas": "13.2.0.9-1", "libcublas-dev": "13.2.0.9-1"},
}
#: packages with the driver's prefixes but their own versions [L595] and their relations [CTK]
OWN_VERSIONED: list[tuple[str, str, str, str]] = [
    # (name, version, source, depends)
    ("libnvidia-container1", "1.19.0-1", "libnvidia-container", ""),
    ("libnvidia-container-tools", "1.19.0-1", "libnvidia-container", "libnvidia-container1 (>= 1.19.0-1)"),
    ("nvidia-container-toolkit-base", "1.19.0-1", "nvidia-container-toolkit", ""),
    ("nvidia-container-toolkit", "1.19.0-1", "nvidia-container-toolkit",
     "nvidia-container-toolkit-base (= 1.19.0-1), libnvidia-container-tools (>= 1.19.0-1)"),
    ("libnvidia-egl-gbm1", "1.1.3-1", "egl-gbm", ""),
    ("libnvidia-egl-wayland21", "1.0.1-1", "egl-wayland2", ""),
    ("libnvidia-egl-xcb1", "1:1.0.5-1", "egl-x11", ""),
    ("libnvidia-egl-xlib1", "1:1.0.5-1", "egl-x11", ""),
]
#: Debian's dkms (3.0.10 in bookworm), standing in for deb.debian.org, which the simulated
#: containers cannot reach: without it `apt-get -s install nvidia-open` could not even be planned
DEBIAN_DKMS = "3.0.10-8+deb12u1"


@dataclass(frozen=True)
class Pkg:
    """One binary package: control fields and a payload (a kind and its arguments)."""

    name: str
    version: str
    source: str = ""
    depends: str = ""
    recommends: str = ""
    provides: str = ""
    conflicts: str = ""
    arch: str = "amd64"
    description: str = ""
    #: (kind, args) for nvidia.PAYLOADS
    payload: tuple[str, tuple[str, ...]] = ("none", ())
    section: str = "multiverse/devel"
    extra: dict[str, str] = field(default_factory=dict)


def _driver(ver: str) -> list[Pkg]:
    full = f"{ver}-1"
    branch = ver.split(".")[0]
    src = "nvidia-graphics-drivers"
    eq = f"(= {full})"
    # branches before 560 still carry Debian's alternatives package [A550]
    alt = int(branch) < 560
    alt_dep = f"nvidia-alternative {eq}, " if alt else ""
    kmod = f"nvidia-kernel-open-dkms {eq} | nvidia-kernel-dkms {eq}"
    pkgs = [
        Pkg("libnvidia-ptxjitcompiler1", full, src, alt_dep.rstrip(", "),
            payload=("lib", ("libnvidia-ptxjitcompiler", ver)),
            description="NVIDIA PTX JIT Compiler library"),
        Pkg("libnvidia-nvvm4", full, src, alt_dep.rstrip(", "), payload=("lib", ("libnvidia-nvvm", ver)),
            description="NVIDIA NVVM Compiler library"),
        # [D535]: the JIT and NVVM libraries at its version; the kernel module only *recommended*
        Pkg("libcuda1", full, src, f"{alt_dep}libnvidia-ptxjitcompiler1 {eq}, libnvidia-nvvm4 {eq}",
            recommends=f"{kmod}, nvidia-persistenced {eq}", payload=("lib", ("libcuda", ver)),
            description="NVIDIA CUDA Driver Library"),
        Pkg("libcudadebugger1", full, src, f"{alt_dep}libcuda1 {eq}", payload=("lib", ("libcudadebugger", ver)),
            description="NVIDIA CUDA Debugger Library"),
        Pkg("libnvidia-ml1", full, src, alt_dep.rstrip(", "), payload=("lib", ("libnvidia-ml", ver)),
            description="NVIDIA Management Library (NVML) runtime library"),
        # [D535]: nvidia-kernel-support needs nvidia-modprobe; it carries no kernel module
        Pkg("nvidia-kernel-support", full, src, f"{alt_dep}nvidia-modprobe (>= {branch})",
            payload=("doc", ("NVIDIA binary kernel module support files",)),
            description="NVIDIA binary kernel module support files"),
        # assumed (see the module docstring): the userspace a CUDA host runs, nvidia-smi included
        Pkg("nvidia-driver-cuda", full, src,
            f"{alt_dep}libcuda1 {eq}, libnvidia-ml1 {eq}, nvidia-kernel-support {eq}, libcudadebugger1 {eq}",
            recommends=f"nvidia-persistenced {eq}", payload=("smi", (ver,)),
            description="NVIDIA driver CUDA integration components"),
        Pkg("firmware-nvidia-gsp", full, src, payload=("firmware", (ver,)), section="non-free-firmware/kernel",
            description="NVIDIA GSP firmware"),
        # [GSP] the open module needs the GSP firmware at its version; [D535] both need dkms
        Pkg("nvidia-kernel-open-dkms", full, src, f"dkms, nvidia-kernel-support {eq}, firmware-nvidia-gsp {eq}",
            payload=("dkms-src", (ver,)),
            description="NVIDIA binary kernel module DKMS source (open GPU kernel modules)"),
        Pkg("nvidia-kernel-dkms", full, src, f"dkms, nvidia-kernel-support {eq}", payload=("dkms-src", (ver,)),
            description="NVIDIA binary kernel module DKMS source"),
        # [A550] the desktop driver needs a kernel module (simplified: its GL/X packages are left out)
        Pkg("nvidia-driver", full, src, f"{alt_dep}nvidia-driver-cuda {eq}, {kmod}",
            recommends=f"nvidia-persistenced {eq}", description="NVIDIA metapackage"),
        Pkg("nvidia-persistenced", full, "nvidia-persistenced", payload=("script", ("/usr/bin/nvidia-persistenced",)),
            description="daemon to maintain persistent software state in the NVIDIA driver"),
        Pkg("nvidia-modprobe", full, "nvidia-modprobe", payload=("doc", ("nvidia-modprobe (the host's is simulated)",)),
            description="utility to load NVIDIA kernel modules and create device nodes"),
        # the open full stack, ">=" like NVIDIA's metapackages [PIN, file id 68729440833]
        Pkg("nvidia-open", full, "nvidia-open", f"nvidia-driver (>= {full}), nvidia-kernel-open-dkms (>= {full})",
            description="NVIDIA open kernel module driver metapackage"),
        # the proprietary full stack, ">=" as the issue reads the index
        Pkg("cuda-drivers", full, "cuda-drivers", f"nvidia-driver (>= {full}), nvidia-kernel-dkms (>= {full})",
            description="CUDA Driver meta-package, branch-specific"),
        Pkg(f"cuda-drivers-{branch}", full, "cuda-drivers", f"cuda-drivers (= {full})",
            description=f"CUDA Driver meta-package, branch {branch}"),
    ]
    if alt:
        pkgs.append(Pkg("nvidia-alternative", full, src, payload=("doc", ("alternatives for the NVIDIA driver",)),
                        description="allows the selection of NVIDIA as GLX provider"))
    return pkgs


PIN_SOURCES = ["nvidia-graphics-drivers", "nvidia-open", "cuda-drivers", "nvidia-persistenced", "nvidia-modprobe"]


def _pin_text(version_glob: str) -> str:
    """The preferences file a pinning package ships: one stanza per source of the driver [PIN]."""
    return "".join(f"Package: src:{s}:any\nPin: version {version_glob}\nPin-Priority: 1000\n\n" for s in PIN_SOURCES)


def _pinning() -> list[Pkg]:
    out = []
    common = {"arch": "all", "provides": "nvidia-driver-pinning", "conflicts": "nvidia-driver-pinning",
              "source": "nvidia-driver-pinning"}
    for branch, versions in BRANCH_PINNING.items():
        for v in versions:
            out.append(Pkg(f"nvidia-driver-pinning-{branch}", v, payload=("pin", (_pin_text(f"{branch}.*"),)),
                           description=f"APT driver pinning file for driver branch {branch}", **common))
    for ver in VERSION_PINNING:
        out.append(Pkg(f"nvidia-driver-pinning-{ver}", f"{ver}-1", payload=("pin", (_pin_text(f"{ver}-*"),)),
                       description=f"APT driver pinning file for driver version {ver}", **common))
    return out


def _toolkits() -> list[Pkg]:
    out = []
    for tk, versions in TOOLKITS.items():
        dash = tk.replace(".", "-")
        v = versions
        rel = {"cuda-nvcc": "", "cuda-cudart": "", "cuda-cccl": "", "libcublas": "",
               "cuda-cudart-dev": f"cuda-cudart-{dash} (>= {v['cuda-cudart']}), cuda-cccl-{dash}",
               "libcublas-dev": f"libcublas-{dash} (>= {v['libcublas']})"}
        for stem, ver in v.items():
            # kind "toolkit": a marker and, for nvcc, an `nvcc --version` answer (placeholders)
            out.append(Pkg(f"{stem}-{dash}", ver, f"{stem}-{dash}", rel[stem], payload=("toolkit", (stem, tk, ver)),
                           description=f"CUDA {tk} {stem}"))
    return out


def graph() -> list[Pkg]:
    """Every package of the simulated repository except cuda-keyring (its source line names the URL)."""
    pkgs: list[Pkg] = []
    for ver in DRIVER_VERSIONS:
        pkgs += _driver(ver)
    pkgs += _pinning() + _toolkits()
    pkgs += [Pkg(n, v, s, d, payload=("doc", (n,)), description=f"{n} (own version)") for n, v, s, d in OWN_VERSIONED]
    pkgs.append(Pkg("dkms", DEBIAN_DKMS, "dkms", arch="all", payload=("script", ("/usr/sbin/dkms",)),
                    description="Dynamic Kernel Module System (stand-in for Debian's)"))
    return pkgs


def closure(names: list[str], version: str) -> dict[str, str]:
    """``names`` at driver ``version`` and every package their Depends pull in (first alternatives,
    candidates of unversioned ones at the same driver version): what an install from the repository
    leaves on a host, e.g. to seed a node that starts with a driver."""
    by_name: dict[str, list[Pkg]] = {}
    for p in graph():
        by_name.setdefault(p.name, []).append(p)
    full = f"{version}-1"
    out: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out or name not in by_name:
            continue
        pick = next((p for p in by_name[name] if p.version == full), by_name[name][-1])
        out[name] = pick.version
        todo += [d.split("|")[0].strip().split(" ")[0] for d in pick.depends.split(",") if d.strip()]
    return out
