"""Helpers for the cluster tests: host files for sim cluster nodes and the real CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from provisioner.sim.fixture import SimNode
from provisioner.sim.hostfile import host_data
from provision_cli import last_json, provision_cli


def host_file(path: Path, api_node: SimNode, members: list[SimNode], *, vmid: int, node: str,
              ip_node: SimNode | None = None, extra: dict[str, Any] | None = None) -> Path:
    """A host file that talks to ``api_node``'s API, lists every member's SSH, puts CT ``vmid`` on ``node``.

    gpu.boot_fix is off: these tests are about placement and devN entries (the boot unit has its own
    tests in tests/gpu).
    """
    data = host_data(api_node.conn, vmid=vmid, gpu=True, extra=extra or {})
    data["proxmox"]["node"] = node
    data["ssh"]["nodes"] = {m.node: {"host": m.ssh_host, "port": m.ssh_port} for m in members}
    data["container"]["network"]["ip"] = f"{(ip_node or api_node).ip_for(vmid)}/24"
    data["gpu"]["boot_fix"] = False
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def provision(*args: str, only: str = "container,gpu", check: bool = True) -> subprocess.CompletedProcess[str]:
    if any(a in ("up", "plan") for a in args[:3]):
        args = (*args, "--only", only)
    return provision_cli(*args, check=check)


def up(path: Path, **kw: Any) -> dict:
    proc = provision("--json", "up", str(path), "--yes", **kw)
    return last_json(proc)


def gpu_devs(node: SimNode, vmid: int) -> list[str]:
    """The /dev/nvidiaN paths in CT ``vmid``'s config on ``node``."""
    text = (node.sim_root / "etc" / "pve" / "lxc" / f"{vmid}.conf").read_text()
    out = []
    for line in text.split("\n[")[0].splitlines():
        key, _, value = line.partition(": ")
        path = value.split(",")[0]
        if key.startswith("dev") and path.startswith("/dev/nvidia") and path[11:].isdigit():
            out.append(path)
    return sorted(out)
