"""Hookscripts of the simulated node: PVE's phases, checks and failure semantics.

Sources (pve-guest-common 4a8f6cbf78e1, pve-container 94f558522ef6, pve-storage 0c56bad8b2a7,
pve-common f665029eac78):

- Setting ``hookscript`` is root@pam only (src/PVE/LXC.pm:1736-1738, sim/pve/ct_permissions.py),
  and the value is checked when set (src/PVE/LXC/Config.pm:1349-1350 -> check_hookscript).
- ``check_hookscript`` (src/PVE/GuestHelpers.pm:99-115): the volume resolves through the storage
  (PVE::Storage::path, src/PVE/Storage.pm:757: an unknown storage dies there); its volume type
  must be ``snippets`` ("'<volid>' is not in the snippets directory"), the file must exist
  ("script '<volid>' does not exist") and be executable ("script '<volid>' is not executable").
  A dir storage maps ``<sid>:snippets/<name>`` to ``<path>/snippets/<name>``
  (src/PVE/Storage/Plugin.pm:822-823, :845). PVE does not look at the storage's ``content``
  list here: ``snippets`` in it only makes the GUI/API list and upload snippets.
- ``exec_hookscript`` (src/PVE/GuestHelpers.pm:117-133) runs ``<script> <vmid> <phase>`` as root;
  an error becomes "hookscript error for <vmid> on <phase>: <err>", which dies only when
  ``stop_on_error`` is set, else it is a warning.
- Phases (pve-container): ``pre-start`` before ``systemctl start pve-container@<vmid>`` with
  stop_on_error (src/PVE/LXC.pm:3167: a failing pre-start aborts the start, the CT stays
  stopped); ``post-start`` after the start succeeded, a warning on failure (src/PVE/LXC.pm:3182);
  ``pre-stop`` in vm_stop before lxc-stop, a warning (src/PVE/LXC.pm:3234); ``post-stop`` from
  lxc-pve-poststop-hook after the CT stopped, a warning (src/lxc-pve-poststop-hook:91).
- run_command's error text: "command '<cmd>' failed: exit code N" (src/PVE/Cmd.pm:294, :317),
  "got signal N" for a signal (src/PVE/Cmd.pm:285-286). Its output goes to the task log.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Callable

from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve.errors import RuleError
from provisioner.sim.pve.storage import check_storage

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
Log = Callable[[str], None]


def storage_dir(sim_root: Path, storage: str) -> Path:
    """A dir storage's path (``local`` is /var/lib/vz on PVE; the sim host shows it there)."""
    return Path(sim_root) / "storage" / storage


def check(sim_root: Path, volid: str) -> Path:
    """check_hookscript: the script's path, or PVE's message as RuleError."""
    m = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", volid, re.I)
    if not m:
        raise RuleError(f"unable to parse volume ID '{volid}'")
    sid, volname = m.group(1), m.group(2)
    conf = check_storage(sid)
    if conf["type"] != "dir":  # lvmthin's parse_volname knows only vm-/base- disk names
        raise RuleError(f"unable to parse lvm volume name '{volname}'")
    snip = re.fullmatch(r"snippets/([^/]+)", volname)
    if not snip:
        raise RuleError(f"'{volid}' is not in the snippets directory")
    path = storage_dir(sim_root, sid) / "snippets" / snip.group(1)
    if not path.is_file():
        raise RuleError(f"script '{volid}' does not exist")
    if not path.stat().st_mode & 0o111:
        raise RuleError(f"script '{volid}' is not executable")
    return path


def run(sim_root: Path, conf: dict[str, str], vmid: int, phase: str, log: Log, *,
        stop_on_error: bool = False) -> None:
    """exec_hookscript: run the CT's hookscript for ``phase``; PVE's error or warning."""
    volid = conf.get("hookscript")
    if not volid:
        return
    try:
        path = check(sim_root, volid)
        cmd = [str(path), str(vmid), phase]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
        for line in (proc.stdout + proc.stderr).splitlines():
            log(line)
        if proc.returncode < 0:
            raise RuleError(f"command '{shlex.join(cmd)}' failed: got signal {-proc.returncode}")
        if proc.returncode:
            raise RuleError(f"command '{shlex.join(cmd)}' failed: exit code {proc.returncode}")
    except RuleError as exc:
        msg = f"hookscript error for {vmid} on {phase}: {exc.message}"
        if stop_on_error:
            raise SimTaskError(msg) from None
        log(msg)  # perl warn: the text as is, on stderr (the task log)
