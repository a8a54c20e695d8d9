"""The core against the simulated node: the real CLI, real HTTPS, real SSH, real LXC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.sim.hostfile import write_host_file
from provision_cli import last_json, provision_cli

pytestmark = pytest.mark.sim


def provision(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI, limited to the container step (GPU, driver and services have their own tests)."""
    if args and args[-1] != "--only" and any(a in ("up", "plan") for a in args[:3]):
        args = (*args, "--only", "container")
    return provision_cli(*args, check=check)


as_json = last_json


@pytest.fixture(scope="module")
def created(sim_node, tmp_path_factory) -> Path:
    """CT 171 created by `provision up` (no GPU: the core only)."""
    path = write_host_file(tmp_path_factory.mktemp("core") / "host.yaml", sim_node.conn, vmid=171, gpu=False)
    first = as_json(provision("--json", "up", str(path), "--yes"))
    assert [c["action"] for c in first["applied"]] == ["create", "start"]
    return path


def test_second_up_changes_nothing_within_budget(created: Path) -> None:
    report = as_json(provision("--json", "up", str(created), "--yes"))
    assert report["applied"] == []
    assert report["api_calls"] <= 10
    assert report["ssh_round_trips"] <= 3


def test_plan_exit_code_is_2_only_with_pending_changes(created: Path, tmp_path: Path) -> None:
    assert provision("plan", str(created), "--exit-code").returncode == 0
    data = yaml.safe_load(created.read_text())
    data["container"]["cores"] = 3
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    proc = provision("plan", str(changed), "--exit-code", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cores: 2 → 3" in proc.stderr


def test_changed_key_converges_then_no_op(sim_node, created: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(created.read_text())
    data["container"]["memory_mb"] = 3072
    data["container"]["tags"] = ["Team-A"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    report = as_json(provision("--json", "up", str(changed), "--yes"))
    (update,) = report["applied"]
    assert update["action"] == "update"
    assert set(update["diff"]) == {"memory", "tags"}
    code, out, _ = sim_node.run("cat /etc/pve/lxc/171.conf")
    assert "memory: 3072" in out and "tags: provision;team-a" in out
    assert as_json(provision("--json", "up", str(changed), "--yes"))["applied"] == []


def test_unmarked_container_is_refused(sim_node, tmp_path: Path) -> None:
    sim_node.create_ct(172)
    try:
        path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=172, gpu=False)
        proc = provision("up", str(path), "--yes", check=False)
        assert proc.returncode == 1
        assert "CT 172 exists but was not created by provision" in proc.stderr
        assert "container.adopt: true" in proc.stderr
        down = provision("down", str(path), "--yes", check=False)
        assert down.returncode == 1 and "refusing to destroy it" in down.stderr
        code, out, _ = sim_node.run("test -e /etc/pve/lxc/172.conf && echo kept")
        assert out.strip() == "kept"
    finally:
        sim_node.destroy_ct(172)


def _api(sim_node, auth: str):
    from provisioner.connectors.pve import PVE, Credentials, Endpoint

    conn = sim_node.conn["api"]
    if auth == "token":
        creds = Credentials(token_id=conn["token_id"], token_secret=sim_node.token_secret)
    else:
        creds = Credentials(user="root@pam", password=sim_node.root_password)
    return PVE(Endpoint(host="127.0.0.1", port=conn["port"], node=sim_node.node,
                        fingerprint=conn["fingerprint"]), creds)


def test_root_only_keys_token_is_refused_by_the_api_password_is_not(sim_node, created: Path) -> None:
    from provisioner.errors import ProxmoxError

    token = _api(sim_node, "token")
    with pytest.raises(ProxmoxError) as info:
        token.put(token.ct(171, "config"), dev9="/dev/null")
    assert info.value.status == 403
    assert "configuring device passthrough is only allowed for root@pam" in str(info.value)
    root = _api(sim_node, "password")
    root.put(root.ct(171, "config"), dev9="/dev/null")
    root.put(root.ct(171, "config"), delete="dev9")


@pytest.mark.parametrize("auth", ["token", "password"])
def test_bind_mount_goes_the_right_root_path(sim_node, tmp_path: Path, auth: str) -> None:
    """A bind mount is root-only: through `pct set` over SSH with a token, through the API with root@pam."""
    vmid = 173 if auth == "token" else 174
    shared = tmp_path / "models"
    shared.mkdir()
    (shared / "marker").write_text("hello")
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=False, auth=auth,
                           extra={"container": {"mounts": [{"host": str(shared), "path": "/srv/models",
                                                            "read_only": True}]}})
    try:
        report = as_json(provision("--json", "-v", "up", str(path), "--yes"))
        assert [c["action"] for c in report["applied"]] == ["create", "start"]
        code, out, _ = sim_node.run(f"pct exec {vmid} -- cat /srv/models/marker")
        assert (code, out) == (0, "hello")
        assert as_json(provision("--json", "up", str(path), "--yes"))["applied"] == []
    finally:
        provision("down", str(path), "--yes", check=False)


def test_wrong_fingerprint_is_a_clear_error(sim_node, created: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(created.read_text())
    data["proxmox"]["fingerprint"] = ":".join(["AB"] * 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = provision("plan", str(bad), check=False)
    assert proc.returncode == 1
    assert "cannot reach the Proxmox API" in proc.stderr and "proxmox.fingerprint" in proc.stderr


def test_unknown_ssh_host_key_is_refused(sim_node, created: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(created.read_text())
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    data["ssh"]["known_hosts"] = str(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = provision("plan", str(bad), check=False)
    assert proc.returncode == 1
    assert f"the SSH host key of [127.0.0.1]:{sim_node.ssh_port} is not known" in proc.stderr
    assert "ssh-keyscan" in proc.stderr


def test_secrets_stay_out_of_json_output(sim_node, created: Path) -> None:
    proc = provision("--json", "status", str(created))
    assert sim_node.token_secret not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["container"]["vmid"] == 171


def test_down_removes_only_ours(sim_node, tmp_path: Path) -> None:
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=175, gpu=False)
    provision("up", str(path), "--yes")
    provision("down", str(path), "--yes")
    code, out, _ = sim_node.run("test -e /etc/pve/lxc/175.conf; echo $?")
    assert out.strip() == "1"


# -- issue 14: what a real PVE says -----------------------------------------------------------------

import contextlib  # noqa: E402

from provisioner.sim.pve.access import read_settings, write_settings  # noqa: E402


@contextlib.contextmanager
def role_without(sim_node, priv: str):
    """The node's restricted token (README's minimal role) with one privilege taken away."""
    before = read_settings(sim_node.sim_root)
    roles = {k: [p for p in v if p != priv] for k, v in before["roles"].items()}
    write_settings(sim_node.sim_root, {**before, "roles": roles})
    try:
        yield
    finally:
        write_settings(sim_node.sim_root, {**read_settings(sim_node.sim_root), "roles": before["roles"]})


def test_restricted_token_with_the_minimal_role_works(sim_node, tmp_path: Path) -> None:
    """README's recipe: a privilege-separated token with role Provision on / (an unprivileged CT)."""
    path = write_host_file(tmp_path / "r.yaml", sim_node.conn, vmid=176, gpu=False, auth="restricted",
                           extra={"container": {"unprivileged": True}})
    try:
        report = as_json(provision("--json", "up", str(path), "--yes"))
        assert [c["action"] for c in report["applied"]] == ["create", "start"]
        assert as_json(provision("--json", "up", str(path), "--yes"))["applied"] == []
    finally:
        provision("down", str(path), "--yes", check=False)


def test_restricted_token_missing_one_privilege_stops_before_any_change(sim_node, tmp_path: Path) -> None:
    """Without the preflight, `up` created the CT and then failed to start it (403 on VM.PowerMgmt)."""
    path = write_host_file(tmp_path / "r.yaml", sim_node.conn, vmid=177, gpu=False, auth="restricted",
                           extra={"container": {"unprivileged": True}})
    try:
        with role_without(sim_node, "VM.PowerMgmt"):
            proc = provision("up", str(path), "--yes", check=False)
        assert proc.returncode == 1
        assert "VM.PowerMgmt on /vms/177" in proc.stderr and "nothing was changed" in proc.stderr
        assert "pveum role modify Provision --append 1 --privs VM.PowerMgmt" in proc.stderr
        assert ("pveum acl modify / --users provision@pve --tokens 'provision@pve!provision' --roles Provision"
                in proc.stderr)
        code, out, _ = sim_node.run("test -e /etc/pve/lxc/177.conf; echo $?")
        assert out.strip() == "1", "no change may be made"
    finally:
        provision("down", str(path), "--yes", check=False)


def test_a_token_without_vm_audit_does_not_see_the_ct_and_is_stopped(sim_node, created: Path, tmp_path: Path) -> None:
    """/cluster/resources hides a guest the caller may not VM.Audit (pve-manager PVE/API2/Cluster.pm:588
    @14a22df): the preflight names the privilege instead of `up` trying to create CT 171 again."""
    blind = write_host_file(tmp_path / "blind.yaml", sim_node.conn, vmid=171, gpu=False, auth="restricted")
    with role_without(sim_node, "VM.Audit"):
        proc = provision("up", str(blind), "--yes", check=False)
    assert proc.returncode == 1 and "VM.Audit on /vms/171" in proc.stderr, proc.stderr
    assert "already exists" not in proc.stderr


def test_immutable_resolv_conf_on_a_stopped_ct_is_found_and_fixed(sim_node, created: Path) -> None:
    """The start task says only "startup for container '171' failed" (pve-container src/PVE/LXC.pm:
    3110-3122@94f5585): `up` looks at the file through pct mount + lsattr, fixes it, starts."""
    rootfs = "/var/lib/lxc/171/rootfs"
    code, _, err = sim_node.run(f"pct stop 171 && pct mount 171 && chattr +i {rootfs}/etc/resolv.conf && "
                                "pct unmount 171")
    assert code == 0, err
    try:
        report = as_json(provision("--json", "up", str(created), "--yes"))
        assert [c["action"] for c in report["applied"]][-1] == "start"  # (earlier tests changed its config)
        assert any("from the host (pct mount)" in n for n in report["notes"]), report["notes"]
        assert "running" in sim_node.run("pct status 171")[1]
    finally:
        sim_node.run(f"pct mount 171 2>/dev/null; chattr -i {rootfs}/etc/resolv.conf; pct unmount 171; "
                     "pct start 171 2>/dev/null; true")


def test_keys_pve_keeps_pending_are_applied_in_the_same_run_when_allowed(sim_node, created: Path,
                                                                          tmp_path: Path) -> None:
    """nameserver stays pending on a running CT (pve-container src/PVE/LXC/Config.pm:1624-1747
    @94f5585). The plan read /pending before the PUT; `up` re-reads it after."""
    data = yaml.safe_load(created.read_text())
    data["container"]["nameserver"] = "10.0.3.1 10.0.3.2"
    changed = tmp_path / "ns.yaml"
    changed.write_text(yaml.safe_dump(data))
    try:
        said = as_json(provision("--json", "up", str(changed), "--yes"))
        assert [c["action"] for c in said["applied"]] == ["update"]
        assert any("PVE keeps nameserver pending" in n and "--restart" in n for n in said["notes"]), said["notes"]
        assert "new nameserver: 10.0.3.1 10.0.3.2" in sim_node.run("pct pending 171")[1]
        done = as_json(provision("--json", "up", str(changed), "--yes", "--restart"))
        assert "restart" in [c["action"] for c in done["applied"]]
        code, out, _ = sim_node.run("pct pending 171; pct exec 171 -- cat /etc/resolv.conf")
        assert "new nameserver" not in out and "nameserver 10.0.3.2" in out
        # a change PVE keeps pending, with --restart from the start: applied in that same run
        data["container"]["nameserver"] = "10.0.3.1"
        back = tmp_path / "back.yaml"
        back.write_text(yaml.safe_dump(data))
        again = as_json(provision("--json", "up", str(back), "--yes", "--restart"))
        assert [c["action"] for c in again["applied"]] == ["update"]
        assert any("restarted in this run to apply nameserver" in n for n in again["notes"]), again["notes"]
        assert "new nameserver" not in sim_node.run("pct pending 171")[1]
    finally:
        provision("up", str(created), "--yes", "--restart", check=False)


def test_removing_a_feature_flag_goes_the_root_path(sim_node, tmp_path: Path) -> None:
    """Dropping keyctl from nesting=1,keyctl=1 is a change of keyctl: root-only (pve-container
    src/PVE/LXC.pm:1690-1726@94f5585). With a token it must go through `pct set`, not the API."""
    base = {"container": {"unprivileged": True, "features": {"nesting": True, "keyctl": True}}}
    path = write_host_file(tmp_path / "f.yaml", sim_node.conn, vmid=178, gpu=False, extra=base)
    try:
        provision("up", str(path), "--yes")
        assert "features: keyctl=1,nesting=1" in sim_node.run("pct config 178")[1]
        data = yaml.safe_load(path.read_text())
        data["container"]["features"]["keyctl"] = False
        off = tmp_path / "off.yaml"
        off.write_text(yaml.safe_dump(data))
        report = as_json(provision("--json", "-v", "up", str(off), "--yes"))
        assert [c["action"] for c in report["applied"]] == ["update"]
        assert any("features: root-only keys" in n and "pct set" in n for n in report["notes"]), report["notes"]
        out = sim_node.run("pct pending 178")[1]  # features stay pending on a running CT
        assert "new features: nesting=1" in out, out
    finally:
        provision("down", str(path), "--yes", check=False)
