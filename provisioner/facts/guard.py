"""The host guard (operations/guard.py): its files, its per-container files, its notes and log.

One host fact: sha256 of each file the guard installs, whether its boot unit is enabled, the
per-container files (``ct-<vmid>.conf`` / ``ct-<vmid>.sync.sh``), the pending-reboot note the
dpkg hook leaves, and the last lines of the guard's log (doctor shows them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Fact

STATE_DIR = "/var/lib/provision/guard"
GUARD_BIN = "/usr/local/sbin/provision-guard"
SNIPPET_PATH = "/var/lib/vz/snippets/provision-guard"
#: the volume id of the snippet on PVE's default dir storage ``local`` (path /var/lib/vz)
SNIPPET_VOLID = "local:snippets/provision-guard"
UNIT = "provision-guard.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
UNIT_WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
DPKG_HOOK_PATH = "/etc/apt/apt.conf.d/80provision-guard"
HOST_PATHS = (GUARD_BIN, SNIPPET_PATH, UNIT_PATH, DPKG_HOOK_PATH)
LOG_LINES = 20


@dataclass(frozen=True)
class GuardState:
    #: path -> sha256 (None: absent), for HOST_PATHS
    files: dict[str, str | None]
    unit_enabled: bool
    #: ``ct-<vmid>.conf`` / ``ct-<vmid>.sync.sh`` -> sha256
    ct_files: dict[str, str] = field(default_factory=dict)
    #: "ondisk=X loaded=Y" when a driver on disk waits for a reboot, else None
    reboot_pending: str | None = None
    log_tail: list[str] = field(default_factory=list)

    def ct_vmids(self) -> list[int]:
        return sorted({int(n[3:].split(".")[0]) for n in self.ct_files if n.endswith(".conf")})

    @property
    def pending(self) -> tuple[str, str] | None:
        """(on disk, loaded) versions of a pending reboot."""
        if not self.reboot_pending:
            return None
        v = dict(p.split("=", 1) for p in self.reboot_pending.split() if "=" in p)
        return v.get("ondisk", "?"), v.get("loaded", "?")


def parse_guard(output: str, code: int) -> GuardState:
    files: dict[str, str | None] = dict.fromkeys(HOST_PATHS)
    ct_files: dict[str, str] = {}
    enabled, pending, tail = False, None, []
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "file":
            path, _, sha = rest.partition(" ")
            if path in files:
                files[path] = sha or None
        elif word == "ct":
            name, _, sha = rest.partition(" ")
            ct_files[name] = sha
        elif word == "enabled":
            enabled = rest == "1"
        elif word == "pending":
            pending = rest or None
        elif word == "log":
            tail.append(rest)
    return GuardState(files=files, unit_enabled=enabled, ct_files=ct_files, reboot_pending=pending,
                      log_tail=tail)


GUARD = Fact("guard",
             "sha() { [ -e \"$1\" ] && sha256sum \"$1\" | cut -d' ' -f1; }\n"
             f"for p in {' '.join(HOST_PATHS)}; do echo \"file $p $(sha \"$p\")\"; done\n"
             f"for f in {STATE_DIR}/ct-*.conf {STATE_DIR}/ct-*.sync.sh; do [ -e \"$f\" ] && "
             "echo \"ct ${f##*/} $(sha \"$f\")\"; done\n"
             f"echo \"enabled $([ -L {UNIT_WANTS_LINK} ] && echo 1 || echo 0)\"\n"
             f"echo \"pending $(cat {STATE_DIR}/reboot-pending 2>/dev/null)\"\n"
             f"tail -n {LOG_LINES} {STATE_DIR}/guard.log 2>/dev/null | sed 's/^/log /'\n"
             "true",
             parse_guard)
