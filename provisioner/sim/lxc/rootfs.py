"""The Debian root filesystem caches and the CT templates made from them.

A debootstrapped Debian is built once per suite into
``/var/cache/provision-sim/rootfs-<suite>`` (shared by every simulated node,
reused across runs and CI), then packed into a template tarball named like the
one PVE's appliance index offers: bookworm as ``debian-12-standard_12.12-1_amd64.tar.zst``,
trixie as ``debian-13-standard_13.1-2_amd64.tar.zst`` (the names sim/pve/aplinfo.py lists). The
trixie one is built only when a container asks for it (debootstrap from Debian's own archive).

Containers are created from the template the way PVE does it (unpack), but when
the template is our own tarball we copy the already-unpacked cache instead
(``cp -a`` is ~3x faster than unpacking zstd; hardlinks are not used because
``chattr +i`` and ownership would then leak between containers and the cache).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from provisioner.sim.lxc.base import Log, SimTaskError

CACHE_DIR = Path(os.environ.get("PROVISION_SIM_CACHE", "/var/cache/provision-sim"))
SUITE = "bookworm"
TEMPLATE_NAME = "debian-12-standard_12.12-1_amd64.tar.zst"
#: template file name → the Debian suite debootstrapped for it
TEMPLATES = {TEMPLATE_NAME: SUITE, "debian-13-standard_13.1-2_amd64.tar.zst": "trixie"}
# Enough for systemd to boot, ifupdown networking like PVE's Debian template, apt over https.
PACKAGES = ["systemd", "systemd-sysv", "dbus", "iproute2", "ifupdown", "iputils-ping",
            "openssh-server", "ca-certificates", "curl", "gnupg", "procps", "less"]
MIRROR = "http://deb.debian.org/debian"
#: uid/gid shift of unprivileged containers, like PVE's default idmap
ID_SHIFT = 100000


def rootfs_dir(suite: str = SUITE) -> Path:
    return CACHE_DIR / f"rootfs-{suite}"


def template_path(name: str = TEMPLATE_NAME) -> Path:
    return CACHE_DIR / name


def _template_of(suite: str) -> str:
    return next(name for name, s in TEMPLATES.items() if s == suite)


#: bump when _prepare_for_containers changes: the cache is re-prepared and the template repacked
PREPARE_VERSION = "2"
STAMP = "etc/.provision-sim-cache"


@contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder of the cache at a time: every simulated node and every test run on this machine
    shares it, and two debootstraps into one directory break each other."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_partial(path: Path) -> None:
    """Remove a half-built tree; a debootstrap that was killed leaves proc/sys mounted inside it."""
    if not path.exists():
        return
    with open("/proc/self/mounts") as fh:
        mounts = [line.split()[1] for line in fh]
    for mnt in sorted((m for m in mounts if m == str(path) or m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(path)


def ensure_rootfs(log: Log = print, suite: str = SUITE) -> Path:
    """Build the debootstrap cache once (minutes); later calls return at once."""
    target = rootfs_dir(suite)
    with _cache_lock():
        if (target / "etc" / "os-release").exists():
            stamp = target / STAMP
            if not stamp.exists() or stamp.read_text().strip() != PREPARE_VERSION:
                _prepare_for_containers(target)
                template_path(_template_of(suite)).unlink(missing_ok=True)
                shutil.rmtree(target.with_name(target.name + "-userns"), ignore_errors=True)
            return target
        partial = target.with_name(target.name + ".partial")
        _remove_partial(partial)
        log(f"building the {suite} rootfs cache with debootstrap (once; takes minutes)")
        t0 = time.monotonic()
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), suite,
               str(partial), MIRROR]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log_tail = ""
            if (partial / "debootstrap/debootstrap.log").exists():
                log_tail = (partial / "debootstrap/debootstrap.log").read_text(errors="replace")[-2000:]
            _remove_partial(partial)
            raise SimTaskError(f"debootstrap failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}\n{log_tail}")
        _prepare_for_containers(partial)
        partial.rename(target)
        log(f"rootfs cache built in {time.monotonic() - t0:.0f}s")
        return target


def _prepare_for_containers(root: Path) -> None:
    """What PVE's templates ship: no machine-id, no ssh host keys, apt cache empty."""
    (root / "etc" / "machine-id").write_text("")
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    # Debian's template regenerates host keys on first boot; so do we.
    unit = root / "etc/systemd/system/ssh-keygen-first-boot.service"
    unit.write_text("[Unit]\nDescription=Generate SSH host keys\nBefore=ssh.service\n"
                    "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
                    "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit.name
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{unit.name}")
    # Not mountable in an unprivileged CT; PVE's templates leave it failing, we mask it.
    for unit_name in ("sys-kernel-debug.mount", "sys-kernel-tracing.mount"):
        masked = root / "etc/systemd/system" / unit_name
        if not masked.is_symlink():
            masked.symlink_to("/dev/null")
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=False)
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    (root / STAMP).write_text(PREPARE_VERSION + "\n")


def ensure_template(log: Log = print, name: str = TEMPLATE_NAME) -> Path:
    """Pack the cache into the template tarball once; returns its path."""
    src = ensure_rootfs(log, TEMPLATES[name])
    tpl = template_path(name)
    if tpl.exists():
        return tpl
    if shutil.which("zstd") is None:
        raise SimTaskError("zstd is missing: apt-get install -y zstd")
    with _cache_lock():
        if not tpl.exists():
            tmp = tpl.with_name(tpl.name + ".partial")
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(src), "-I", "zstd -T0",
                            "-cf", str(tmp), "."], check=True)
            tmp.rename(tpl)
            log(f"template {tpl.name} written")
    return tpl


def provide_template(name: str, dest: Path, log: Log) -> None:
    """Copy the template called ``name`` to ``dest`` (the API's aplinfo download)."""
    if name not in TEMPLATES:
        raise SimTaskError(f"no such template: {name}")
    tpl = ensure_template(log, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {name} (sim: copied from {tpl})")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(tpl, tmp)
    tmp.rename(dest)
    log(f"download of '{name}' to '{dest}' finished")


def is_our_template(ostemplate: Path) -> bool:
    """True when ``ostemplate`` is a copy of one of the caches' tarballs (same name and size)."""
    tpl = template_path(ostemplate.name)
    try:
        return ostemplate.name in TEMPLATES and tpl.stat().st_size == ostemplate.stat().st_size
    except FileNotFoundError:
        return False


def materialise(ostemplate: Path, dest: Path, *, unprivileged: bool, log: Log) -> None:
    """Fill ``dest`` with the template's root filesystem, shifted for unprivileged CTs."""
    if dest.exists() and any(dest.iterdir()):
        raise SimTaskError(f"rootfs {dest} already exists")
    dest.mkdir(parents=True, exist_ok=True)
    if not ostemplate.exists():
        raise SimTaskError(f"template '{ostemplate}' does not exist")
    suite = TEMPLATES.get(ostemplate.name, SUITE)
    if is_our_template(ostemplate) and rootfs_dir(suite).exists():
        src = shifted_rootfs_dir(suite) if unprivileged else rootfs_dir(suite)
        log(f"sim: copying the unpacked template cache {src}")
        subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dest)], check=True)
        return
    log(f"extracting archive '{ostemplate}'")
    comp = "zstd" if ostemplate.name.endswith(".zst") else "gzip"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-I", comp, "-xpf", str(ostemplate),
                    "-C", str(dest)], check=True)
    if unprivileged:
        shift_ownership(dest, ID_SHIFT)


def shifted_rootfs_dir(suite: str = SUITE) -> Path:
    """The cache with uids/gids shifted by 100000 (built once: shifting takes seconds)."""
    src = ensure_rootfs(suite=suite)
    target = src.with_name(src.name + "-userns")
    stamp = target / STAMP
    with _cache_lock():
        if stamp.exists() and stamp.read_text() == (src / STAMP).read_text():
            return target
        partial = target.with_name(target.name + ".partial")
        for old in (partial, target):
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run(["cp", "-a", f"{src}/.", str(partial)], check=True)
        shift_ownership(partial, ID_SHIFT)
        partial.rename(target)
    return target


def shift_ownership(root: Path, shift: int) -> None:
    """Add ``shift`` to every uid/gid under ``root`` (what PVE's idmapped unpack gives)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_uid >= shift:
                continue
            mode = st.st_mode
            os.chown(path, st.st_uid + shift, st.st_gid + shift, follow_symlinks=False)
            # chown clears setuid/setgid bits; put them back (not on symlinks)
            if mode & 0o6000 and not os.path.islink(path):
                os.chmod(path, mode & 0o7777)
