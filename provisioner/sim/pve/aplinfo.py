"""A small, realistic appliance index (``GET /nodes/{node}/aplinfo``), as pve-manager serves it.

Entries follow PVE's aplinfo.dat (package, version, os, section, location...).
The simulator cannot download from the internet: the template file comes from
the backend's ``provide_template`` (a cached debootstrap rootfs tarball).
"""

from __future__ import annotations

# PVE 9 fetches its appliance index from http://download.proxmox.com/images/aplinfo-pve-9.dat
# (pve-manager 14a22df3 PVE/APLInfo.pm:203-204); Debian 13 "standard" templates are offered there
# for PVE 9. The exact version strings below were not checked against that file from here (no access).
BASE = "http://download.proxmox.com/images"
_ENTRIES = [
    ("debian-12-standard", "12.12-1", "debian-12", "Debian 12 Bookworm (standard)",
     "A small Debian Bookworm system including all standard packages.", "tar.zst"),
    ("debian-13-standard", "13.1-2", "debian-13", "Debian 13 Trixie (standard)",
     "A small Debian Trixie system including all standard packages.", "tar.zst"),
    ("ubuntu-24.04-standard", "24.04-2", "ubuntu-24.04", "Ubuntu 24.04 Noble (standard)",
     "A small Ubuntu 24.04 Noble Numbat system including all standard packages.", "tar.zst"),
    ("alpine-3.22-default", "20250617", "alpine", "LXC default image for alpine 3.22 (20250617)",
     "", "tar.xz"),
]


def index() -> list[dict[str, str]]:
    """The appliance list, one dict per template (keys as PVE returns them)."""
    out = []
    for package, version, os_name, headline, description, ext in _ENTRIES:
        template = f"{package}_{version}_amd64.{ext}"
        out.append({
            "package": package, "version": version, "type": "lxc", "os": os_name,
            "section": "system", "template": template, "architecture": "amd64",
            "location": f"{BASE}/system/{template}", "source": f"{BASE}/system/{template}",
            "maintainer": "Proxmox Support Team <support@proxmox.com>",
            "infopage": "https://pve.proxmox.com/wiki/Linux_Container#pct_supported_distributions",
            "headline": headline, "description": description or headline,
        })
    return out


def find(template: str) -> dict[str, str] | None:
    return next((e for e in index() if e["template"] == template), None)
