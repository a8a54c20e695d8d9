"""Which CUDA toolkit fits which GPUs and which host driver (REFERENCE §3, as data).

Two tables and the rules that use them:

- ``ARCHES``: compute capability → the first toolkit that can build for it and the
  first that cannot any more (CUDA 13 dropped everything below 7.5).
- ``TOOLKITS``: toolkit → its own minimum Linux driver ("CUDA Toolkit and Corresponding
  Driver Versions", Table 3 of each CUDA Toolkit Release Notes,
  docs.nvidia.com/cuda/archive/<X.Y.Z>/cuda-toolkit-release-notes/), for the toolkits NVIDIA's
  debian12/debian13 repositories carry. The debian12 repository starts at CUDA 12.3: Debian 12
  was added with CUDA 12.3 (github.com/NVIDIA/nvidia-docker/issues/1791, "With the release of
  CUDA 12.3, the new Linux distribution Debian 12 has been added"), so 12.0–12.2 can never be
  installed from it (REFERENCE §3 listed 12.0: settled here, it is not offered).

Two rules admit a toolkit on a driver (``fit``), tried in this order:

1. **own minimum**: the driver is at least the toolkit's own minimum (every feature works);
2. **minor-version compatibility**: the driver is at least the floor of the toolkit's major
   release (12.x ≥ 525, 13.x ≥ 580: docs.nvidia.com/deploy/cuda-compatibility/
   minor-version-compatibility.html, Table 1; the R535 LTS branch "supports CUDA 12.x (through
   CUDA minor version compatibility)": docs.nvidia.com/datacenter/tesla/drivers/
   supported-drivers-and-cuda-toolkit-versions.html, Table 2). It holds "with limited
   feature-set" and without PTX JIT for PTX newer than the driver (same page; "Binary
   Compatibility"), so it applies only to builds that carry real SASS for every selected
   architecture. Ours do: ``architectures()`` gives the exact ``sm_XY`` of each GPU and no
   ``-virtual`` (PTX) entry, so nothing is JIT-compiled at run time.

The automatic choice is the newest toolkit the first rule admits; only when none does, the
newest the second admits (a 535 host: 12.3+ need 545+ by their own minimum, so it gets the
newest 12.x by minor-version compatibility instead of no toolkit at all). 13.3–13.5 are left
out: their minimum drivers could not be read from NVIDIA's release notes here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

Version = tuple[int, ...]


@dataclass(frozen=True)
class Arch:
    cc: str
    gpus: str
    min_cuda: str
    #: first toolkit that no longer builds for it (None: still supported)
    dropped_in: str | None = None


ARCHES: dict[str, Arch] = {a.cc: a for a in [
    Arch("6.1", "GTX 10xx, P40", "8.0", dropped_in="13.0"),
    Arch("7.0", "V100", "9.0", dropped_in="13.0"),
    Arch("7.5", "T4, RTX 20xx", "10.0"),
    Arch("8.0", "A100", "11.0"),
    Arch("8.6", "RTX 30xx, A10, A40", "11.1"),
    Arch("8.9", "RTX 40xx, RTX 2000 Ada, L4, L40S", "11.8"),
    Arch("9.0", "H100, H200", "11.8"),
    Arch("10.0", "B200", "12.8"),
    Arch("12.0", "RTX 50xx, RTX PRO Blackwell", "12.8"),
    Arch("12.1", "GB10", "12.9"),
]}

#: toolkit -> its own minimum Linux x86_64 driver, GA release (newest last). Release Notes Table 3 of
#: each toolkit; 12.3 (545.23.06) and 12.5 (555.42.02) as NVIDIA's tables give them (the table could
#: not be opened here again: the 12.5 GA local installer for debian12 carries driver 555.42.06, its
#: Update 1); 12.6: 560.28.03 (also what CUDA 12.6 builds declare as their floor).
TOOLKITS: dict[str, str] = {
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
    "13.1": "590.44.01",
    "13.2": "595.45.04",
}
#: major release -> the minor-version-compatibility floor (Table 1 of NVIDIA's Minor Version
#: Compatibility page: CUDA 12.x >= 525, CUDA 13.x >= 580; 525.60.13 is the first 525 release that
#: the 12.0 release notes name)
MINOR_FLOOR: dict[str, str] = {"12": "525.60.13", "13": "580.65.06"}
OWN_MINIMUM = "own minimum"
MINOR_COMPAT = "minor-version compatibility"


@dataclass(frozen=True)
class ToolkitChoice:
    """A toolkit and the rule that admitted it on this driver."""

    version: str
    #: OWN_MINIMUM or MINOR_COMPAT
    rule: str
    driver: str

    @property
    def why(self) -> str:
        """One line for plans and notes: which rule picked it, against which driver floor."""
        if self.rule == OWN_MINIMUM:
            return f"driver {self.driver} ≥ {TOOLKITS[self.version]}, CUDA {self.version}'s own minimum"
        major = self.version.split(".")[0]
        return (f"minor-version compatibility: driver {self.driver} ≥ {MINOR_FLOOR[major]} (CUDA {major}.x floor), "
                f"below CUDA {self.version}'s own {TOOLKITS[self.version]}; fine for a build with real SASS for "
                "every GPU (ours: exact architectures, no PTX JIT)")


def vtuple(version: str) -> Version:
    """"580.95.05" → (580, 95, 5); missing parts compare as 0."""
    parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    return parts + (0,) * (3 - len(parts))


def rule_for(toolkit: str, driver: str) -> str | None:
    """Which rule admits ``toolkit`` on ``driver`` (OWN_MINIMUM first), None when neither does."""
    if vtuple(driver) >= vtuple(TOOLKITS[toolkit]):
        return OWN_MINIMUM
    floor = MINOR_FLOOR.get(toolkit.split(".")[0])
    if floor is not None and vtuple(driver) >= vtuple(floor):
        return MINOR_COMPAT
    return None


def driver_supports(toolkit: str, driver: str) -> bool:
    """Can a build of ours (exact-architecture SASS) with ``toolkit`` run on ``driver``?"""
    return rule_for(toolkit, driver) is not None


def min_driver(toolkit: str) -> str:
    """The lowest driver that runs a build of ours with ``toolkit`` (the floor of its major release)."""
    floor = MINOR_FLOOR.get(toolkit.split(".")[0])
    return floor if floor is not None and vtuple(floor) < vtuple(TOOLKITS[toolkit]) else TOOLKITS[toolkit]


def builds_for(toolkit: str, cc: str) -> bool:
    """Can ``toolkit`` compile device code for compute capability ``cc``?"""
    arch = ARCHES.get(cc)
    if arch is None:
        return False
    if vtuple(toolkit) < vtuple(arch.min_cuda):
        return False
    return arch.dropped_in is None or vtuple(toolkit) < vtuple(arch.dropped_in)


def cuda_arch(cc: str) -> str:
    """The CMAKE_CUDA_ARCHITECTURES entry: ``8.9`` → ``89-real``; 12.x → ``120a-real``
    (arch-specific features, which llama.cpp's Blackwell kernels need; REFERENCE §4).

    ``-real``: SASS only, no PTX. A bare ``89`` means ``89-real;89-virtual`` in CMake
    (CMAKE_CUDA_ARCHITECTURES docs), and PTX is what minor-version compatibility cannot JIT on
    an older driver; llama.cpp's own default list uses the same suffixes
    (b11312 ggml/src/ggml-cuda/CMakeLists.txt:47-67, e.g. ``86-real``, ``120a-real``).
    """
    major, minor = cc.split(".")
    code = f"{major}{minor}"
    return (code + "a" if major == "12" else code) + "-real"


def arch_number(arch: str) -> int:
    """``120a-real`` → 120 (also for stamps of older builds: ``89``, ``120a``)."""
    return int(arch.split("-")[0].rstrip("af"))


def architectures(ccs: list[str]) -> list[str]:
    """Sorted, de-duplicated CMake architectures for the selected GPUs."""
    return sorted({cuda_arch(cc) for cc in ccs}, key=arch_number)


def _why_not(toolkit: str, driver: str, ccs: list[str]) -> str | None:
    if not driver_supports(toolkit, driver):
        return (f"CUDA {toolkit} needs host driver ≥ {min_driver(toolkit)} (its own minimum is {TOOLKITS[toolkit]}), "
                f"the host runs {driver}")
    for cc in ccs:
        arch = ARCHES.get(cc)
        if arch is None:
            return f"compute capability {cc} is not in the table"
        if vtuple(toolkit) < vtuple(arch.min_cuda):
            return f"compute capability {cc} ({arch.gpus}) needs CUDA ≥ {arch.min_cuda}"
        if arch.dropped_in and vtuple(toolkit) >= vtuple(arch.dropped_in):
            return (f"CUDA {arch.dropped_in} and later cannot build for compute capability {cc} "
                    f"({arch.gpus})")
    return None


def pick_toolkit(driver: str, ccs: list[str], override: str = "auto",
                 available: list[str] | None = None) -> ToolkitChoice:
    """The toolkit for this driver and these GPUs, and the rule that admitted it.

    ``available`` (toolkits the apt repository offers, when known) narrows the choice.
    A user override that does not fit is a ConfigError that says why.
    """
    unknown = [cc for cc in ccs if cc not in ARCHES]
    if unknown:
        raise ConfigError(f"unknown compute capability {', '.join(unknown)}: no CUDA toolkit is known to fit",
                          key="cuda.toolkit", fix="set llama_cpp.backend: vulkan or cpu, or update provision")
    if override != "auto":
        if override not in TOOLKITS:
            raise ConfigError(f"CUDA {override} is not a known toolkit (known: {', '.join(TOOLKITS)}; NVIDIA's "
                              "Debian repositories start at 12.3)",
                              key="cuda.toolkit", fix="use one of the known versions or 'auto'")
        why = _why_not(override, driver, ccs)
        if why:
            raise ConfigError(f"CUDA {override} does not fit this host: {why}", key="cuda.toolkit",
                              fix="set cuda.toolkit: auto (picks the newest that fits)")
        if available is not None and override not in available:
            raise ConfigError(f"CUDA {override} is not in NVIDIA's repository (it offers "
                              f"{', '.join(available) or 'no known toolkit'})", key="cuda.toolkit",
                              fix="set cuda.toolkit: auto, or one of the offered versions")
        return ToolkitChoice(override, rule_for(override, driver) or OWN_MINIMUM, driver)
    candidates = [t for t in TOOLKITS if available is None or t in available]
    fitting = [t for t in candidates if _why_not(t, driver, ccs) is None]
    if not fitting:
        reasons = "; ".join(f"{t}: {_why_not(t, driver, ccs)}" for t in candidates) or \
            "the repository offers no known toolkit"
        raise ConfigError(f"no CUDA toolkit fits driver {driver} and compute capabilities "
                          f"{', '.join(ccs) or '(none)'} ({reasons})", key="cuda.toolkit",
                          fix="upgrade the host driver, or build with llama_cpp.backend: vulkan or cpu")
    own = [t for t in fitting if rule_for(t, driver) == OWN_MINIMUM]
    best = max(own or fitting, key=vtuple)
    return ToolkitChoice(best, OWN_MINIMUM if own else MINOR_COMPAT, driver)


def choose_toolkit(driver: str, ccs: list[str], override: str = "auto",
                   available: list[str] | None = None) -> str:
    """``pick_toolkit``'s version alone."""
    return pick_toolkit(driver, ccs, override, available).version


def toolkit_packages(toolkit: str) -> list[str]:
    """The minimal packages llama.cpp needs: nvcc, the runtime headers, CCCL, cuBLAS.

    REFERENCE §3 listed nvcc, cudart-dev and cuBLAS only ("verify with a real configure"): a
    configure passes without CCCL, the compile of the files below does not.

    CCCL (``cuda-cccl-X-Y``: CUB, Thrust, libcu++) because ggml-cuda includes ``<cub/cub.cuh>``
    (b11312: ggml/src/ggml-cuda/argsort.cu, cumsum.cu, mean.cu, ssm-scan.cu, top-k.cu); the
    package name is the one NVIDIA's repository uses (a Debian 13 host with CUDA 13.2 lists
    ``cuda-cccl-13-2 13.2.27-1`` next to ``cuda-nvcc-13-2 13.2.51-1``).
    """
    dash = toolkit.replace(".", "-")
    return [f"cuda-nvcc-{dash}", f"cuda-cudart-dev-{dash}", f"cuda-cccl-{dash}", f"libcublas-dev-{dash}"]
