"""Privilege-separated tokens, roles and ACLs: the simulated API says no where PVE says no.

Rules: provisioner/sim/pve/acl.py (pve-access-control RPCEnvironment.pm / AccessControl.pm).
"""

from __future__ import annotations

import pytest

from provisioner.sim.pve.acl import Access, builtin_roles

from .conftest import Sim

CT = {"arch": "amd64", "hostname": "llm", "memory": "2048", "ostype": "debian", "tags": "provision",
      "rootfs": "local-lvm:vm-120-disk-0,size=8G", "unprivileged": "1", "features": "nesting=1,keyctl=1",
      "net0": "name=eth0,bridge=vmbr0,ip=dhcp,type=veth,hwaddr=BC:24:11:00:00:01"}
SEP_ID, SEP_SECRET = "provision@pve!sep", "sep-secret"
ALL_CT_PRIVS = ["VM.Audit", "VM.Allocate", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
                "VM.Config.Options", "VM.Config.Disk", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
                "Datastore.Audit", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "SDN.Use"]


def with_privsep_token(sim: Sim, privs: list[str], *, path: str = "/", propagate: int = 1,
                       token_acl: bool = True) -> None:
    """provision@pve with role Provision on ``path``; its privsep token gets the same ACL."""
    sim.settings(
        tokens={"root@pam!provision": "0b0e6f5e-7d7a-4b59-9a3c-sim-secret",
                SEP_ID: {"secret": SEP_SECRET, "privsep": 1}},
        roles={"Provision": privs},
        acl=[{"path": path, "roles": ["Provision"], "propagate": propagate, "users": ["provision@pve"],
              "tokens": [SEP_ID] if token_acl else []}])


def test_a_fresh_privsep_token_has_no_rights_and_sees_no_guests(sim: Sim) -> None:
    sim.write_ct(120, CT)
    with_privsep_token(sim, ALL_CT_PRIVS, token_acl=False)  # the user has rights, the token none
    t = sim.token(SEP_ID, SEP_SECRET)
    r = t.get(f"{sim.base}/nodes/pve/lxc/120/config")
    assert (r.status_code, r.reason) == (403, "Permission check failed (/vms/120, VM.Audit)")
    # /cluster/resources does not refuse: it silently leaves the guest out
    r = t.get(f"{sim.base}/cluster/resources", params={"type": "vm"})
    assert r.status_code == 200 and r.json()["data"] == []
    assert t.get(f"{sim.base}/nodes/pve/lxc").json()["data"] == []
    assert t.get(f"{sim.base}/access/permissions").json()["data"] == {}
    # the full token (privsep 0) sees it
    full = sim.token()
    assert [e["vmid"] for e in full.get(f"{sim.base}/cluster/resources", params={"type": "vm"}).json()["data"]] == [120]


def test_privsep_token_has_the_intersection_of_its_and_its_users_acls(sim: Sim) -> None:
    sim.write_ct(120, CT)
    sim.settings(tokens={SEP_ID: {"secret": SEP_SECRET, "privsep": 1}},
                 roles={"Reader": ["VM.Audit"], "Writer": ["VM.Audit", "VM.Config.Memory"]},
                 acl=[{"path": "/vms", "roles": ["Reader"], "users": ["provision@pve"]},
                      {"path": "/vms", "roles": ["Writer"], "tokens": [SEP_ID]}])
    t = sim.token(SEP_ID, SEP_SECRET)
    assert t.get(f"{sim.base}/nodes/pve/lxc/120/config").status_code == 200
    r = t.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"memory": "4096"})
    # the schema's "any of" check comes first (HTTPServer.pm:174) and names every privilege
    assert (r.status_code, r.reason) == (403, "Permission check failed (/vms/120, VM.Config.Disk|"
                                              "VM.Config.CPU|VM.Config.Memory|VM.Config.Network|VM.Config.Options)")
    perms = t.get(f"{sim.base}/access/permissions", params={"path": "/vms/120"}).json()["data"]
    assert perms == {"/vms/120": {"VM.Audit": 1}}


def test_each_config_key_needs_its_own_privilege(sim: Sim) -> None:
    sim.write_ct(120, CT)
    with_privsep_token(sim, [p for p in ALL_CT_PRIVS if p != "VM.Config.Network"])
    t = sim.token(SEP_ID, SEP_SECRET)
    assert t.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"memory": "4096", "cores": "2"}).status_code == 200
    for data in ({"nameserver": "10.0.3.1"}, {"hostname": "other"},
                 {"net0": "name=eth0,bridge=vmbr0,ip=dhcp"}):
        r = t.put(f"{sim.base}/nodes/pve/lxc/120/config", data=data)
        assert (r.status_code, r.reason) == (403, "Permission check failed (/vms/120, VM.Config.Network)"), data


def test_net_needs_sdn_use_on_its_bridge(sim: Sim) -> None:
    sim.write_ct(120, CT)
    with_privsep_token(sim, [p for p in ALL_CT_PRIVS if p != "SDN.Use"])
    r = sim.token(SEP_ID, SEP_SECRET).put(f"{sim.base}/nodes/pve/lxc/120/config",
                                          data={"net0": "name=eth0,bridge=vmbr0,ip=dhcp"})
    assert (r.status_code, r.reason) == (
        403, "Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)")


def test_acl_without_propagate_stops_at_its_path(sim: Sim) -> None:
    sim.write_ct(120, CT)
    with_privsep_token(sim, ALL_CT_PRIVS, path="/vms", propagate=0)
    r = sim.token(SEP_ID, SEP_SECRET).get(f"{sim.base}/nodes/pve/lxc/120/config")
    assert r.status_code == 403


def test_removing_a_feature_flag_is_root_only_on_an_unprivileged_ct(sim: Sim) -> None:
    """Old and new features are compared flag by flag (pve-container LXC.pm:1690-1726):
    dropping keyctl from nesting=1,keyctl=1 is a change of keyctl."""
    sim.write_ct(120, CT)
    r = sim.token().put(f"{sim.base}/nodes/pve/lxc/120/config", data={"features": "nesting=1"})
    assert (r.status_code, r.reason) == (
        403, "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)")
    assert sim.ticket().put(f"{sim.base}/nodes/pve/lxc/120/config", data={"features": "nesting=1"}).status_code == 200


def test_toggling_nesting_needs_vm_allocate(sim: Sim) -> None:
    sim.write_ct(120, {**CT, "features": "nesting=1"})
    with_privsep_token(sim, [p for p in ALL_CT_PRIVS if p != "VM.Allocate"])
    r = sim.token(SEP_ID, SEP_SECRET).put(f"{sim.base}/nodes/pve/lxc/120/config", data={"features": "nesting=0"})
    assert (r.status_code, r.reason) == (403, "Permission check failed (/vms/120, VM.Allocate)")


def _create(sim: Sim, session, vmid: int, **extra: str):
    params = {"vmid": str(vmid), "ostemplate": "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.gz",
              "rootfs": "local-lvm:4", "hostname": "new", "memory": "512", **extra}
    return session.post(f"{sim.base}/nodes/pve/lxc", data=params)


@pytest.mark.parametrize("missing, message", [
    ("VM.Allocate", "Permission check failed"),
    ("Datastore.AllocateSpace", "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"),
    ("VM.Config.Memory", "Permission check failed (/vms/130, VM.Config.Memory)"),
])
def test_create_needs_allocate_storage_and_config_privileges(sim: Sim, missing: str, message: str) -> None:
    with_privsep_token(sim, [p for p in ALL_CT_PRIVS if p != missing])
    r = _create(sim, sim.token(SEP_ID, SEP_SECRET), 130, unprivileged="1")
    assert (r.status_code, r.reason) == (403, message)
    assert not (sim.root / "etc/pve/lxc/130.conf").exists()


def test_privileged_create_needs_sys_modify_on_9_only(sim: Sim) -> None:
    """pve-container 6.0.6 (PVE 9): create_vm checks Sys.Modify on / for a privileged CT."""
    with_privsep_token(sim, ALL_CT_PRIVS)
    r = _create(sim, sim.token(SEP_ID, SEP_SECRET), 131, unprivileged="0")
    if sim.api.version == "8.4":
        assert r.status_code == 200, r.reason
        sim.wait_task(sim.token(SEP_ID, SEP_SECRET), r.json()["data"])
    else:
        assert (r.status_code, r.reason) == (403, "Permission check failed (/, Sys.Modify)")


def test_a_token_reads_its_own_tasks_but_not_others(sim: Sim) -> None:
    sim.write_ct(120, CT)
    with_privsep_token(sim, ALL_CT_PRIVS)
    t = sim.token(SEP_ID, SEP_SECRET)
    upid = t.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"]
    assert sim.wait_task(t, upid)["exitstatus"] == "OK"
    other = sim.token().post(f"{sim.base}/nodes/pve/lxc/120/status/stop").json()["data"]
    r = t.get(f"{sim.base}/nodes/pve/tasks/{other}/status")
    assert (r.status_code, r.reason) == (403, "Permission check failed (/nodes/pve, Sys.Audit)")


def test_roles_are_pves() -> None:
    roles = builtin_roles("9.1")
    assert "Sys.Modify" not in roles["PVEAdmin"] and "Sys.Modify" in roles["Administrator"]
    assert roles["PVEVMUser"] >= {"VM.PowerMgmt", "VM.Audit"} and "VM.Allocate" not in roles["PVEVMUser"]
    assert "VM.Monitor" in builtin_roles("8.4")["PVEVMAdmin"] and "VM.Monitor" not in roles["PVEVMAdmin"]
    acl = Access({"acl": [{"path": "/vms/120", "roles": ["NoAccess"], "users": ["u@pve"]},
                          {"path": "/", "roles": ["PVEVMAdmin"], "users": ["u@pve"]}]})
    assert acl.permissions("u@pve", "/vms/121")["VM.Allocate"] is True
    assert acl.permissions("u@pve", "/vms/120") == {}
    assert acl.permissions("root@pam", "/anything")["Sys.Modify"] is True
