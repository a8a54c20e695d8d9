"""NVIDIA driver userspace in the container, at exactly the host's module version.

Order of work (each its own change, each idempotent):

1. ``repo``: NVIDIA's keyring (the ``cuda-keyring`` package, fetched with apt's own
   downloader, so the container needs no curl) and a source for ``driver.repo_url``.
2. ``pin``: ``/etc/apt/preferences.d/provision-nvidia`` (from templates/apt/) plus NVIDIA's
   ``nvidia-driver-pinning-<ver>`` where the repository has it, in an apt transaction of
   its own, *before* any driver package is touched.
3. ``install``: release holds, ``apt-get -s`` first and refuse a plan with a dkms or
   kernel-module package, install with ``--no-install-recommends --allow-downgrades``,
   hold, then verify the library suffixes and ``nvidia-smi``.

Which packages are "the driver" (the family that moves with the host version) is decided by
*version*, not by name: NVIDIA's repository has packages with the driver's prefixes and their
own versions (nvidia-container-toolkit 1.19.0-1, libnvidia-container1, libnvidia-egl-gbm1
1.1.3-1, libnvidia-egl-xcb1 1:1.0.5-1, …), and packages of the driver outside any short name
list (libcudadebugger1, firmware-nvidia-gsp, libnvidia-ptxjitcompiler1, libnvidia-nvvm4,
nvidia-modprobe, nvidia-persistenced, nvidia-kernel-support), see sim/repos/nvidia_graph.py
[L595]. So: the pin covers broad name globs but only at *the* version (``Pin: version
<ver>-*``: a package that has no such version is not affected by it), and an installed package
is family when its version is a driver version (``NNN.N[.N]-rev``).

Settled against REFERENCE §2: its pin example ``Pin: version 595.71.05-1*`` assumed Debian
revision 1; NVIDIA's own pinning packages pin ``version <ver>-*`` (sim/repos/nvidia_graph.py
[PIN]), and so do we. Its "never install in a CT" list is kept for what needs a kernel module
(dkms, ``*-dkms``, nvidia-kernel-source, nvidia-open, cuda-drivers*, linux-*, proxmox-*), not for
``nvidia-kernel-*`` as a whole: nvidia-kernel-support is modprobe configuration the userspace
depends on. The per-version ``nvidia-driver-pinning-<ver>`` exists for some releases only, so
it is installed when the index has it and our file does the pinning always.

Converged means: keyring + source as rendered, pin file as rendered, every configured
package installed at ``<ver>-*`` and held, every other installed family package at ``<ver>``,
the libraries carry ``<ver>``. Then: no change.
"""

from __future__ import annotations

import hashlib
import re
import shlex

from ..config.schema import HostFile
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError, RefusedError, RemoteError
from ..facts.guard import GUARD
from ..facts.nvidia import DRIVER, GPUS
from ..facts.nvidia_ct import (DRIVER_CT, DRIVER_GLOBS, KEYRING_PATH, LIB_DIR, PIN_PATH, SOURCE_PATH_FMT,
                               DriverIndex, DriverUserspace, driver_index_fact)
from ..templating import render
from . import apt
from .passthrough import selected_gpus

STEP = "driver"
KEYRING_DEB = "cuda-keyring_1.1-1_all.deb"
#: names NVIDIA's driver packages use (globs as apt_preferences allows). Broad on purpose: the pin
#: is a *version* pin, so a package with these prefixes but its own versions is not affected
PIN_GLOBS = DRIVER_GLOBS
#: an installed package of the driver family has a driver version: 580.95.05-1, 595.71.05-1, 1:535.247.01-2
DRIVER_VERSION = re.compile(r"^(\d+:)?\d{3}\.\d{1,3}(\.\d{1,3})?-[^-]+$")
#: what needs a kernel module and so never lands in a container (nvidia-kernel-support is
#: userspace: modprobe configuration, and NVIDIA's userspace depends on it)
FORBIDDEN = re.compile(r"^(dkms|.+-dkms|nvidia-kernel-source|nvidia-open|cuda-drivers(-\d+)?|"
                       r"linux-.+|proxmox-.+|pve-(kernel|headers)-.+|.+-kmod(-.+)?)$")
#: the dpkg-query patterns for the family (the container facts use the same)
FAMILY_QUERY = " ".join(f"'{g}'" for g in DRIVER_GLOBS)
APT = "apt_get -y"  # the apt prelude: waits for dpkg locks, recovers dpkg, non-interactive, confold


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _named_like_driver(name: str) -> bool:
    return any(re.fullmatch(re.escape(g).replace(r"\*", ".*"), name) for g in PIN_GLOBS)


def in_family(name: str, version: str) -> bool:
    """A package of the driver family (pinned, moved with the host version): a driver-like name at a
    driver version. Pinning packages and cuda-keyring are not: they have versions of their own."""
    if name.startswith("nvidia-driver-pinning-") or name == "cuda-keyring":
        return False
    return _named_like_driver(name) and DRIVER_VERSION.match(version) is not None


def pin_text(version: str, packages: list[str]) -> str:
    names = list(dict.fromkeys(PIN_GLOBS + [p for p in packages if not _named_like_driver(p)]))
    return render("apt/provision-nvidia.pref.j2", version=version, packages=names)


def source_text(repo_url: str, distro: str) -> str:
    return render("apt/cuda.list.j2", repo_url=repo_url.rstrip("/"), distro=distro, keyring=KEYRING_PATH)


def forbidden_packages(apt_simulation: str) -> list[str]:
    """Packages an ``apt-get -s`` run would install (``Inst name ...``) that are kernel modules."""
    names = [ln.split()[1] for ln in apt_simulation.splitlines() if ln.startswith("Inst ") and len(ln.split()) > 1]
    return [n for n in names if FORBIDDEN.match(n)]


def at_version(version: str, pkg_version: str) -> bool:
    return pkg_version.split(":", 1)[-1].startswith(version + "-")


def host_version(ctx: PlanContext) -> str | None:
    """The loaded host module version when the container gets GPUs, else None."""
    if not ctx.cfg.driver.manage_userspace or not selected_gpus(ctx):
        return None
    return ctx.fact(DRIVER.name).version


INDEX = "ct.driver_index"


def not_in_repository(ctx: PlanContext, version: str) -> str | None:
    """Why the container cannot get ``version`` from NVIDIA's repository, or None (it can, or unknown).

    Checked at plan time, as `provision host` checks the host's index: a version the repository lacks
    would otherwise get a pin that matches nothing, holds released, the newest driver installed and a
    verify failure that names the wrong cause.
    """
    index: DriverIndex | None = ctx.fact(INDEX)
    if index is None or not index.known:
        return None
    missing = [p for p in ctx.cfg.driver.packages if not index.has(p, version)]
    if not missing:
        return None
    offered = index.driver_versions(missing[0])
    branch = [v for v in offered if v.split(".")[0] == version.split(".")[0]]
    return (f"NVIDIA's repository ({ctx.cfg.driver.repo_url.rstrip('/')}) has no {', '.join(missing)} {version}, "
            f"the host's loaded driver; it has {', '.join(offered[-6:]) or 'no version'}"
            + (f" (branch {version.split('.')[0]}: {', '.join(branch)})" if branch and branch != offered[-6:] else ""))


def repository_fix(ctx: PlanContext, version: str) -> str:
    index: DriverIndex | None = ctx.fact(INDEX)
    offered = index.driver_versions(ctx.cfg.driver.packages[0]) if index else []
    branch = [v for v in offered if v.split(".")[0] == version.split(".")[0]]
    pick = (branch or offered or ["<a version it has>"])[-1]
    return (f"put a driver the repository has on the host (with `provision host`: host.driver.version: \"{pick}\", "
            f"then reboot), or point driver.repo_url at a mirror that has {version}, or set "
            "driver.manage_userspace: false and install the userspace yourself")


class DriverStep:
    name = STEP
    facts = [DRIVER, GPUS, DRIVER_CT, GUARD]  # host facts too: `--only driver` must see the GPUs

    def __init__(self, cfg: HostFile | None = None) -> None:
        if cfg is not None:  # what NVIDIA's repository offers, checked before a pin or install is planned
            self.facts = [*DriverStep.facts, driver_index_fact(cfg.driver.repo_url, list(cfg.driver.packages))]

    def plan(self, ctx: PlanContext) -> list[Change]:
        version = host_version(ctx)
        if version is None:
            if not ctx.cfg.driver.manage_userspace:
                ctx.notes.append("driver.manage_userspace is false: the container's NVIDIA userspace is yours")
            return []
        ct: DriverUserspace | None = ctx.fact(DRIVER_CT.name)
        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
        packages = list(ctx.cfg.driver.packages)
        if ct is not None and ct.distro is None:
            raise ConfigError(f"the container runs {ct.os_id or '?'} {ct.os_version or '?'}; NVIDIA's repository "
                              "has Debian 12 and 13 only", key="container.template",
                              fix="use a debian-12-standard or debian-13-standard template")
        distro = ct.distro if ct else "debian12"
        assert distro is not None
        source = source_text(ctx.cfg.driver.repo_url, distro)
        pin = pin_text(version, packages)
        pinning = f"nvidia-driver-pinning-{version}"
        changes: list[Change] = []
        source_path = SOURCE_PATH_FMT.format(distro=distro)
        if ct is None or not ct.keyring or ct.sources.get(source_path) != _sha(source) or \
                set(ct.sources) - {source_path}:
            changes.append(Change(STEP, "write", target, f"NVIDIA CUDA apt repository ({distro})",
                                  lambda a: add_repository(a, distro, source, source_path),
                                  diff={"source": (ct and ct.sources.get(source_path) and "differs",
                                                   f"{ctx.cfg.driver.repo_url.rstrip('/')}/{distro}/x86_64/")}))
        want_pinning = ct is not None and pinning in ct.pinning_available
        stale_pinning = [p for p in (ct.pinning_packages if ct else []) if p != pinning]
        if ct is None or ct.pin_sha256 != _sha(pin) or stale_pinning or \
                (want_pinning and pinning not in ct.pinning_packages):
            changes.append(Change(STEP, "write", target, f"pin NVIDIA driver packages to {version}",
                                  lambda a: install_pin(a, version),
                                  diff={PIN_PATH: (ct and ct.pin_sha256 and "other pin", f"version {version}-*"),
                                        **({p: ("installed", None) for p in stale_pinning})},
                                  # the apt lists now know NVIDIA's repo: the CUDA step's choice depends on it
                                  refresh=True))
        wrong = self._wrong_packages(ct, version, packages)
        if wrong or any(c.summary.startswith("pin ") for c in changes):
            why = not_in_repository(ctx, version)
            if why:
                raise RefusedError(why, vmid=ctx.vmid, step=STEP, fix=repository_fix(ctx, version)
                                   + " (the container was not touched)")
        if wrong:
            changes.append(Change(STEP, "install", target,
                                  f"NVIDIA driver userspace {version} ({', '.join(sorted(wrong))})",
                                  lambda a: install_userspace(a, version, packages), diff=wrong))
        from .guard import ct_changes  # the guard renders this module's transaction (import cycle)
        return changes + ct_changes(ctx)

    @staticmethod
    def _wrong_packages(ct: DriverUserspace | None, version: str, packages: list[str]
                        ) -> dict[str, tuple[object, object]]:
        if ct is None:
            return {p: (None, f"{version} (held)") for p in packages}
        wrong: dict[str, tuple[object, object]] = {}
        for name in packages:
            p = ct.installed(name)
            if p is None or not at_version(version, p.version) or not p.held:
                wrong[name] = (p and f"{p.version}{' (held)' if p.held else ''}", f"{version} (held)")
        for name, p in ct.packages.items():
            if p.installed and in_family(name, p.version) and not at_version(version, p.version) and name not in wrong:
                wrong[name] = (p.version, version)
        if "libnvidia-ml1" in packages and ct.nvml_libs != [version]:
            wrong.setdefault("libnvidia-ml.so", (",".join(ct.nvml_libs) or None, version))
        if "libcuda1" in packages and ct.cuda_libs != [version]:
            wrong.setdefault("libcuda.so", (",".join(ct.cuda_libs) or None, version))
        return wrong


# -- applying ----------------------------------------------------------------------------------------

def _run(actx: ApplyContext, script: str, what: str, *, fix: str | None = None) -> str:
    result = actx.ct().run(apt.prelude_for(actx.cfg) + "set -e\n" + script, on_line=apt.on_line(actx))
    if not result.ok:
        raise RemoteError(f"{what} failed (exit {result.exit_code})", command=what, exit_code=result.exit_code,
                          output=result.stderr or result.stdout, vmid=actx.vmid, step=STEP, fix=fix)
    return result.stdout


def keyring_url(cfg: HostFile, distro: str) -> str:
    return f"{cfg.driver.repo_url.rstrip('/')}/{distro}/x86_64/{KEYRING_DEB}"


def keyring_script(url: str, source_path: str, *, before_dpkg: str = "") -> str:
    """cuda-keyring installed once, and every other cuda-*.list source removed (ours is written next).

    Shared by the container (``before_dpkg`` = the apt prelude's ``dpkg_recover``) and the host.
    """
    return f"""
if [ ! -s {KEYRING_PATH} ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  /usr/lib/apt/apt-helper download-file {shlex.quote(url)} "$tmp/{KEYRING_DEB}"
  {before_dpkg}
  dpkg -i "$tmp/{KEYRING_DEB}"
fi
for s in /etc/apt/sources.list.d/cuda-*.list; do
  [ -e "$s" ] && [ "$s" != {shlex.quote(source_path)} ] && rm -f "$s"
done
true
"""


def add_repository(actx: ApplyContext, distro: str, source: str, source_path: str) -> None:
    url = keyring_url(actx.cfg, distro)
    actx.status("adding NVIDIA's apt repository")
    _run(actx, keyring_script(url, source_path, before_dpkg="dpkg_recover"), "installing cuda-keyring",
         fix=f"check that the container reaches {url}")
    actx.ct().put(source.encode(), source_path, mode="0644")


def userspace_lib(packages: list[str]) -> str:
    """The driver userspace transaction as bash functions (templates/apt/nvidia-userspace.sh.j2).

    `up` runs it one function per change; the host guard (operations/guard.py) renders the same
    text into the script it runs at boot and container start (``nv_sync``). The version is the
    shell's ``$ver``: the pin is rendered with ``${ver}`` for the shell to fill in.
    """
    # the pin lands in an unquoted here-document: escape what the shell would expand there
    # (its comment quotes `apt upgrade`), all but the ${ver} it is to fill in
    pin = re.sub(r"[`\\]|\$(?!\{ver\})", lambda m: "\\" + m.group(0), pin_text("${ver}", packages))
    return render("apt/nvidia-userspace.sh.j2", packages=packages, pin=pin, pin_path=PIN_PATH, lib_dir=LIB_DIR,
                  driver_version_re=DRIVER_VERSION.pattern.replace(r"\d", "[0-9]"),
                  forbidden_re=FORBIDDEN.pattern.replace(r"\d", "[0-9]"), family_query=FAMILY_QUERY)


def _run_lib(actx: ApplyContext, version: str, calls: str, what: str, *, fix: str | None = None) -> str:
    return _run(actx, userspace_lib(list(actx.cfg.driver.packages)) + f"ver={shlex.quote(version)}\n" + calls,
                what, fix=fix)


def install_pin(actx: ApplyContext, version: str) -> None:
    """The pin alone, in its own apt transaction, before any driver package moves."""
    actx.status("pinning the NVIDIA driver version")
    # the plan could not see the repository (first run, index unreachable): look now, before the
    # pin or any hold changes, and refuse a version it lacks
    check = " ".join(shlex.quote(p) for p in actx.cfg.driver.packages)
    _run(actx, f"""
apt_get update -q >/dev/null
for p in {check}; do
  apt-cache madison "$p" 2>/dev/null | awk -F' [|] ' -v v="{version}-" 'index($2, v) == 1 {{ok=1}} END {{exit !ok}}' || {{
    echo "no $p {version} in the apt sources; they offer: $(apt-cache madison "$p" 2>/dev/null | awk -F' [|] ' '{{print $2}}' | tr '\\n' ' ')" >&2
    exit 10; }}
done
""", f"looking for driver {version} in NVIDIA's repository",
         fix=f"the repository has no {version}: put a driver it has on the host (`provision host`), or point "
             "driver.repo_url at a mirror that has it (the container was not touched)")
    _run_lib(actx, version, "nv_write_pin\nnv_pinning\n", "installing the driver pin")


def install_userspace(actx: ApplyContext, version: str, packages: list[str]) -> None:
    """Move the userspace to ``version``: simulate, refuse kernel modules, install, hold, verify."""
    actx.status(f"installing NVIDIA driver userspace {version}")
    # simulate first, holds still in place: a refused plan leaves the container as it was
    result = actx.ct().run(apt.prelude_for(actx.cfg) + userspace_lib(packages) +
                           f"ver={shlex.quote(version)}\nset -e\nnv_targets\nnv_simulate\n",
                           on_line=apt.on_line(actx))
    bad = forbidden_packages(result.stdout)
    if bad:
        raise RefusedError(
            f"the apt plan for the driver userspace would install {', '.join(bad)} in the container: kernel "
            "modules belong on the host only", vmid=actx.vmid, step=STEP,
            fix="keep driver.packages to userspace packages (nvidia-driver-cuda, libcuda1, libnvidia-ml1); "
                "never nvidia-open, cuda-drivers* or *-dkms")
    if not result.ok:
        raise RemoteError(f"simulating the driver install failed (exit {result.exit_code})",
                          command="simulating the driver install", exit_code=result.exit_code,
                          output=result.stderr or result.stdout, vmid=actx.vmid, step=STEP,
                          fix=f"check that the repository has version {version} of {', '.join(packages)}")
    _run_lib(actx, version, "nv_targets\nnv_install\n", f"installing NVIDIA driver userspace {version}")
    _run_lib(actx, version, "nv_verify\n", f"verifying the driver userspace {version}",
             fix="compare `cat /sys/module/nvidia/version` on the host with the libraries in the container")
