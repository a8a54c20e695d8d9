"""Which CUDA toolkit fits which GPUs and which host driver (REFERENCE §3, as data).

Two tables and the rules that use them:

- ``ARCHES``: compute capability → the first toolkit that can build for it and the
  first that cannot any more (CUDA 13 dropped everything below 7.5).
- ``TOOLKITS``: toolkit → the minimum Linux driver. We require the toolkit's own
  minimum, not the minor-version-compatibility floor (525 for 12.x, 580 for 13.x):
  under that floor PTX JIT and newer runtime features fail at run time, which is
  exactly what a user would debug for hours.
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

#: toolkit -> minimum Linux driver (newest last)
TOOLKITS: dict[str, str] = {
    "12.0": "525.60.13",
    "12.4": "550.54.14",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
    "13.1": "590.44.01",
    "13.2": "595.45.04",
}


def vtuple(version: str) -> Version:
    """"580.95.05" → (580, 95, 5); missing parts compare as 0."""
    parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    return parts + (0,) * (3 - len(parts))


def driver_supports(toolkit: str, driver: str) -> bool:
    return vtuple(driver) >= vtuple(TOOLKITS[toolkit])


def builds_for(toolkit: str, cc: str) -> bool:
    """Can ``toolkit`` compile device code for compute capability ``cc``?"""
    arch = ARCHES.get(cc)
    if arch is None:
        return False
    if vtuple(toolkit) < vtuple(arch.min_cuda):
        return False
    return arch.dropped_in is None or vtuple(toolkit) < vtuple(arch.dropped_in)


def cuda_arch(cc: str) -> str:
    """The CMAKE_CUDA_ARCHITECTURES entry: ``8.9`` → ``89``; 12.x → ``120a`` (arch-specific
    features, which llama.cpp's Blackwell kernels need; REFERENCE §4)."""
    major, minor = cc.split(".")
    code = f"{major}{minor}"
    return code + "a" if major == "12" else code


def architectures(ccs: list[str]) -> list[str]:
    """Sorted, de-duplicated CMake architectures for the selected GPUs."""
    return sorted({cuda_arch(cc) for cc in ccs}, key=lambda a: int(a.rstrip("a")))


def _why_not(toolkit: str, driver: str, ccs: list[str]) -> str | None:
    if not driver_supports(toolkit, driver):
        return (f"CUDA {toolkit} needs host driver ≥ {TOOLKITS[toolkit]}, the host runs {driver}")
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


def choose_toolkit(driver: str, ccs: list[str], override: str = "auto",
                   available: list[str] | None = None) -> str:
    """The newest toolkit the host driver supports that builds for every GPU.

    ``available`` (toolkits the apt repository offers, when known) narrows the choice.
    A user override that does not fit is a ConfigError that says why.
    """
    unknown = [cc for cc in ccs if cc not in ARCHES]
    if unknown:
        raise ConfigError(f"unknown compute capability {', '.join(unknown)}: no CUDA toolkit is known to fit",
                          key="cuda.toolkit", fix="set llama_cpp.backend: vulkan or cpu, or update provision")
    if override != "auto":
        if override not in TOOLKITS:
            raise ConfigError(f"CUDA {override} is not a known toolkit (known: {', '.join(TOOLKITS)})",
                              key="cuda.toolkit", fix="use one of the known versions or 'auto'")
        why = _why_not(override, driver, ccs)
        if why:
            raise ConfigError(f"CUDA {override} does not fit this host: {why}", key="cuda.toolkit",
                              fix="set cuda.toolkit: auto (picks the newest that fits)")
        return override
    candidates = [t for t in TOOLKITS if available is None or t in available]
    fitting = [t for t in candidates if _why_not(t, driver, ccs) is None]
    if not fitting:
        reasons = "; ".join(f"{t}: {_why_not(t, driver, ccs)}" for t in candidates) or \
            "the repository offers no known toolkit"
        raise ConfigError(f"no CUDA toolkit fits driver {driver} and compute capabilities "
                          f"{', '.join(ccs) or '(none)'} ({reasons})", key="cuda.toolkit",
                          fix="upgrade the host driver, or build with llama_cpp.backend: vulkan or cpu")
    return max(fitting, key=vtuple)


def toolkit_packages(toolkit: str) -> list[str]:
    """The minimal packages llama.cpp needs: nvcc, the runtime headers, cuBLAS."""
    dash = toolkit.replace(".", "-")
    return [f"cuda-nvcc-{dash}", f"cuda-cudart-dev-{dash}", f"libcublas-dev-{dash}"]
