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
