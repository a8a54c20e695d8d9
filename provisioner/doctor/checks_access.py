"""Access checks: API authentication, the path for root-only keys (devN, bind mounts), SSH host key."""

from __future__ import annotations

from ..engine import preflight
from ..errors import HostKeyError
from .context import DoctorContext
from .findings import Evidence, Finding, fail, ok, warn


def check_api(d: DoctorContext) -> list[Finding]:
    a = d.access
    p = d.cfg.proxmox
    who = a.auth_user
    ev = Evidence(f"curl -s {p.endpoint.rstrip('/')}/api2/json/version ({a.auth_kind} auth as {who})",
                  f"PVE {a.pve_release}" if a.api_ok else str(a.api_error or "not tried"))
    if a.api_ok:
        return [ok("access.api", f"API authentication as {who} works (PVE {a.pve_release})", ev)]
    err = a.api_error
    fix = getattr(err, "fix", None) or (
        "check proxmox.auth: the token id/secret (Datacenter → Permissions → API Tokens) or the password; "
        "for the privileges see README \"API token and privileges\"")
    return [fail("access.api", f"the Proxmox API at {p.endpoint} does not accept us: "
                 f"{getattr(err, 'message', err)}", ev, fix=fix)]


def check_privileges(d: DoctorContext) -> list[Finding]:
    """What `up`'s preflight checks (engine/preflight.py), from the same GET /access/permissions."""
    a = d.access
    if not a.api_ok or a.permissions is None or d.plan is None:
        return []
    who = a.auth_user
    missing = [n for n in preflight.needs(d.plan) if not preflight.holds(a.permissions, n.path, n.priv)]
    ev = Evidence(f"pvesh get /access/permissions (as {who})",
                  "\n".join(f"{p}: {', '.join(sorted(v))}" for p, v in sorted(a.permissions.items())) or
                  "(no privileges anywhere)")
    if not missing:
        return [ok("access.privileges", f"{who} holds every privilege `up` needs here", ev)]
    return [fail("access.privileges", f"{who} lacks " + ", ".join(f"{n.priv} on {n.path}" for n in missing), ev,
                 fix="; ".join(preflight.grant_lines(who, missing)),
                 detail="a privilege-separated token (pveum's default) has only the ACLs given to the token "
                        "itself; /cluster/resources silently hides containers without VM.Audit. `provision up` "
                        "stops before any change until these are granted")]


def check_root_path(d: DoctorContext) -> list[Finding]:
    a = d.access
    tools = d.fact("doctor.host_tools") or set()
    if a.root_path == "api":
        ev = Evidence("proxmox.auth in the host file", "user root@pam with a password (ticket)")
        if a.api_ok:
            return [ok("access.root_path", "root-only keys (devN, bind mounts) go through the API as root@pam", ev)]
        return [fail("access.root_path", "root@pam password login failed: devN and bind mounts cannot be set", ev,
                     fix="fix the root@pam password (proxmox.auth.password), or use a token plus SSH as root")]
    ev = Evidence(d.on_host("command -v pct"), "pct present" if "pct" in tools else
                  (str(a.ssh_error) if a.ssh_error else "pct not found"))
    if a.ssh_ok and "pct" in tools:
        return [ok("access.root_path", f"API token ({a.auth_user}) + `pct set` over SSH as root for devN and "
                   "bind mounts (a token never counts as root@pam)", ev)]
    return [fail("access.root_path", "no path to set root-only keys: the token cannot, and SSH as root with pct "
                 "does not work", ev,
                 fix="make `ssh root@HOST pct list` work (ssh.key_file, known_hosts), or log in to the API as "
                     "root@pam with a password (proxmox.auth.user: root@pam, password: {env: ...})",
                 detail="PVE allows devN and bind mounts only to root@pam with a password ticket; "
                        "'configuring device passthrough is only allowed for root@pam'")]


def check_ssh(d: DoctorContext) -> list[Finding]:
    a = d.access
    s = d.cfg.ssh
    host = s.host or d.cfg.proxmox.host
    ev = Evidence(f"ssh -p {s.port} root@{host} true", "ok" if a.ssh_ok else str(a.ssh_error or "not tried"))
    if a.ssh_ok:
        return [ok("access.ssh", f"SSH to root@{host}:{s.port} works and its host key is known", ev)]
    err = a.ssh_error
    if isinstance(err, HostKeyError):
        return [fail("access.ssh", err.message, ev, fix=err.fix,
                     detail="doctor never trusts an unknown or changed host key silently")]
    if err is None:
        return [warn("access.ssh", "SSH was not tried", ev)]
    return [fail("access.ssh", err.message, ev, fix=getattr(err, "fix", None) or
                 f"check that sshd runs on {host}:{s.port} and that ssh.key_file / ssh-agent hold root's key")]


CHECKS = [check_api, check_privileges, check_root_path, check_ssh]
