"""NVIDIA facts inside the container: driver userspace and CUDA toolkit packages.

Stable names:

| fact name     | value                    |
| ---           | ---                      |
| ``ct.driver`` | :class:`DriverUserspace` |
| ``ct.cuda``   | :class:`CudaPackages`    |

Package state comes from ``dpkg-query`` (``${db:Status-Abbrev}``: ``ii`` installed,
``hi`` installed and held), so holds cost no extra command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .base import Fact, kv

PIN_PATH = "/etc/apt/preferences.d/provision-nvidia"
KEYRING_PATH = "/usr/share/keyrings/cuda-archive-keyring.gpg"
#: the same path NVIDIA's cuda-keyring package uses for its source, so there is one source
SOURCE_PATH_FMT = "/etc/apt/sources.list.d/cuda-{distro}-x86_64.list"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"
#: the names NVIDIA's driver packages use (operations/driver.py pins these globs at the driver version)
DRIVER_GLOBS = ["nvidia-*", "libnvidia-*", "libcuda*", "libnv*", "firmware-nvidia-*", "libegl-nvidia*",
                "libgles-nvidia*", "libglx-nvidia*", "libgl1-nvidia*", "xserver-xorg-video-nvidia*", "libxnvctrl*",
                "cuda-drivers*"]


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    installed: bool
    held: bool


@dataclass(frozen=True)
class DriverUserspace:
    os_id: str
    os_version: str
    #: NVIDIA-ish packages dpkg knows about (installed or not), by name
    packages: dict[str, Package] = field(default_factory=dict)
    pin_sha256: str | None = None
    #: sha256 of each cuda-*.list source file present (path -> sha)
    sources: dict[str, str] = field(default_factory=dict)
    keyring: bool = False
    #: versions found as libnvidia-ml.so.<ver> / libcuda.so.<ver>
    nvml_libs: list[str] = field(default_factory=list)
    cuda_libs: list[str] = field(default_factory=list)
    #: nvidia-driver-pinning-<ver> packages the apt sources offer
    pinning_available: list[str] = field(default_factory=list)

    @property
    def distro(self) -> str | None:
        """``debian12`` / ``debian13`` (NVIDIA's repository names), None for anything else."""
        if self.os_id == "debian" and self.os_version in ("12", "13"):
            return f"debian{self.os_version}"
        return None

    def installed(self, name: str) -> Package | None:
        p = self.packages.get(name)
        return p if p and p.installed else None

    @property
    def pinning_packages(self) -> list[str]:
        return sorted(n for n, p in self.packages.items()
                      if n.startswith("nvidia-driver-pinning-") and p.installed)


@dataclass(frozen=True)
class CudaPackages:
    #: installed toolkit packages: name -> version
    installed: dict[str, str] = field(default_factory=dict)
    #: toolkits the configured apt sources offer ("13.0"), from `apt-cache pkgnames cuda-nvcc-`
    available: list[str] = field(default_factory=list)

    def has_toolkit(self, packages: list[str]) -> bool:
        return all(p in self.installed for p in packages)


def parse_packages(output: str) -> dict[str, Package]:
    out: dict[str, Package] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "pkg":
            status = parts[3] if len(parts) > 3 else ""
            out[parts[1]] = Package(parts[1], parts[2], installed=status[1:2] == "i",
                                    held=status[:1] == "h")
    return out


def _lib_versions(output: str, prefix: str) -> list[str]:
    found = []
    for line in output.splitlines():
        name = line.strip().rsplit("/", 1)[-1]
        m = re.fullmatch(re.escape(prefix) + r"\.(\d+\.\d+(?:\.\d+)?)", name)
        if m:
            found.append(m.group(1))
    return sorted(set(found))


def parse_driver_userspace(output: str, code: int) -> DriverUserspace:
    values = kv(output)
    sources = {}
    for line in output.splitlines():
        if line.startswith("source "):
            _, path, sha = (line.split() + ["", ""])[:3]
            sources[path] = sha
    return DriverUserspace(
        os_id=values.get("os_id", ""), os_version=values.get("os_version", ""),
        packages=parse_packages(output), pin_sha256=values.get("pin") or None, sources=sources,
        keyring=values.get("keyring") == "1",
        nvml_libs=_lib_versions(output, "libnvidia-ml.so"), cuda_libs=_lib_versions(output, "libcuda.so"),
        pinning_available=sorted(ln.split()[1] for ln in output.splitlines()
                                 if ln.startswith("avail ") and len(ln.split()) == 2))


def parse_cuda(output: str, code: int) -> CudaPackages:
    installed = {p.name: p.version for p in parse_packages(output).values() if p.installed}
    available = set()
    for line in output.splitlines():
        m = re.fullmatch(r"avail cuda-nvcc-(\d+)-(\d+)", line.strip())
        if m:
            available.add(f"{m.group(1)}.{m.group(2)}")
    return CudaPackages(installed, sorted(available, key=lambda v: tuple(int(x) for x in v.split("."))))


_PKG_FMT = "'pkg ${Package} ${Version} ${db:Status-Abbrev}\\n'"

DRIVER_CT = Fact("ct.driver",
                 ". /etc/os-release 2>/dev/null; echo \"os_id=$ID\"; echo \"os_version=$VERSION_ID\"\n"
                 f"dpkg-query -W -f={_PKG_FMT} {' '.join(repr(g) for g in DRIVER_GLOBS)} cuda-keyring 2>/dev/null\n"
                 f"echo \"pin=$(sha256sum {PIN_PATH} 2>/dev/null | cut -d' ' -f1)\"\n"
                 "for s in /etc/apt/sources.list.d/cuda-*.list; do [ -e \"$s\" ] && "
                 "echo \"source $s $(sha256sum \"$s\" | cut -d' ' -f1)\"; done\n"
                 f"echo \"keyring=$([ -s {KEYRING_PATH} ] && echo 1 || echo 0)\"\n"
                 f"ls -1 {LIB_DIR}/libnvidia-ml.so.* {LIB_DIR}/libcuda.so.* 2>/dev/null\n"
                 "apt-cache pkgnames nvidia-driver-pinning- 2>/dev/null | sed 's/^/avail /'\n"
                 "true",
                 parse_driver_userspace, where="ct")

CUDA_CT = Fact("ct.cuda",
               f"dpkg-query -W -f={_PKG_FMT} 'cuda-nvcc-*' 'cuda-cudart-dev-*' 'cuda-cccl-*' 'libcublas-dev-*' "
               "2>/dev/null\n"
               "apt-cache pkgnames cuda-nvcc- 2>/dev/null | sed 's/^/avail /'\n"
               "true",
               parse_cuda, where="ct")


@dataclass(frozen=True)
class DriverIndex:
    """Which versions of the driver packages NVIDIA's repository offers the container.

    From the container's apt lists for ``driver.repo_url`` (``apt-cache madison``, no network),
    or, before the repository was ever added there, from its ``Packages`` index fetched once
    with apt's own downloader (as `provision host` reads it for the host). ``known`` is False
    when neither could be read: then nothing can be said before applying.
    """

    versions: dict[str, list[str]] = field(default_factory=dict)
    known: bool = False
    error: str | None = None

    def has(self, package: str, version: str) -> bool:
        return any(v.split(":", 1)[-1].startswith(version + "-") for v in self.versions.get(package, []))

    def driver_versions(self, package: str) -> list[str]:
        """The upstream driver versions offered for ``package`` ("580.95.05"), oldest first."""
        vs = {v.split(":", 1)[-1].rsplit("-", 1)[0] for v in self.versions.get(package, [])}
        return sorted(vs, key=lambda v: tuple(int(x) if x.isdigit() else 0 for x in v.split(".")))


def parse_driver_index(output: str, code: int) -> DriverIndex:
    versions: dict[str, list[str]] = {}
    error = None
    for line in output.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "repo":
            versions.setdefault(words[1], []).append(words[2])
        elif words[:1] == ["index_error"]:
            error = " ".join(words[1:]) or "unreachable"
    return DriverIndex(versions, known=bool(versions) or "known" in output.split(), error=error)


def driver_index_fact(repo_url: str, packages: list[str]) -> Fact[DriverIndex]:
    """The container's view of NVIDIA's repository for ``packages`` (see :class:`DriverIndex`)."""
    repo = repo_url.rstrip("/")
    names = " ".join(shlex.quote(p) for p in packages)
    pattern = "|".join(re.escape(p) for p in packages)
    return Fact("ct.driver_index", f"""repo={shlex.quote(repo)}
. /etc/os-release 2>/dev/null
src="$repo/debian$VERSION_ID/x86_64"
out=$(apt-cache madison {names} 2>/dev/null | awk -F' [|] ' -v s="$src" 'index($3, s) == 1 {{gsub(/ /, "", $1); print "repo", $1, $2}}')
if [ -n "$out" ]; then echo known; printf '%s\n' "$out"
else
  t=$(mktemp -d)
  if /usr/lib/apt/apt-helper download-file "$src/Packages" "$t/Packages" >"$t/log" 2>&1; then
    echo known
    awk '/^Package: /{{p=$2}} /^Version: /{{if (p ~ /^({pattern})$/) print "repo", p, $2}}' "$t/Packages"
  else echo "index_error $(tail -n1 "$t/log")"; fi
  rm -rf "$t"
fi
true""", parse_driver_index, where="ct")
