"""Helpers for the cluster tests: host files for sim cluster nodes and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from provisioner.sim.fixture import SimNode
from provisioner.sim.hostfile import host_data


def host_file(path: Path, api_node: SimNode, members: list[SimNode], *, vmid: int, node: str,
              ip_node: SimNode | None = None, extra: dict[str, Any] | None = None) -> Path:
    """A host file that talks to ``api_node``'s API, lists every member's SSH, puts CT ``vmid`` on ``node``.

    gpu.boot_fix is off: the boot unit would land in this machine's real /etc (the sim host shares it).
    """
    data = host_data(api_node.conn, vmid=vmid, gpu=True, extra=extra or {})
    data["proxmox"]["node"] = node
    data["ssh"]["nodes"] = {m.node: {"host": m.ssh_host, "port": m.ssh_port} for m in members}
    data["container"]["network"]["ip"] = f"{(ip_node or api_node).ip_for(vmid)}/24"
    data["gpu"]["boot_fix"] = False
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def provision(*args: str, only: str = "container,gpu", check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "provisioner.cli.main", *args]
    if any(a in ("up", "plan") for a in args[:3]):
        cmd += ["--only", only]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"provision {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}\n"
                             f"{proc.stdout[-2000:]}")
    return proc


def up(path: Path, **kw: Any) -> dict:
    proc = provision("--json", "up", str(path), "--yes", **kw)
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
