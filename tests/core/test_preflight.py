"""The privileges preflight: what a run needs, how GET /access/permissions is read, the message."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from provisioner.engine import preflight
from provisioner.engine.preflight import MINIMAL_PRIVILEGES, MissingPrivileges, holds, needs
from provisioner.sim.manage import RESTRICTED_PRIVS

from test_container_plan import CONVERGED, ctx_for

TOKEN = "provision@pve!provision"


class FakePve:
    """GET /access/permissions only (the preflight's one call)."""

    def __init__(self, perms: dict) -> None:
        self.perms = perms
        self.calls: list[str] = []
        self.endpoint = SimpleNamespace(host="pve.lan")

    def get(self, path: str, **params: object) -> dict:
        self.calls.append(path)
        return self.perms


def everything(**skip: str) -> dict:
    privs = {p: 1 for p in MINIMAL_PRIVILEGES if p not in skip.values()}
    return {"/": privs, "/vms": privs, "/storage": privs}


def test_the_minimal_role_is_what_the_sim_grants_its_restricted_token() -> None:
    assert set(MINIMAL_PRIVILEGES) == set(RESTRICTED_PRIVS)


def test_inheritance_follows_propagation() -> None:
    perms = {"/": {"VM.Audit": 1}, "/vms": {"VM.PowerMgmt": 0}, "/vms/120": {"VM.Config.CPU": 1}}
    assert holds(perms, "/vms/120", "VM.Config.CPU")
    assert not holds(perms, "/vms/120", "VM.Audit")       # /vms/120 has its own entry
    assert not holds(perms, "/vms/121", "VM.PowerMgmt")   # not propagated from /vms ...
    assert holds(perms, "/vms/121", "VM.Audit")           # ... so /'s propagated privileges apply
    assert not holds({}, "/vms/121", "VM.Audit")


def test_existing_ct_needs_no_allocate_but_a_snapshot() -> None:
    privs = {n.priv for n in needs(ctx_for(dict(CONVERGED)))}
    assert "VM.Snapshot" in privs and "VM.Allocate" not in privs and "Sys.Modify" not in privs


def test_privileged_create_on_pve9_needs_sys_modify() -> None:
    got = {(n.path, n.priv) for n in needs(ctx_for(None))}
    assert ("/", "Sys.Modify") in got and ("/vms/120", "VM.Allocate") in got
    assert ("/storage/local-lvm", "Datastore.AllocateSpace") in got
    assert ("/sdn/zones/localnetwork/vmbr0", "SDN.Use") in got


def test_a_missing_privilege_stops_with_the_pveum_lines() -> None:
    pve = FakePve(everything(a="VM.Snapshot"))
    with pytest.raises(MissingPrivileges) as info:
        preflight.check(pve, ctx_for(dict(CONVERGED)), TOKEN)
    text = str(info.value)
    assert "VM.Snapshot on /vms/120" in text and "nothing was changed" in text
    assert "pveum role modify Provision --append 1 --privs VM.Snapshot" in text
    assert "pveum acl modify / --users provision@pve --tokens 'provision@pve!provision' --roles Provision" in text
    assert "VM.Audit" not in text.split("fix:")[0]


def test_all_held_passes_in_one_call_and_root_is_not_asked() -> None:
    pve = FakePve(everything())
    preflight.check(pve, ctx_for(dict(CONVERGED)), TOKEN)
    assert pve.calls == ["/access/permissions"]
    root = FakePve({})
    preflight.check(root, ctx_for(dict(CONVERGED)), "root@pam")
    assert root.calls == []
