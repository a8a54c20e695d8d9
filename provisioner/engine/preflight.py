"""Privileges preflight: before `up` changes anything, the API user or token must hold every
privilege this run needs, or we stop and say which is missing and the `pveum` line that grants it.

Why a preflight: a token made with ``pveum user token add root@pam provision`` is
privilege-separated (``privsep=1`` is the default, pve-access-control src/PVE/API2/User.pm:813
@5ccd07d) and has no ACLs, so every call is 403 — and ``/cluster/resources`` does not refuse
but silently leaves out guests the caller may not ``VM.Audit`` (pve-manager
PVE/API2/Cluster.pm:588@14a22df): without this check `up` would think its container is gone
and try to create another one.

One API call: ``GET /access/permissions`` (every default and ACL path with the privileges held
there and whether they propagate, pve-access-control src/PVE/RPCEnvironment.pm:243-289). A path
that is not listed inherits from its nearest listed ancestor that propagates something, as
``roles()`` walks the tree (src/PVE/AccessControl.pm:1788-1887). ``root@pam`` with a password
holds everything (RPCEnvironment.pm:139-142) and is not asked.

What each call needs (pve-container @94f5585 unless said): create_vm — VM.Allocate on
/vms/<vmid>, Datastore.AllocateSpace on the root disk's storage, read access to the template's
storage, Sys.Modify on / for a privileged CT on PVE 9 (src/PVE/API2/LXC.pm:272, since
pve-container 6.0.6 by its debian/changelog, not 6.0.5 as REFERENCE §1 says), the per-key
privileges of check_ct_modify_config_perm (src/PVE/LXC.pm:1655-1756: VM.Config.CPU/Memory/
Network/Options/Disk, SDN.Use on the bridge, VM.Allocate to toggle nesting); start/reboot —
VM.PowerMgmt; snapshots — VM.Snapshot; template download — Datastore.AllocateTemplate
(the API schema of POST /nodes/{node}/aplinfo).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..connectors.pve import PVE
from ..errors import ProxmoxError
from .context import PlanContext

#: the role the README's recipe creates; the `pveum` lines below add to it
ROLE = "Provision"

#: the README's minimal role (an unprivileged CT; PVE 9 needs Sys.Modify on / for a privileged one)
MINIMAL_PRIVILEGES = ("VM.Audit", "VM.Allocate", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
                      "VM.Config.Options", "VM.Config.Disk", "VM.PowerMgmt", "VM.Snapshot",
                      "VM.Snapshot.Rollback", "Datastore.Audit", "Datastore.AllocateSpace",
                      "Datastore.AllocateTemplate", "SDN.Use")


@dataclass(frozen=True)
class Need:
    """One privilege on one ACL path, and why this run needs it."""

    path: str
    priv: str
    why: str


def needs(ctx: PlanContext) -> list[Need]:
    """The privileges this `up` needs, from the config and the facts (no network)."""
    c = ctx.cfg.container
    vmid = ctx.vmid
    vm = f"/vms/{vmid}" if vmid else "/vms"
    bridge = f"/sdn/zones/localnetwork/{c.network.bridge}" + (f"/{c.network.vlan}" if c.network.vlan else "")
    out = [Need(vm, "VM.Audit", "read the container (without it /cluster/resources hides it)"),
           Need(vm, "VM.PowerMgmt", "start or restart the container"),
           Need(vm, "VM.Config.CPU", "cores"),
           Need(vm, "VM.Config.Memory", "memory and swap"),
           Need(vm, "VM.Config.Network", "net0, hostname, nameserver"),
           Need(vm, "VM.Config.Options", "description, tags, onboot"),
           Need(bridge, "SDN.Use", f"attach net0 to bridge {c.network.bridge}")]
    if ctx.pve.ct is None:
        out += [Need(vm, "VM.Allocate", "create the container"),
                Need(vm, "VM.Config.Disk", "its root disk"),
                Need(f"/storage/{c.storage}", "Datastore.AllocateSpace", f"allocate the root disk on {c.storage}"),
                Need(f"/storage/{c.template_storage}", "Datastore.Audit",
                     f"find the template on {c.template_storage}")]
        if ":" not in c.template:
            out.append(Need(f"/storage/{c.template_storage}", "Datastore.AllocateTemplate",
                            f"download {c.template} when it is not there yet"))
        if not c.unprivileged and _major(ctx.pve.version) >= 9:
            out.append(Need("/", "Sys.Modify", "create a privileged container on PVE 9"))
    elif c.snapshot:
        out.append(Need(vm, "VM.Snapshot", "the safety snapshot before changing it (container.snapshot)"))
    return out


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def holds(perms: dict[str, dict[str, int]], path: str, priv: str) -> bool:
    """Whether ``priv`` is held on ``path`` according to GET /access/permissions."""
    if path in perms:
        return priv in perms[path]
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        ancestor = "/" + "/".join(parts[:i])
        held = perms.get(ancestor)
        if held and any(int(v) for v in held.values()):
            return bool(int(held.get(priv, 0)))
    return False


def grant_lines(authid: str, missing: list[Need]) -> list[str]:
    """The `pveum` commands that grant ``missing`` to ``authid`` (and to its user: a
    privilege-separated token has only what both hold)."""
    privs = ",".join(dict.fromkeys(n.priv for n in missing))
    user, _, token = authid.partition("!")
    who = f"--users {user}" + (f" --tokens '{authid}'" if token else "")
    return [f"pveum role modify {ROLE} --append 1 --privs {privs}",
            f"pveum acl modify / {who} --roles {ROLE}"]


class MissingPrivileges(ProxmoxError):
    """The API user or token lacks privileges this run needs; nothing was changed."""


def check(pve: PVE, ctx: PlanContext, authid: str) -> None:
    """Raise ``MissingPrivileges`` (before any change) when a needed privilege is not held."""
    if authid == "root@pam":
        return
    try:
        perms = pve.get("/access/permissions") or {}
    except ProxmoxError as exc:
        if exc.status in (501, 404):  # an API without the endpoint: the calls themselves will tell
            return
        raise
    missing = [n for n in needs(ctx) if not holds(perms, n.path, n.priv)]
    if not missing:
        return
    width = max(len(f"{n.priv} on {n.path}") for n in missing)
    lines = "\n".join(f"    {f'{n.priv} on {n.path}':<{width}}  ({n.why})" for n in missing)
    grant = "\n       ".join(grant_lines(authid, missing))
    raise MissingPrivileges(
        f"{authid} lacks {len(missing)} privilege(s) this run needs; nothing was changed:\n{lines}",
        status=403, host=pve.endpoint.host, vmid=ctx.vmid, step="preflight",
        fix=f"grant them (README: \"API token and privileges\"):\n       {grant}")


__all__ = ["MINIMAL_PRIVILEGES", "MissingPrivileges", "Need", "ROLE", "check", "grant_lines", "holds", "needs"]
