"""The simulated host's boot: the enabled units ordered before pve-guests.service run before the guests.

The sim host has no systemd of its own, so its reboot (sim/host/packages.py) runs, after the
kernel modules are "loaded" and before the onboot containers are started, the ``ExecStart=`` lines
of every unit enabled for multi-user.target (a symlink in ``multi-user.target.wants``) whose
``[Unit]`` says ``Before=pve-guests.service``: what systemd does with that ordering
(systemd.unit(5), "Before=, After=": the listed unit is started only after this one finished
starting, and a oneshot service has finished starting when its ExecStart= commands have exited).
A ``-`` prefix ignores a failure (systemd.service(5), "ExecStart="), as in systemd.
``provision-nvidia-uvm.service`` is modelled by the reboot itself (nvidia_uvm loaded), so it is
not run again here.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Callable

WANTS = Path("/etc/systemd/system/multi-user.target.wants")
MODELLED = {"provision-nvidia-uvm.service"}


def _values(text: str, section: str, key: str) -> list[str]:
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.startswith(key + "="):
            out.append(line.split("=", 1)[1].strip())
    return out


def before_guests(wants: Path = WANTS) -> list[Path]:
    units = []
    for link in sorted(wants.glob("*.service")) if wants.is_dir() else []:
        if link.name in MODELLED or not link.exists():
            continue
        text = link.read_text()
        if any("pve-guests.service" in v.split() for v in _values(text, "Unit", "Before")):
            units.append(link)
    return units


def run_before_guests(log: Callable[[str], None], wants: Path = WANTS) -> None:
    for unit in before_guests(wants):
        for cmd in _values(unit.read_text(), "Service", "ExecStart"):
            ignore = cmd.startswith("-")
            proc = subprocess.run(shlex.split(cmd.lstrip("-")), capture_output=True, text=True, check=False,
                                  timeout=600)
            log(f"{unit.name}: {cmd}: exit {proc.returncode}")
            if proc.returncode and not ignore:
                break  # a failed ExecStart= fails the unit; the guests start anyway (no Requires=)
