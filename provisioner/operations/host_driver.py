"""The host's own NVIDIA driver, on request (``host.driver.manage: true``; ``provision host FILE``).

What the seed guide learned the hard way, as a plan:

1. ``repo``: NVIDIA's CUDA repository for the host's Debian release (cuda-keyring + source).
2. ``headers``: ``proxmox-headers-<kver>`` for the running kernel *and every installed newer
   one* (installed = a kernel package, not a leftover /lib/modules directory), dkms, and
   ``proxmox-default-headers`` (Proxmox's headers metapackage, so the kernel the next
   ``apt full-upgrade`` brings arrives with its headers and gets its DKMS build): without headers
   DKMS silently skips a kernel, and the next reboot into it comes up without a GPU.
3. ``check``: a trial DKMS build of the target version for each of those kernels, in a
   scratch tree (``apt-get download`` + ``dpkg-deb -x`` + ``dkms build --dkmstree --sourcetree``):
   nothing of the installed driver moves before every kernel builds.
4. ``pin``: NVIDIA's ``nvidia-driver-pinning-<ver>`` when the repository index has that per-version
   package, else our own preferences file (the container's, ``apt/provision-nvidia.pref.j2``);
   its own apt transaction, before the driver.
5. ``install``: ``nvidia-driver-cuda`` + the flavour's kernel-module package at exactly the
   version (open module through DKMS by default), ``dkms status`` verified for every kernel, held.
6. ``boot``: nouveau blacklisted (initramfs updated), nvidia_uvm at boot + the boot unit of the
   GPU step (operations/passthrough.py).
7. ``reboot`` (only with ``--reboot``): reboot, wait for a new boot id, verify the loaded module.
8. ``lockstep``: once the loaded module is the target, every managed GPU container's userspace
   is moved through the normal driver step (operations/driver.py), started ones and stopped ones.

Refused before anything changes: UEFI Secure Boot without DKMS's signing key enrolled as a MOK
(the module would be built, and then rejected at boot: the guide with the MOK steps is the
error), a version the repository lacks, a branch that does not run the host's GPUs (590+
dropped Maxwell/Pascal/Volta; the open module needs Turing+), a CUDA level below what a managed
container's toolkit needs, a kernel without installable headers.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import HostFile
from ..cuda_matrix import TOOLKITS, driver_supports, min_driver, vtuple
from ..driver_support import cuda_level, gpu_problem, resolve
from ..engine.context import ApplyContext
from ..engine.plan import Change
from ..errors import RefusedError, RemoteError, SSHError
from ..facts.base import gather
from ..facts.host_driver import (
    BLACKLIST_PATH,
    DKMS_MOK,
    HOST_PIN_PATH,
    MODULE_PACKAGE,
    STATE_PATH,
    HostPackages,
    host_packages_fact,
)
from ..facts.nvidia_ct import SOURCE_PATH_FMT
from ..facts.kernel import KERNEL, KernelModules, dkms_installed
from ..facts.nvidia import (
    BOOT,
    BOOT_UNIT_PATH,
    DEVICES,
    DRIVER,
    GPUS,
    BootSetup,
    DriverVersion,
    GpuInfo,
    cc_from_name,
)
from ..facts.pve import MARKER_TAG, has_marker
from .driver import keyring_script, keyring_url, pin_text, source_text
from .passthrough import _sha, boot_files, enable_script

STEP = "host.driver"
USERSPACE = ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1"]
BLACKLIST = ("# provision: the NVIDIA driver owns the GPUs; nouveau must not bind them first\n"
             "blacklist nouveau\noptions nouveau modeset=0\n")
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300"


# -- what is on the host ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ManagedCt:
    vmid: int
    hostname: str
    running: bool
    #: has /dev/nvidia* devN entries: its userspace must match the host module
    gpu: bool


@dataclass
class HostState:
    pkgs: HostPackages
    driver: DriverVersion
    gpus: list[GpuInfo]
    kernels: KernelModules
    boot: BootSetup | None
    cts: list[ManagedCt]
    pci_gpus: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def build_kernels(self) -> list[str]:
        """The running kernel and every installed newer one (what DKMS must build for)."""
        return [self.kernels.running, *self.kernels.newer()]


def managed_containers(pve: Any) -> list[ManagedCt]:
    """Every container on this node that `provision` created (tag + description marker)."""
    out = []
    for r in pve.get("/cluster/resources", type="vm") or []:
        tags = str(r.get("tags", "")).replace(",", ";").split(";")
        if r.get("type") != "lxc" or MARKER_TAG not in tags or r.get("node", pve.node) != pve.node:
            continue
        vmid = int(r["vmid"])
        config = pve.get(pve.ct(vmid, "config")) or {}
        if not has_marker(config):
            continue
        gpu = any(k.startswith("dev") and "/dev/nvidia" in str(v) for k, v in config.items())
        out.append(ManagedCt(vmid, str(config.get("hostname", r.get("name", ""))), r.get("status") == "running", gpu))
    return sorted(out, key=lambda c: c.vmid)


_LSPCI_SCRIPT = ("command -v lspci >/dev/null 2>&1 || exit 0\n"
                 "lspci -d 10de: -nn 2>/dev/null | grep -E '\\[03(00|02)\\]' | sed 's/^/pci /'")


def _parse_pci(output: str, code: int) -> list[tuple[str, str | None]]:
    """``01:00.0 VGA compatible controller [0300]: NVIDIA Corporation AD102 [GeForce RTX 4090] [10de:2684]
    (rev a1)`` → ("NVIDIA GeForce RTX 4090", "8.9"): the GPUs of a host whose driver is not loaded yet."""
    gpus = []
    for line in output.splitlines():
        if not line.startswith("pci ") or "NVIDIA" not in line:
            continue
        desc = re.sub(r"\s*\[10de:[0-9a-f]{4}\]|\s*\(rev [0-9a-f]+\)", "", line.split("]: ", 1)[-1])
        model = re.findall(r"\[([^\]]+)\]", desc)
        name = ("" if model and model[-1].startswith("NVIDIA ") else "NVIDIA ") + model[-1] if model else desc
        gpus.append((name, cc_from_name(name)))
    return gpus


def gather_state(cfg: HostFile, conn: Any) -> HostState:
    """API: the managed containers; SSH: everything else, in one round trip."""
    from ..facts.base import Fact

    cts = managed_containers(conn.pve)
    pkgs_fact = host_packages_fact(cfg.driver.repo_url, [c.vmid for c in cts if c.running and c.gpu])
    pci = Fact("host.pci_gpus", _LSPCI_SCRIPT, _parse_pci)
    facts = gather(conn.ssh, [DRIVER, GPUS, DEVICES, BOOT, KERNEL, pkgs_fact, pci], vmid=None, ct_running=False)
    return HostState(pkgs=facts[pkgs_fact.name], driver=facts[DRIVER.name], gpus=facts.get(GPUS.name) or [],
                     kernels=facts[KERNEL.name], boot=facts.get(BOOT.name), cts=cts,
                     pci_gpus=facts.get(pci.name) or [])


# -- the plan -------------------------------------------------------------------------------------------

@dataclass
class HostPlan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target: str | None = None
    installed: str | None = None
    loaded: str | None = None
    reboot_required: bool = False
    #: vmid -> (container userspace now, after)
    lockstep: dict[int, tuple[str | None, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "installed": self.installed, "loaded": self.loaded,
                "reboot_required": self.reboot_required,
                "lockstep": {str(k): {"before": b, "after": a} for k, (b, a) in self.lockstep.items()},
                "planned": [c.as_dict() for c in self.changes], "notes": self.notes}


class DriverRefused(RefusedError):
    """A refused host driver change: which setting it concerns, and the command output when there is one."""

    def __init__(self, message: str, *, key: str | None = None, output: str | None = None, **kw: Any) -> None:
        super().__init__(f"{key}: {message}" if key else message, **kw)
        self.key = key
        self.output = output

    def __str__(self) -> str:
        text = super().__str__()
        if self.output:
            tail = "\n".join(self.output.rstrip().splitlines()[-12:])
            text += "\n  output (tail):\n" + "\n".join("    " + ln for ln in tail.splitlines())
        return text


def _refuse(msg: str, fix: str, key: str = "host.driver.version") -> DriverRefused:
    return DriverRefused(msg, step=STEP, fix=f"{fix} (the host's driver was not touched)", key=key)


def check_gpus(st: HostState, target: str, flavour: str) -> None:
    gpus = [(g.name, g.compute_cap) for g in st.gpus] or st.pci_gpus
    problems = [p for p in (gpu_problem(target, flavour, n, cc) for n, cc in gpus) if p]
    if problems:
        raise _refuse(f"driver {target} ({flavour}) does not support this host's GPUs: " + "; ".join(problems),
                      "choose a branch that supports every GPU (580 is the last for Pascal/Volta)")


def check_cuda(cfg: HostFile, st: HostState, target: str) -> None:
    needs: dict[str, str] = {}
    for vmid, ct in st.pkgs.cts.items():
        for tk in ct.cuda:
            needs.setdefault(tk, f"CT {vmid}")
    if cfg.cuda.toolkit != "auto":
        needs.setdefault(cfg.cuda.toolkit, "cuda.toolkit of this file")
    short = [(tk, who) for tk, who in needs.items() if tk in TOOLKITS and not driver_supports(tk, target)]
    if short:
        level = cuda_level(target) or "none known"
        what = "; ".join(f"{who} uses CUDA {tk} (needs driver ≥ {min_driver(tk)})" for tk, who in short)
        raise _refuse(f"driver {target} gives CUDA {level}, below what the managed containers need: {what}",
                      "choose a newer driver, or move those containers to an older toolkit first")


def check_secure_boot(pk: HostPackages) -> None:
    """A DKMS-built module loads under Secure Boot only when signed by an enrolled key: refuse, with
    the MOK enrolment, before anything changes (else the host reboots into no NVIDIA module)."""
    if not pk.secure_boot or pk.mok_enrolled:
        return
    # dkms 3.0.10 signs with /var/lib/dkms/mok.key + mok.pub and creates them with this very openssl
    # line when they are missing (dkms.in v3.0.10 3f72c9b0:953-970); mokutil's --import queues the key
    # for MokManager at the next boot, --test-key then says "... is already enrolled"
    # (lcp/mokutil src/mokutil.c 9ae73db1:823, 1589)
    make_key = ("" if pk.mok_enrolled is False else
                "     mkdir -p /var/lib/dkms && openssl req -new -x509 -nodes -days 36500 -subj '/CN=DKMS module "
                "signing key' -newkey rsa:2048 -keyout /var/lib/dkms/mok.key -outform DER -out /var/lib/dkms/mok.pub\n")
    steps = (
        "enrol DKMS's signing key as a Machine Owner Key once, on the host's console:\n"
        + (f"  1. create it (what dkms would do at its first build):\n{make_key}" if make_key else
           f"  1. the key exists ({DKMS_MOK}) but is not enrolled\n")
        + f"  2. mokutil --import {DKMS_MOK}   (choose a one-time password)\n"
        "  3. reboot; in the blue MokManager screen: Enroll MOK → Continue → Yes → the password → Reboot\n"
        f"  4. mokutil --test-key {DKMS_MOK} must say 'is already enrolled'; then run `provision host` again\n"
        "  (or turn Secure Boot off in the firmware setup)")
    raise DriverRefused(
        "UEFI Secure Boot is on and DKMS's signing key is " + ("not enrolled" if pk.mok_enrolled is False else
                                                              "not created yet") +
        ": the kernel would refuse the NVIDIA module DKMS builds ('Key was rejected by service'), and the host "
        "would come back from the reboot without a GPU", key="host.driver.manage", step=STEP,
        fix=steps + " (the host's driver was not touched)", output=pk.secure_boot_evidence or None)


def plan(cfg: HostFile, st: HostState, *, reboot: bool = False,
         converge_ct: Callable[[ApplyContext, ManagedCt, str], None] | None = None) -> HostPlan:
    hd = cfg.host.driver
    hp = HostPlan(loaded=st.driver.version)
    if not hd.manage:
        hp.notes.append("host.driver.manage is false: provision never changes the host's driver")
        return hp
    pk = st.pkgs
    distro = pk.distro
    if distro is None:
        raise _refuse(f"the host runs {pk.os_id or '?'} {pk.os_version or '?'}; NVIDIA's repository has Debian 12 "
                      "and 13 only", "manage the driver by hand on this host", key="host.driver.manage")
    check_secure_boot(pk)
    if pk.repo:
        target = resolve(hd.version, list(pk.repo))
        if target is None:
            branch = hd.version.removeprefix("latest-").split(".")[0]
            same = sorted((v for v in pk.repo if v.startswith(branch + ".")), key=vtuple)
            raise _refuse(f"NVIDIA's repository ({cfg.driver.repo_url}/{distro}) has no driver {hd.version}"
                          f" (branch {branch}: {', '.join(same) or 'none'})",
                          f"use one of: {', '.join(sorted(pk.repo, key=vtuple))}")
    else:
        raise _refuse(f"cannot read NVIDIA's repository index ({cfg.driver.repo_url}/{distro}/x86_64/Packages): "
                      f"{pk.repo_error}", "check that the host reaches driver.repo_url", key="driver.repo_url")
    full = pk.repo[target]
    installed, flavour_now = pk.driver
    hp.target, hp.installed = target, installed
    check_gpus(st, target, hd.flavour)
    check_cuda(cfg, st, target)
    kernels = st.build_kernels
    no_headers = [k for k in kernels if not pk.headers(k) and not pk.headers_candidate.get(k)]
    if no_headers:
        raise _refuse(f"no proxmox-headers package is installable for kernel(s) {', '.join(no_headers)}: DKMS could "
                      "not build the module for them and a reboot into one would come up without the GPU",
                      "enable the Proxmox repository that has the headers, or remove that kernel")
    module_pkg = MODULE_PACKAGE[hd.flavour]
    other_pkg = MODULE_PACKAGE["proprietary" if hd.flavour == "open" else "open"]
    t = "host"

    source = source_text(cfg.driver.repo_url, distro)
    source_path = SOURCE_PATH_FMT.format(distro=distro)
    if not pk.keyring or pk.sources.get(source_path) != _sha(source) or set(pk.sources) - {source_path}:
        hp.changes.append(Change(STEP, "write", t, f"NVIDIA CUDA apt repository ({distro}) on the host",
                                 lambda a: add_repository(a, distro, source, source_path),
                                 diff={"source": (pk.sources.get(source_path) and "differs",
                                                  f"{cfg.driver.repo_url.rstrip('/')}/{distro}/x86_64/")}))
    for left in st.kernels.leftovers:
        hp.notes.append(f"/lib/modules/{left} is left from a removed kernel (no kernel package installs it): "
                        "ignored; remove the directory when DKMS no longer needs it")
    missing = [f"proxmox-headers-{k}" for k in kernels if not pk.headers(k)]
    if not pk.installed("dkms"):
        missing.append("dkms")
    if not pk.installed("proxmox-default-headers"):
        missing.append("proxmox-default-headers")
    if missing:
        hp.changes.append(Change(STEP, "install", t, f"kernel headers and dkms ({', '.join(missing)})",
                                 lambda a: install_headers(a, missing),
                                 diff={m: (None, "installed") for m in missing}))
    family = {n: p for n, p in pk.packages.items() if p.installed and
              (n in USERSPACE or n in MODULE_PACKAGE.values())}
    wrong = {n: (p.version + ("" if p.state == "ii" else f" ({p.state})"), full)
             for n, p in family.items() if n != other_pkg and (p.version != full or p.state != "ii")}
    for n in [*USERSPACE, module_pkg]:
        if n not in family:
            wrong[n] = (None, full)
    if other_pkg in family:
        wrong[other_pkg] = (family[other_pkg].version, None)
    moving = bool(wrong)
    if moving:
        hp.changes.append(Change(STEP, "check", t, f"trial DKMS build of {target} ({hd.flavour}) for "
                                 f"{', '.join(kernels)}, in a scratch tree",
                                 lambda a: trial_build(a, module_pkg, target, full, kernels),
                                 diff={f"dkms build {k}": (None, "must succeed") for k in kernels}))
    # NVIDIA's per-version pinning package when its index has one; else our own file (NVIDIA documents
    # branch packages, nvidia-driver-pinning-<branch>, which would let the driver move within the branch)
    pinning = f"nvidia-driver-pinning-{target}"
    ours = pin_text(target, [*USERSPACE, module_pkg])
    if pinning in pk.pinning_index:
        stale = [p for p in pk.pinning if p != pinning]
        if pinning not in pk.pinning or stale or pk.pin_sha256:
            hp.changes.append(Change(STEP, "write", t, f"pin the host's NVIDIA driver packages to {target} ({pinning})",
                                     lambda a: install_pin(a, pinning, stale, remove_ours=bool(pk.pin_sha256)),
                                     diff={pinning: (None, "installed"), **{p: ("installed", None) for p in stale},
                                           **({HOST_PIN_PATH: ("ours", None)} if pk.pin_sha256 else {})}))
    else:
        stale = list(pk.pinning)
        if pk.pin_sha256 != _sha(ours) or stale:
            hp.changes.append(Change(STEP, "write", t, f"pin the host's NVIDIA driver packages to {target} "
                                     f"({HOST_PIN_PATH}: the index has no {pinning})",
                                     lambda a: write_pin(a, ours, stale),
                                     diff={HOST_PIN_PATH: (pk.pin_sha256 and "other pin", f"version {target}-*"),
                                           **{p: ("installed", None) for p in stale}}))
    if moving:
        verb = "install" if installed is None else ("downgrade" if vtuple(target) < vtuple(installed) else "upgrade")
        hp.changes.append(Change(STEP, verb, t, f"NVIDIA driver {target} ({hd.flavour} kernel module through DKMS)",
                                 lambda a: install_driver(a, target, full, module_pkg, other_pkg, kernels,
                                                          installed, flavour_now, hd.flavour),
                                 diff=wrong))
    held = [n for n in [*USERSPACE, module_pkg] if n in family and not family[n].held]
    if held and not moving:
        hp.changes.append(Change(STEP, "write", t, f"hold the driver packages ({', '.join(held)})",
                                 lambda a: _run(a, f"apt-mark hold {' '.join(held)} >/dev/null", "holding"),
                                 diff={n: ("not held", "held") for n in held}))
    if pk.blacklist_sha256 != _sha(BLACKLIST):
        hp.changes.append(Change(STEP, "write", t, "blacklist nouveau and update the initramfs of every kernel",
                                 write_blacklist, diff={BLACKLIST_PATH: (pk.blacklist_sha256 and "differs", "written")}))
    boot = st.boot
    if boot is not None:
        files = boot_files(boot.nvidia_modprobe or "/usr/bin/nvidia-modprobe")
        stale_files = [p for p, txt in files.items()
                       if _sha(txt) != (boot.unit_sha256 if p == BOOT_UNIT_PATH else boot.modules_conf_sha256)]
        if stale_files or not boot.unit_enabled:
            def boot_unit(a: ApplyContext, files: dict[str, str] = files, systemd: bool = boot.systemd) -> None:
                for path, text in files.items():
                    a.ssh.put(text.encode(), path, mode="0644")
                a.ssh.run(enable_script(systemd)).check("enabling the nvidia_uvm boot unit", step=STEP)
            hp.changes.append(Change(STEP, "write", t, "nvidia_uvm at boot (modules-load.d + the boot unit)",
                                     boot_unit, diff={p: (None, "written") for p in stale_files}))

    loaded = st.driver.version
    hp.reboot_required = loaded != target
    if hp.reboot_required:
        hp.notes.append(
            f"REBOOT REQUIRED: the host runs {loaded or 'no NVIDIA module'}; {target} loads only after a reboot "
            "(or stop every GPU container, then `rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && modprobe nvidia "
            "&& modprobe nvidia_uvm`). " + ("--reboot was given: provision reboots the host, waits for it and "
                                             "verifies." if reboot else
                                             "provision does not reboot on its own: pass --reboot, or reboot and run "
                                             "`provision host FILE` again; it then moves the containers in lockstep."))
    gpu_cts = [c for c in st.cts if c.gpu]
    for c in gpu_cts:
        libs = pk.cts.get(c.vmid).libs if c.vmid in pk.cts else []
        if libs != [target]:
            hp.lockstep[c.vmid] = (",".join(libs) or ("stopped" if not c.running else None), target)
    if hp.reboot_required and reboot:
        hp.changes.append(Change(STEP, "reboot", t, f"reboot the host, wait for it, verify that {target} is loaded",
                                 lambda a: reboot_and_verify(a, pk.boot_id, target, cfg.host.driver.reboot_timeout),
                                 diff={"loaded module": (loaded, target)}))
    if hp.lockstep and (not hp.reboot_required or reboot) and converge_ct is not None:
        hp.changes.append(Change(STEP, "lockstep", t,
                                 f"move the userspace of {len(hp.lockstep)} managed container(s) to {target}",
                                 lambda a: lockstep(a, gpu_cts, target, converge_ct),
                                 diff={f"ct {v}": ba for v, ba in hp.lockstep.items()}))
    elif hp.lockstep and hp.reboot_required:
        hp.notes.append(f"after the reboot, {len(hp.lockstep)} managed container(s) move to {target} in lockstep: "
                        + ", ".join(f"CT {v}" for v in hp.lockstep))
    if installed and installed != target:
        hp.notes.append(f"{installed} stays installable: set host.driver.version: \"{installed}\" to go back "
                        "(same checks, same plan)")
    return hp


# -- applying -------------------------------------------------------------------------------------------

def _run(a: ApplyContext, script: str, what: str, *, fix: str | None = None, timeout: float = 3600) -> str:
    result = a.ssh.run("bash -s", stdin=("set -e\n" + script).encode(), timeout=timeout,
                       on_line=a.log)
    if not result.ok:
        raise RemoteError(f"{what} failed (exit {result.exit_code})", command=what, exit_code=result.exit_code,
                          output=(result.stdout + result.stderr)[-3000:], host=a.ssh.target.host, step=STEP, fix=fix)
    return result.stdout


def add_repository(a: ApplyContext, distro: str, source: str, source_path: str) -> None:
    url = keyring_url(a.cfg, distro)
    a.status("adding NVIDIA's apt repository on the host")
    _run(a, keyring_script(url, source_path), "installing cuda-keyring on the host",
         fix=f"check that the host reaches {url}")
    a.ssh.put(source.encode(), source_path, mode="0644")
    _run(a, f"{APT} update", "apt-get update")


def install_headers(a: ApplyContext, packages: list[str]) -> None:
    a.status("installing kernel headers and dkms")
    _run(a, f"{APT} update >/dev/null\n{APT} install {' '.join(shlex.quote(p) for p in packages)}",
         "installing kernel headers", fix="check the Proxmox repository (pve-no-subscription or enterprise)")


def trial_build(a: ApplyContext, module_pkg: str, version: str, full: str, kernels: list[str]) -> None:
    """Build the target module for every kernel in a scratch tree; nothing installed changes."""
    a.status(f"trial DKMS build of {version} for {len(kernels)} kernel(s)")
    ks = " ".join(shlex.quote(k) for k in kernels)
    result = a.ssh.run("bash -s", stdin=f"""
set -e
tmp=$(mktemp -d /tmp/provision-dkms.XXXXXX); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
{APT} update >/dev/null
apt-get -q download {shlex.quote(module_pkg)}={shlex.quote(full)}
dpkg-deb -x {shlex.quote(module_pkg)}_*.deb src
for k in {ks}; do
  echo "== trial build of nvidia {version} for $k"
  dkms build -m nvidia -v {shlex.quote(version)} -k "$k" --dkmstree "$tmp/tree" --sourcetree "$tmp/src/usr/src" \\
    || {{ rc=$?; echo "TRIAL_FAILED $k $rc"; exit 10; }}
done
""".encode(), timeout=3600, on_line=a.log)
    if not result.ok:
        failed = next((ln.split()[1] for ln in result.stdout.splitlines() if ln.startswith("TRIAL_FAILED")), None)
        where = f"kernel {failed}" if failed else "a kernel"
        newer = failed is not None and failed != kernels[0]
        raise DriverRefused(
            f"DKMS cannot build NVIDIA {version} for {where}" + (" (installed, newer than the running one: the "
                                                                  "next reboot would lose the GPU)" if newer else ""),
            key="host.driver.version", output=(result.stdout + result.stderr)[-2500:],
            step=STEP, fix="choose a driver version that supports that kernel (a newer branch), or remove/pin the "
                           "kernel (proxmox-boot-tool kernel pin); the installed driver was not touched")


def install_pin(a: ApplyContext, pinning: str, stale: list[str], *, remove_ours: bool = False) -> None:
    a.status("pinning the host's driver version")
    remove = " ".join(shlex.quote(p) for p in stale)
    _run(a, (f"rm -f {HOST_PIN_PATH}\n" if remove_ours else "") + (f"{APT} remove {remove}\n" if stale else "")
         + f"{APT} update >/dev/null\n{APT} install {shlex.quote(pinning)}", "installing the driver pin")


def write_pin(a: ApplyContext, text: str, stale: list[str]) -> None:
    """Our own preferences file: the driver family at exactly the target version (priority 1001)."""
    a.status("pinning the host's driver version")
    if stale:
        _run(a, f"{APT} remove {' '.join(shlex.quote(p) for p in stale)}", "removing other driver pins")
    a.ssh.put(text.encode(), HOST_PIN_PATH, mode="0644")


def install_driver(a: ApplyContext, version: str, full: str, module_pkg: str, other_pkg: str, kernels: list[str],
                   previous: str | None, previous_flavour: str | None, flavour: str) -> None:
    a.status(f"installing the NVIDIA driver {version} on the host")
    names = [*USERSPACE, module_pkg]
    spec = " ".join(f"{n}={shlex.quote(full)}" for n in names)
    _run(a, f"""
apt-mark unhold {' '.join(names)} {other_pkg} >/dev/null 2>&1 || true
{APT} --allow-downgrades --allow-change-held-packages install {spec} {shlex.quote(other_pkg)}- 2>&1 ||
  {{ rc=$?; echo "the loaded module is untouched; dkms status:"; dkms status; exit $rc; }}
apt-mark hold {' '.join(names)} >/dev/null
""", f"installing the NVIDIA driver {version}",
         fix="read the DKMS output above; the loaded module keeps running until a reboot")
    status = a.ssh.run("dkms status").stdout
    missing = [k for k in kernels if not dkms_installed(status, version, k)]
    if missing:
        raise RemoteError(f"dkms status shows no installed nvidia/{version} for {', '.join(missing)}",
                          output=status, step=STEP, fix="dkms autoinstall -k KERNEL on the host, then re-run")
    record = {"version": version, "flavour": flavour, "previous": previous or "", "previous_flavour":
              previous_flavour or "", "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    a.ssh.run(f"mkdir -p {shlex.quote(STATE_PATH.rsplit('/', 1)[0])}")
    a.ssh.put(json.dumps(record, indent=1).encode(), STATE_PATH)


def write_blacklist(a: ApplyContext) -> None:
    a.status("blacklisting nouveau")
    a.ssh.put(BLACKLIST.encode(), BLACKLIST_PATH)
    _run(a, "update-initramfs -u -k all", "update-initramfs")


def reboot_and_verify(a: ApplyContext, boot_id: str, target: str, timeout: float) -> None:
    """Reboot, wait until the host is back *after* the reboot, verify the loaded module.

    "After" is told by a marker in /run (a tmpfs: every boot starts with it empty), written
    in the same command that schedules the reboot, so a reconnect that wins the race against
    the reboot itself is never taken for the host coming back.
    """
    marker = f"/run/provision-reboot-{secrets.token_hex(6)}"
    a.status("rebooting the host")
    try:
        a.ssh.run(f"touch {marker} && nohup sh -c 'sleep 1; reboot' >/dev/null 2>&1 &", timeout=30) \
            .check("scheduling the reboot", step=STEP)
    except SSHError:
        pass  # the connection may drop under us: that is the reboot
    a.ssh.close()
    deadline = time.monotonic() + timeout
    time.sleep(3)
    back = False
    while time.monotonic() < deadline:
        try:
            r = a.ssh.run(f"[ -e {marker} ] && echo pending || echo rebooted", timeout=20)
            if r.ok and r.stdout.strip() == "rebooted":
                back = True
                break
        except SSHError:
            a.ssh.close()
        a.status("waiting for the host to come back")
        time.sleep(2)
    if not back:
        raise RemoteError(f"the host did not come back within {timeout:.0f}s of the reboot", step=STEP,
                          fix="check the host's console; then run `provision host FILE` again")
    facts = gather(a.ssh, [DRIVER, DEVICES], vmid=None, ct_running=False)
    loaded = facts[DRIVER.name].version
    if loaded != target:
        raise RemoteError(f"after the reboot the host runs {loaded or 'no NVIDIA module'}, not {target}", step=STEP,
                          fix="check `dkms status` and `journalctl -b -k | grep -i nvidia` on the host")
    if not facts[DEVICES.name].has("/dev/nvidia-uvm"):
        a.log("note: /dev/nvidia-uvm is missing after the reboot (nothing loaded nvidia_uvm)")


def lockstep(a: ApplyContext, cts: list[ManagedCt], target: str,
             converge_ct: Callable[[ApplyContext, ManagedCt, str], None]) -> None:
    for ct in cts:
        a.status(f"CT {ct.vmid}: moving the NVIDIA userspace to {target}")
        converge_ct(a, ct, target)
