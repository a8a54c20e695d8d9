"""Facts for managing the host's own NVIDIA driver (``provision host``), in one round trip.

Fact ``host.packages`` → :class:`HostPackages`: the host's Debian release, the driver-family
and kernel packages dpkg knows, the driver versions NVIDIA's repository offers (its
``Packages`` index read with curl, so a host without the repository yet can still be planned),
whether a ``proxmox-headers-<kver>`` is installable for each installed kernel, our files
(source, nouveau blacklist, our own driver pin), the pinning packages the index has, the UEFI
Secure Boot state and whether DKMS's signing key is enrolled, the boot id (to see a reboot
happen), and for each managed
GPU container given to :func:`host_packages_fact` the version suffix of its NVIDIA libraries
and its CUDA toolkits. The loaded module, GPUs and kernels come from facts/nvidia.py and
facts/kernel.py, gathered in the same script.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .base import Fact
from .nvidia_ct import KEYRING_PATH  # NVIDIA's repo lays out the same on the host and in a CT

BLACKLIST_PATH = "/etc/modprobe.d/provision-blacklist-nouveau.conf"
#: our own pin on the host, when the index has no nvidia-driver-pinning-<version> (same file as in a CT)
HOST_PIN_PATH = "/etc/apt/preferences.d/provision-nvidia"
#: the key DKMS signs modules with when none is configured (dkms 3.0.10, dkms.in:953-960)
DKMS_MOK = "/var/lib/dkms/mok.pub"
#: the UEFI global variable GUID of SecureBoot (efivarfs: 4 attribute bytes, then the value)
SB_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
#: what `provision host` installed last (version, flavour, previous version)
STATE_DIR = "/var/lib/provision/host-driver"
STATE_PATH = f"{STATE_DIR}/state.json"
#: kernel module packages per flavour (NVIDIA's names; the userspace is nvidia-driver-cuda)
MODULE_PACKAGE = {"open": "nvidia-kernel-open-dkms", "proprietary": "nvidia-kernel-dkms"}


@dataclass(frozen=True)
class HostPackage:
    version: str
    installed: bool
    held: bool
    #: dpkg state: "ii" fine, "iF"/"iU" a failed or unfinished configure
    state: str = "ii"


@dataclass(frozen=True)
class CtUserspace:
    #: suffixes of libnvidia-ml.so.<ver> in the container
    libs: list[str] = field(default_factory=list)
    #: CUDA toolkits installed (/usr/local/cuda-X.Y)
    cuda: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HostPackages:
    os_id: str = ""
    os_version: str = ""
    packages: dict[str, HostPackage] = field(default_factory=dict)
    #: bare driver version -> full package version NVIDIA's repository offers (nvidia-driver-cuda),
    #: {} when unreachable
    repo: dict[str, str] = field(default_factory=dict)
    repo_error: str | None = None
    keyring: bool = False
    #: path -> sha256 of each cuda-*.list source
    sources: dict[str, str] = field(default_factory=dict)
    blacklist_sha256: str | None = None
    boot_id: str = ""
    #: kernel -> candidate version of proxmox-headers-<kver> (None: apt knows none)
    headers_candidate: dict[str, str | None] = field(default_factory=dict)
    cts: dict[int, CtUserspace] = field(default_factory=dict)
    #: what we recorded at the last install (previous version: the rollback target)
    state: dict[str, str] = field(default_factory=dict)
    #: nvidia-driver-pinning-* names NVIDIA's index has (branch and per-version ones)
    pinning_index: list[str] = field(default_factory=list)
    #: sha256 of our own pin file on the host, None when absent
    pin_sha256: str | None = None
    #: UEFI Secure Boot enforcing module signatures (None: cannot tell, e.g. no mokutil and no efivars)
    secure_boot: bool | None = None
    #: DKMS's signing key (/var/lib/dkms/mok.pub) is enrolled as a MOK (None: no such key yet)
    mok_enrolled: bool | None = None
    #: mokutil's own words, for the refusal
    secure_boot_evidence: str = ""

    @property
    def distro(self) -> str | None:
        if self.os_id == "debian" and self.os_version in ("12", "13"):
            return f"debian{self.os_version}"
        return None

    def installed(self, name: str) -> HostPackage | None:
        p = self.packages.get(name)
        return p if p and p.installed else None

    @property
    def driver(self) -> tuple[str | None, str | None]:
        """(installed driver version, flavour) from the kernel-module package."""
        for flavour, name in MODULE_PACKAGE.items():
            p = self.installed(name)
            if p:
                return p.version.split(":")[-1].rsplit("-", 1)[0], flavour
        return None, None

    @property
    def pinning(self) -> list[str]:
        return sorted(n for n, p in self.packages.items() if n.startswith("nvidia-driver-pinning-") and p.installed)

    def headers(self, kver: str) -> bool:
        p = self.installed(f"proxmox-headers-{kver}") or self.installed(f"pve-headers-{kver}")
        return p is not None and p.state == "ii"


def parse(output: str, code: int) -> HostPackages:
    os_id = os_version = boot_id = ""
    packages: dict[str, HostPackage] = {}
    repo: dict[str, str] = {}
    repo_error: str | None = None
    sources: dict[str, str] = {}
    headers: dict[str, str | None] = {}
    libs: dict[int, list[str]] = {}
    cuda: dict[int, list[str]] = {}
    state: dict[str, str] = {}
    keyring = False
    blacklist: str | None = None
    pinning_index: list[str] = []
    pin: str | None = None
    sb: bool | None = None
    mok: bool | None = None
    sb_text: list[str] = []
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        parts = rest.split()
        if word == "os" and parts:
            os_id, os_version = parts[0], (parts[1] if len(parts) > 1 else "")
        elif word == "pkg" and len(parts) >= 3:
            abbrev = parts[2]
            packages[parts[0]] = HostPackage(parts[1], abbrev[1:2] in ("i", "F", "U"), abbrev[0] == "h",
                                             "i" + abbrev[1:2])
        elif word == "avail" and parts:
            repo[parts[0].split(":")[-1].rsplit("-", 1)[0]] = parts[0]
        elif word == "repo_error":
            repo_error = rest.strip() or "unreachable"
        elif word == "source" and len(parts) == 2:
            sources[parts[0]] = parts[1]
        elif word == "keyring":
            keyring = rest.strip() == "1"
        elif word == "blacklist":
            blacklist = rest.strip() or None
        elif word == "boot_id":
            boot_id = rest.strip()
        elif word == "headers" and parts:
            headers[parts[0]] = parts[1] if len(parts) > 1 and parts[1] != "(none)" else None
        elif word == "ctlib" and len(parts) == 2 and parts[0].isdigit():
            libs.setdefault(int(parts[0]), []).append(parts[1])
        elif word == "ctcuda" and len(parts) == 2 and parts[0].isdigit():
            cuda.setdefault(int(parts[0]), []).append(parts[1])
        elif word == "state" and len(parts) == 2:
            state[parts[0]] = parts[1]
        elif word == "pinidx" and parts:
            pinning_index.append(parts[0])
        elif word == "hostpin":
            pin = rest.strip() or None
        elif word == "sb":
            sb, text = _secure_boot(rest.strip())
            sb_text.append(text)
        elif word == "mok":
            text = rest.strip()
            mok = None if text == "missing" else ("is already enrolled" in text)
            sb_text.append(f"mokutil --test-key {DKMS_MOK}: {text}")
    cts = {v: CtUserspace(sorted(libs.get(v, [])), sorted(cuda.get(v, []))) for v in set(libs) | set(cuda)}
    return HostPackages(os_id, os_version, packages, repo, repo_error if not repo else None, keyring,
                        sources, blacklist, boot_id, headers, cts, state, sorted(set(pinning_index)), pin, sb, mok,
                        "\n".join(sb_text))


def _secure_boot(text: str) -> tuple[bool | None, str]:
    """mokutil --sb-state's answer (lcp/mokutil src/mokutil.c 9ae73db1:1458-1466, 2197, 2214), or the
    SecureBoot EFI variable's value byte when there is no mokutil."""
    if text.startswith("efivar "):
        value = text.split()[-1]
        return (value == "1" if value.isdigit() else None), f"{SB_EFIVAR}: {value}"
    if "SecureBoot enabled" in text:
        # "SecureBoot validation is disabled in shim": shim lets unsigned modules load
        return "validation is disabled in shim" not in text, f"mokutil --sb-state: {text}"
    if "SecureBoot disabled" in text or "not supported" in text or "doesn't support Secure Boot" in text:
        return False, f"mokutil --sb-state: {text}"
    return None, f"secure boot state: {text or 'unknown'}"


def script(repo_url: str, vmids: list[int]) -> str:
    repo = shlex.quote(repo_url.rstrip("/"))
    cts = " ".join(str(int(v)) for v in vmids)
    return f"""
. /etc/os-release 2>/dev/null; echo "os $ID $VERSION_ID"
dpkg-query -W -f='pkg ${{Package}} ${{Version}} ${{db:Status-Abbrev}}\\n' 'nvidia-*' 'libnvidia-*' libcuda1 \\
  cuda-keyring dkms 'proxmox-headers-*' 'pve-headers-*' proxmox-default-headers 2>/dev/null
idx=$(curl -fsSL --max-time 20 {repo}/debian$VERSION_ID/x86_64/Packages 2>&1) || {{
  echo "repo_error $(printf '%s' "$idx" | tail -n1)"; idx=""; }}
printf '%s\\n' "$idx" | awk '/^Package: /{{p=$2; if (p ~ /^nvidia-driver-pinning-/) print "pinidx", p}}
  /^Version: /{{if (p=="nvidia-driver-cuda") print "avail", $2}}'
echo "hostpin $([ -e {HOST_PIN_PATH} ] && sha256sum < {HOST_PIN_PATH} | cut -d' ' -f1)"
if command -v mokutil >/dev/null 2>&1; then echo "sb $(mokutil --sb-state 2>&1 | tr '\\n' ' ')"
elif [ -e {SB_EFIVAR} ]; then echo "sb efivar $(od -An -t u1 -j4 -N1 {SB_EFIVAR} | tr -d ' ')"; fi
if [ -e {DKMS_MOK} ] && command -v mokutil >/dev/null 2>&1; then
  echo "mok $(mokutil --test-key {DKMS_MOK} 2>&1 | head -n1)"; else echo "mok missing"; fi
for s in /etc/apt/sources.list.d/cuda-*.list; do [ -e "$s" ] && echo "source $s $(sha256sum < "$s" | cut -d' ' -f1)"; done
echo "keyring $([ -s {KEYRING_PATH} ] && echo 1 || echo 0)"
echo "blacklist $([ -e {BLACKLIST_PATH} ] && sha256sum < {BLACKLIST_PATH} | cut -d' ' -f1)"
echo "boot_id $(cat /proc/sys/kernel/random/boot_id)"
for d in /lib/modules/*/; do k=${{d%/}}; k=${{k##*/}}
  echo "headers $k $(apt-cache policy proxmox-headers-$k 2>/dev/null | awk '/Candidate:/ {{print $2}}')"
done
[ -r {STATE_PATH} ] && sed -n 's/^ *"\\([a-z_]*\\)": "\\([^"]*\\)".*/state \\1 \\2/p' {STATE_PATH}
for v in {cts}; do
  pct exec $v -- sh -c 'for f in /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.*.*; do [ -e "$f" ] && echo "lib ${{f##*.so.}}"; done
    for c in /usr/local/cuda-*/; do [ -d "$c" ] && c=${{c%/}} && echo "cuda ${{c##*cuda-}}"; done' 2>/dev/null |
    sed "s/^/ct/; s/^ctlib /ctlib $v /; s/^ctcuda /ctcuda $v /"
done
true
"""


def host_packages_fact(repo_url: str, vmids: list[int]) -> Fact[HostPackages]:
    return Fact("host.packages", script(repo_url, vmids), parse)
