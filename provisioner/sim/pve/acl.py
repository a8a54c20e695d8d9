"""Privileges, roles, ACLs and privilege-separated API tokens, as pve-access-control computes them.

What the simulated node knows about who may do what lives in ``sim.json`` (read at request
time, so a test can change it while the node runs), in the shape of PVE's ``user.cfg``:

    "tokens": {"root@pam!provision": {"secret": "...", "privsep": 0},
               "provision@pve!provision": {"secret": "...", "privsep": 1}},
    "roles":  {"Provision": ["VM.Audit", "VM.Allocate", ...]},
    "groups": {"admins": ["alice@pve"]},
    "acl":    [{"path": "/", "roles": ["Provision"], "propagate": 1,
                "users": ["provision@pve"], "tokens": ["provision@pve!provision"]}]

A token given as a bare secret string is one made with ``--privsep 0`` (it has its user's
rights). Rules (pve-access-control 9.1.1 @5ccd07d, same logic in 8.4's stable-bookworm @0f258e7):

- ``root@pam`` has every privilege (src/PVE/RPCEnvironment.pm:139-142).
- A token with ``privsep=0`` has exactly its user's privileges; with ``privsep=1`` (the
  default of ``pveum user token add``) the privileges of the token's *own* ACLs, intersected
  with its user's (RPCEnvironment.pm:148-161 and 98-108). A fresh privsep token has none.
- Roles on a path: walk ``/`` → path; at each level the token's, else the user's, else the
  groups' ACL entry replaces what came before, and an entry above the path counts only
  with ``propagate`` (src/PVE/AccessControl.pm:1788-1887). ``NoAccess`` wins.
- Built-in roles come from the privilege groups (AccessControl.pm:1057-1203): PVE<Cat>Admin =
  admin+user+audit privileges of a category, PVE<Cat>User = user+audit, PVEAuditor = audit,
  PVEAdmin = every admin/user/audit privilege, Administrator = all.
- A failed check is HTTP 403 ``Permission check failed (<path>, <priv>)``; for "any of"
  checks the privileges are joined with ``|`` (RPCEnvironment.pm:291-326, pve-common
  src/PVE/Exception.pm:53-63 @f665029).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provisioner.sim.pve.errors import RuleError

ROOT = "root@pam"

#: privilege groups per category: (root-only, admin, user, audit) — AccessControl.pm:1057-1164
_COMMON_VM_ADMIN = ["VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
                    "VM.Config.HWType", "VM.Config.Options", "VM.Allocate", "VM.Clone", "VM.Migrate",
                    "VM.Snapshot", "VM.Snapshot.Rollback"]
_COMMON_VM_USER = ["VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.Backup", "VM.PowerMgmt"]
PRIVGROUPS: dict[str, dict[str, list[str]]] = {
    "VM": {"root": [], "admin": _COMMON_VM_ADMIN + ["VM.GuestAgent.Unrestricted", "VM.Replicate"],
           "user": _COMMON_VM_USER + ["VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt",
                                      "VM.GuestAgent.FileWrite"],
           "audit": ["VM.Audit", "VM.GuestAgent.Audit"]},
    "Sys": {"root": ["Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork"],
            "admin": ["Sys.Console", "Sys.Syslog"], "user": [], "audit": ["Sys.Audit"]},
    "Datastore": {"root": [], "admin": ["Datastore.Allocate", "Datastore.AllocateTemplate"],
                  "user": ["Datastore.AllocateSpace"], "audit": ["Datastore.Audit"]},
    "SDN": {"root": [], "admin": ["SDN.Allocate", "SDN.Audit"], "user": ["SDN.Use"], "audit": ["SDN.Audit"]},
    "User": {"root": ["Realm.Allocate"], "admin": ["User.Modify", "Group.Allocate", "Realm.AllocateUser"],
             "user": [], "audit": []},
    "Pool": {"root": [], "admin": ["Pool.Allocate"], "user": ["Pool.Audit"], "audit": ["Pool.Audit"]},
    "Mapping": {"root": [], "admin": ["Mapping.Modify"], "user": ["Mapping.Use"], "audit": ["Mapping.Audit"]},
}
#: PVE 8.4 has VM.Monitor where 9.x has the guest-agent privileges and VM.Replicate
#: (stable-bookworm AccessControl.pm, privgroups)
PRIVGROUPS_8 = {**PRIVGROUPS, "VM": {"root": [], "admin": _COMMON_VM_ADMIN + ["VM.Monitor"],
                                     "user": _COMMON_VM_USER, "audit": ["VM.Audit"]}}


def builtin_roles(version: str = "9.1") -> dict[str, frozenset[str]]:
    """The roles PVE defines itself (create_roles, AccessControl.pm:1175-1203)."""
    groups = PRIVGROUPS_8 if version.startswith("8") else PRIVGROUPS
    every = {"Permissions.Modify"} | {p for cat in groups.values() for ps in cat.values() for p in ps}
    roles: dict[str, set[str]] = {"NoAccess": set(), "Administrator": set(every), "PVEAdmin": set(),
                                  "PVEAuditor": set()}
    for cat, g in groups.items():
        roles[f"PVE{cat}Admin"] = set(g["admin"] + g["user"] + g["audit"])
        roles["PVEAdmin"] |= roles[f"PVE{cat}Admin"]
        if g["user"]:
            roles[f"PVE{cat}User"] = set(g["user"] + g["audit"])
        roles["PVEAuditor"] |= set(g["audit"])
    roles["PVEAdmin"].discard("Mapping.Modify")
    roles["PVETemplateUser"] = {"VM.Clone", "VM.Audit"}
    return {k: frozenset(v) for k, v in roles.items()}


@dataclass(frozen=True)
class Token:
    tokenid: str
    secret: str
    privsep: bool


def tokens(settings: dict[str, Any]) -> dict[str, Token]:
    """Every API token of ``sim.json`` (dict or list form, see the module docstring)."""
    raw = settings.get("tokens") or {}
    items: list[tuple[str, Any]] = list(raw.items()) if isinstance(raw, dict) else \
        [(str(i.get("tokenid") or i.get("id") or i.get("full_tokenid")), i) for i in raw if isinstance(i, dict)]
    out: dict[str, Token] = {}
    for tid, value in items:
        if isinstance(value, dict):
            secret = str(value.get("secret") or value.get("value") or "")
            privsep = bool(int(value.get("privsep", 1)))
        else:  # a bare secret: a token made with --privsep 0 (the simulator's shorthand)
            secret, privsep = str(value), False
        out[str(tid)] = Token(str(tid), secret, privsep)
    return out


@dataclass
class AclEntry:
    path: str
    roles: list[str]
    propagate: bool = True
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def _norm(path: str) -> str:
    path = "/" + "/".join(p for p in path.split("/") if p)
    return path


class Access:
    """One request's view of user.cfg: roles and privileges of an auth id on a path."""

    def __init__(self, settings: dict[str, Any], version: str = "9.1") -> None:
        self.roles_def: dict[str, frozenset[str]] = dict(builtin_roles(version))
        for name, privs in (settings.get("roles") or {}).items():
            self.roles_def[str(name)] = frozenset(str(p) for p in privs)
        self.tokens = tokens(settings)
        self.groups = {str(g): set(map(str, members)) for g, members in (settings.get("groups") or {}).items()}
        self.acl: list[AclEntry] = []
        for item in settings.get("acl") or []:
            self.acl.append(AclEntry(path=_norm(str(item.get("path", "/"))),
                                     roles=[str(r) for r in _as_list(item.get("roles") or item.get("roleid"))],
                                     propagate=bool(int(item.get("propagate", 1))),
                                     users=[str(u) for u in _as_list(item.get("users"))],
                                     groups=[str(g) for g in _as_list(item.get("groups"))],
                                     tokens=[str(t) for t in _as_list(item.get("tokens"))]))

    # -- roles() and permissions() --------------------------------------------------------
    def _entries(self, path: str, kind: str, who: str) -> dict[str, bool]:
        """Roles (→ propagate) that ACL entries at exactly ``path`` give ``who`` (a user/token/group)."""
        out: dict[str, bool] = {}
        for e in self.acl:
            if e.path == path and who in getattr(e, kind):
                for role in e.roles:
                    out[role] = out.get(role, False) or e.propagate
        return out

    def roles(self, authid: str, path: str) -> dict[str, bool]:
        """AccessControl::roles: the roles ``authid`` holds on ``path`` (→ their propagate flag)."""
        path = _norm(path)
        parts = [p for p in path.split("/") if p]
        levels = ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        is_token = "!" in authid
        user = authid.split("!", 1)[0]
        roles: dict[str, bool] = {}
        for i, level in enumerate(levels):
            final = i == len(levels) - 1
            candidates = []
            if is_token:
                candidates.append(self._entries(level, "tokens", authid))
            else:
                candidates.append(self._entries(level, "users", user))
                groups: dict[str, bool] = {}
                for g, members in self.groups.items():
                    if user in members:
                        for role, prop in self._entries(level, "groups", g).items():
                            groups[role] = groups.get(role, False) or prop
                candidates.append(groups)
            for found in candidates:
                new = {r: p for r, p in found.items() if final or p}
                if new:
                    roles = new  # a deeper entry replaces what came before
                    break
        if "NoAccess" in roles:
            return {"NoAccess": roles["NoAccess"]}
        return roles

    def _privs(self, authid: str, path: str) -> dict[str, bool]:
        privs: dict[str, bool] = {}
        for role, prop in self.roles(authid, path).items():
            for priv in self.roles_def.get(role, ()):
                privs[priv] = privs.get(priv, False) or prop
        return privs

    def permissions(self, authid: str, path: str) -> dict[str, bool]:
        """RPCEnvironment::permissions: privilege → propagate for ``authid`` on ``path``."""
        if authid == ROOT:
            return {p: True for p in self.roles_def["Administrator"]}
        if "!" in authid:
            token = self.tokens.get(authid)
            if token is None:
                return {}
            user = authid.split("!", 1)[0]
            user_privs = self.permissions(user, path)
            if not token.privsep:
                return user_privs
            own = self._privs(authid, path)
            if user == ROOT:  # root's tokens: intersected with root's (= all)
                return own
            return {p: own[p] and user_privs[p] for p in own if p in user_privs}
        return self._privs(authid, path)

    # -- checks ---------------------------------------------------------------------------
    def has(self, authid: str, path: str, privs: list[str], *, any_of: bool = False) -> bool:
        perm = self.permissions(authid, path)
        hits = [p in perm for p in privs]
        return any(hits) if any_of else all(hits)

    def check(self, authid: str, path: str, privs: list[str], *, any_of: bool = False) -> None:
        """RPCEnvironment::check / check_any: raise PVE's 403 naming the path and privilege."""
        perm = self.permissions(authid, path)
        if any_of:
            if not any(p in perm for p in privs):
                raise RuleError(f"Permission check failed ({path}, {'|'.join(privs)})", status=403)
            return
        for priv in privs:
            if priv not in perm:
                raise RuleError(f"Permission check failed ({path}, {priv})", status=403)

    def effective(self, authid: str) -> dict[str, dict[str, int]]:
        """get_effective_permissions (RPCEnvironment.pm:243-289): the default top-level paths
        and every ACL path, each with the privileges held there (paths with none left out)."""
        paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}
        paths |= {e.path for e in self.acl}
        out: dict[str, dict[str, int]] = {}
        for path in sorted(paths):
            perms = self.permissions(authid, path)
            if perms:
                out[path] = {p: int(v) for p, v in sorted(perms.items())}
        return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.replace(";", ",").split(",") if v]
    return list(value)


def schema_check(access: Access, authid: str, permissions: dict[str, Any], params: dict[str, Any]) -> None:
    """A method's ``permissions.check`` from the API schema, as exec_api2_perm_check runs it
    (RPCEnvironment.pm:459-547): ``["perm", "/vms/{vmid}", [privs], "any", 1]``; ``{"user": "all"}``
    and ``"world"`` leave the checks to the handler."""
    check = permissions.get("check")
    if not check:
        return
    _run_check(access, authid, list(check), params)


def _run_check(access: Access, authid: str, check: list[Any], params: dict[str, Any]) -> None:
    kind = check[0]
    if kind in ("and", "or"):
        subs = [c for c in check[1:] if isinstance(c, list)]
        if kind == "and":
            for sub in subs:
                _run_check(access, authid, sub, params)
            return
        errors: list[RuleError] = []
        for sub in subs:
            try:
                _run_check(access, authid, sub, params)
                return
            except RuleError as exc:
                errors.append(exc)
        raise errors[-1] if errors else RuleError("Permission check failed", status=403)
    if kind == "perm":
        path = str(check[1])
        for key, value in params.items():
            path = path.replace("{" + key + "}", str(value))
        privs = [str(p) for p in check[2]]
        opts = dict(zip(check[3::2], check[4::2]))
        if "require_param" in opts and opts["require_param"] not in params:
            return
        access.check(authid, path, privs, any_of=bool(opts.get("any")))
        return
    if kind == "userid-group" or kind == "userid-param" or kind == "perm-modify":
        return  # not used by the endpoints the simulator serves
    raise RuleError(f"unknown permission check {kind!r}", status=500)
