"""Files PVE writes inside a container's rootfs before each start (PVE::LXC::Setup, Debian).

Every write goes to a temp file that is then rename()d over the target, like
PVE's atomic file writer; so an immutable (``chattr +i``) target makes the
rename fail with EPERM and the start fails with PVE's message. A file
``.pve-ignore.<name>`` *beside* the target (``/etc/.pve-ignore.resolv.conf``,
``/etc/network/.pve-ignore.interfaces``) makes PVE leave it alone (pve-container
src/PVE/LXC/Setup/Base.pm:739-743 ct_is_file_ignored@94f5585).

resolv.conf (set_dns + ct_modify_file, Base.pm:33-60, 122-137, 883-945): the CT's
``nameserver``/``searchdomain``, else the host's; when the file already holds a
``# --- BEGIN PVE ---`` … ``# --- END PVE ---`` section only that section is replaced,
otherwise the whole file (``replace => 1``). Either way it is written atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.lxc.conf import SIM_GATEWAY, net_ifs

#: The sim host's resolver as the containers see it: lxc-net's dnsmasq on the bridge.
HOST_NAMESERVER = SIM_GATEWAY


def _safe_path(rootfs: Path, rel: str) -> Path:
    """Resolve ``rel`` inside ``rootfs`` refusing symlinked parents (a chroot would contain them)."""
    path = rootfs / rel.lstrip("/")
    for parent in list(path.parents)[::-1]:
        if len(parent.parts) > len(rootfs.parts) and parent.is_symlink():
            raise SimTaskError(f"unsafe symlink in container path {rel}")
    return path


def ignored(rootfs: Path, rel: str) -> bool:
    """ct_is_file_ignored: ``<dir>/.pve-ignore.<name>`` beside the target exists."""
    return _safe_path(rootfs, f"{os.path.dirname(rel)}/.pve-ignore.{os.path.basename(rel)}").is_file()


def atomic_write(rootfs: Path, rel: str, text: str, uid: int, gid: int) -> None:
    """Write ``rel`` (absolute CT path) unless the CT asks PVE to ignore it."""
    if ignored(rootfs, rel):
        return
    target = _safe_path(rootfs, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, 0o644)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SimTaskError(f"close (rename) atomic file '{rel}' failed: {exc.strerror}") from None


BEGIN, END = "# --- BEGIN PVE ---", "# --- END PVE ---"


def resolv_conf(conf: dict[str, str], old: str | None = None) -> str:
    """The new resolv.conf: PVE's section from the CT's DNS (else the host's), replacing only
    the section of ``old`` when it has one."""
    servers = conf.get("nameserver", "").replace(",", " ").replace(";", " ").split() or [HOST_NAMESERVER]
    search = conf.get("searchdomain", "").replace(",", " ").replace(";", " ").split()
    data = ""
    if search:
        data += "search " + " ".join(search) + "\n"
    data += "".join(f"nameserver {s}\n" for s in servers)
    section = f"{BEGIN}\n{data}{END}"
    lines = (old or "").split("\n")
    beg = next((i for i, ln in enumerate(lines) if re.match(r"^#\s*---\s*BEGIN\s*PVE\s*", ln)), None)
    end = None if beg is None else next(
        (i for i, ln in enumerate(lines) if i > beg and re.match(r"^#\s*---\s*END\s*PVE\s*", ln, re.I)), None)
    if beg is None or end is None:
        return section + "\n"
    lines[beg:end + 1] = [section]
    return "\n".join(lines).rstrip("\n") + "\n"


def interfaces(conf: dict[str, str]) -> str:
    out = "auto lo\niface lo inet loopback\n"
    for nif in net_ifs(conf):
        if nif.ip and nif.ip != "manual":
            out += f"\nauto {nif.name}\n"
            if nif.ip == "dhcp":
                out += f"iface {nif.name} inet dhcp\n"
            else:
                out += f"iface {nif.name} inet static\n\taddress {nif.ip}\n"
                if nif.gw:
                    out += f"\tgateway {nif.gw}\n"
        if nif.ip6 and nif.ip6 not in ("manual", "dhcp", "auto"):
            out += f"\niface {nif.name} inet6 static\n\taddress {nif.ip6}\n"
            if nif.gw6:
                out += f"\tgateway {nif.gw6}\n"
    return out


def setup(rootfs: Path, vmid: int, conf: dict[str, str], uid: int = 0, gid: int = 0) -> None:
    """Write hostname, hosts, network config and resolv.conf into the CT."""
    hostname = conf.get("hostname", f"CT{vmid}")
    atomic_write(rootfs, "/etc/hostname", hostname + "\n", uid, gid)
    hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" \
            f"# --- BEGIN PVE ---\n127.0.1.1 {hostname}\n# --- END PVE ---\n"
    atomic_write(rootfs, "/etc/hosts", hosts, uid, gid)
    atomic_write(rootfs, "/etc/network/interfaces", interfaces(conf), uid, gid)
    resolv = _safe_path(rootfs, "/etc/resolv.conf")
    try:
        old = resolv.read_text() if resolv.is_file() and not resolv.is_symlink() else None
    except OSError:
        old = None
    atomic_write(rootfs, "/etc/resolv.conf", resolv_conf(conf, old), uid, gid)
