"""Files PVE writes inside a container's rootfs before each start (PVE::LXC::Setup, Debian).

Every write goes to a temp file that is then rename()d over the target, like
PVE's atomic file writer; so an immutable (``chattr +i``) target makes the
rename fail with EPERM and the start fails with PVE's message. A file
``/etc/.pve-ignore.<name>`` in the CT makes PVE (and us) leave ``<name>`` alone.
"""

from __future__ import annotations

import os
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


def atomic_write(rootfs: Path, rel: str, text: str, uid: int, gid: int) -> None:
    """Write ``rel`` (absolute CT path) unless the CT asks PVE to ignore it."""
    name = os.path.basename(rel)
    if _safe_path(rootfs, f"/etc/.pve-ignore.{name}").exists():
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


def resolv_conf(conf: dict[str, str]) -> str:
    servers = conf.get("nameserver", "").replace(",", " ").split() or [HOST_NAMESERVER]
    search = conf.get("searchdomain", "").replace(",", " ").split()
    out = "# --- BEGIN PVE ---\n"
    if search:
        out += "search " + " ".join(search) + "\n"
    out += "".join(f"nameserver {s}\n" for s in servers)
    return out + "# --- END PVE ---\n"


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
    atomic_write(rootfs, "/etc/resolv.conf", resolv_conf(conf), uid, gid)
