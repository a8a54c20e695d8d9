"""Issue 20 on the simulated node: never leave the host worse than it was.

Each test names the point of issue 20 it covers; each failed against the code before its fix.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner.sim.hostfile import write_host_file
from provision_cli import last_json, provision_cli

pytestmark = pytest.mark.sim


def provision(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI; `up`/`plan` limited to the container step unless the test says otherwise."""
    if any(a in ("up", "plan") for a in args[:3]) and "--only" not in args:
        args = (*args, "--only", "container")
    return provision_cli(*args, check=check, input=input)


def conf_exists(sim_node, vmid: int) -> bool:
    code, _, _ = sim_node.run(f"test -e /etc/pve/lxc/{vmid}.conf")
    return code == 0


def test_no_terminal_and_no_yes_refuses_up_and_down(sim_node, tmp_path: Path) -> None:
    """Point 2: `echo n | provision down` destroyed the CT, `echo n | provision up` applied."""
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=181, gpu=False)
    try:
        up = provision("up", str(path), input="n\n", check=False)
        assert up.returncode == 1, up.stderr
        assert "needs confirmation" in up.stderr and "stdin is not a terminal" in up.stderr
        assert "pass --yes" in up.stderr
        assert "create container" in up.stderr  # the plan is shown, so the refusal says what was not done
        assert not conf_exists(sim_node, 181)
        provision("up", str(path), "--yes")
        again = provision("up", str(path), input="n\n")  # nothing to change: no question, exit 0
        assert "no changes" in again.stderr
        down = provision("down", str(path), input="n\n", check=False)
        assert down.returncode == 1, down.stderr
        assert "destroying the container needs confirmation" in down.stderr and "--yes" in down.stderr
        assert conf_exists(sim_node, 181)
        json_down = provision("--json", "down", str(path), check=False)
        assert json_down.returncode == 1 and last_json(json_down)["error"] == "RefusedError"
        assert conf_exists(sim_node, 181)
    finally:
        provision("down", str(path), "--yes", check=False)
    assert not conf_exists(sim_node, 181)


def test_run_lock_is_the_containers_and_down_takes_it(sim_node, tmp_path: Path) -> None:
    """Point 4: the lock was per hostname (two files with one vmid applied at once) and `down`
    ignored it. Now it is node + vmid; `vmid: auto` finds the container by hostname first."""
    from provisioner.config import load
    from provisioner.engine import run
    from provisioner.engine.lock import ContainerLock

    a = write_host_file(tmp_path / "a.yaml", sim_node.conn, vmid=182, hostname="lock-a", gpu=False)
    b = write_host_file(tmp_path / "b.yaml", sim_node.conn, vmid=182, hostname="lock-b", gpu=False)
    auto = write_host_file(tmp_path / "auto.yaml", sim_node.conn, vmid=182, hostname="lock-a", gpu=False,
                           extra={"container": {"vmid": "auto"}})
    provision("up", str(a), "--yes")
    cfg = load(a).config
    conn = run.connect(cfg)
    try:
        with ContainerLock(cfg, conn) as held:
            assert held.names() == [f"{sim_node.node}-ct182"]
            for path, cmd in ((b, "up"), (auto, "up"), (a, "down")):
                proc = provision(cmd, str(path), "--yes", check=False)
                assert proc.returncode == 1, (cmd, path.name, proc.stderr)
                assert f"another `provision` run holds the lock for {sim_node.node}-ct182" in proc.stderr
        assert conf_exists(sim_node, 182)
        _, out, _ = sim_node.run("grep ^hostname: /etc/pve/lxc/182.conf")
        assert out.strip() == "hostname: lock-a"
    finally:
        conn.close()
        provision("down", str(a), "--yes", check=False)
    assert not conf_exists(sim_node, 182)


def _with(path: Path, dest: Path, **container: object) -> Path:
    import yaml

    data = yaml.safe_load(path.read_text())
    data["container"].update(container)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _immutable_resolv(sim_node, vmid: int) -> None:
    code, _, err = sim_node.run(f"pct exec {vmid} -- chattr +i /etc/resolv.conf")  # privileged: it may
    assert code == 0, err


def _status(sim_node, vmid: int) -> str:
    return sim_node.run(f"pct status {vmid}")[1].strip()


def test_restart_with_an_immutable_resolv_conf_does_not_leave_the_ct_stopped(sim_node, tmp_path: Path) -> None:
    """Point 1: `up --restart` with pending keys rebooted before the resolv fix: rc 1, CT stopped."""
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=183, gpu=False)
    try:
        provision("up", str(path), "--yes")
        # a nameserver change stays pending on a running CT (the first up leaves it so); +i makes the
        # reboot's start fail
        pending = _with(path, tmp_path / "ns1.yaml", nameserver="10.0.3.1 9.9.9.9")
        provision("up", str(pending), "--yes")
        _immutable_resolv(sim_node, 183)
        rep = last_json(provision("--json", "up", str(pending), "--yes", "--restart", "--only", "resolv,container"))
        assert [(c["step"], c["action"]) for c in rep["applied"]] == [("resolv", "fix"), ("container", "restart")]
        assert _status(sim_node, 183) == "status: running"
        # --only container: no resolv step; the failed reboot is caught, fixed through pct mount, started
        again = _with(path, tmp_path / "ns2.yaml", nameserver="10.0.3.1")
        provision("up", str(again), "--yes")
        _immutable_resolv(sim_node, 183)
        rep = last_json(provision("--json", "up", str(again), "--yes", "--restart"))
        assert [(c["step"], c["action"]) for c in rep["applied"]] == [("container", "restart")]
        assert any("resolv.conf was immutable" in n and "pct mount" in n for n in rep["notes"]), rep["notes"]
        assert _status(sim_node, 183) == "status: running"
        _, out, _ = sim_node.run("pct exec 183 -- lsattr -d /etc/resolv.conf")
        assert "i" not in out.split()[0]
    finally:
        sim_node.run("pct exec 183 -- chattr -i /etc/resolv.conf")
        provision("down", str(path), "--yes", check=False)


def test_doctor_reads_a_stopped_containers_files_through_pct_mount(sim_node, tmp_path: Path) -> None:
    """Point 9: on a stopped CT doctor said the model was missing (it was not) and skipped DNS, so it
    never named the immutable resolv.conf that kept the CT from starting."""
    import json

    vmid = 184
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=False,
                           extra={"model": {"repo": "acme/tiny", "file": "tiny.gguf", "location": "container"}})
    try:
        provision("up", str(path), "--yes")
        code, _, err = sim_node.run(f"pct exec {vmid} -- sh -c 'mkdir -p /srv/models && "
                                    "head -c 4096 /dev/zero > /srv/models/tiny.gguf && chattr +i /etc/resolv.conf'")
        assert code == 0, err
        code, _, err = sim_node.run(f"pct stop {vmid}")
        assert code == 0, err

        def doctor(*extra: str) -> dict:
            proc = provision("--json", "doctor", str(path), *extra, check=False)
            return json.loads(proc.stdout.strip().splitlines()[-1])

        def finding(data: dict, fid: str) -> dict:
            return next(f for f in data["findings"] if f["id"] == fid)

        data = doctor()
        model = finding(data, "services.model_file")
        assert model["status"] == "ok", model
        dns = finding(data, "dns.immutable")
        assert dns["status"] == "fail" and f"CT {vmid} cannot start" in dns["title"], dns
        assert f"pct mount {vmid}" in dns["evidence"]["command"]
        assert any("through `pct mount" in s["reason"] for s in data["skipped"]), data["skipped"]
        _, conf, _ = sim_node.run(f"cat /etc/pve/lxc/{vmid}.conf")
        assert "lock:" not in conf  # doctor unmounted it again
        data = doctor("--fix", "--yes")
        assert finding(data, "dns.immutable")["status"] == "ok"
        code, _, err = sim_node.run(f"pct start {vmid}")
        assert code == 0, err
    finally:
        sim_node.run(f"pct exec {vmid} -- chattr -i /etc/resolv.conf")
        provision("down", str(path), "--yes", check=False)


def test_a_model_changed_in_place_is_found_by_deep_and_replaced_in_one_up(sim_node, tmp_path: Path) -> None:
    """Point 5: doctor did not see a model changed in place; the next up failed its checksum, deleted the
    model and exited 1 (a second up fetched it)."""
    import hashlib
    import json

    from provisioner.sim import assets

    vmid, model = 185, assets.smollm2_model()
    want = hashlib.sha256(model.read_bytes()).hexdigest()
    ct_file = f"/srv/models/{model.name}"
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=False,
                           extra={"model": {"path": str(model), "location": "container"}})

    def doctor(*extra: str) -> dict:
        proc = provision("--json", "doctor", str(path), *extra, check=False)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return next(f for f in data["findings"] if f["id"] == "services.model_verified")

    def ct_sha() -> str:
        return sim_node.run(f"pct exec {vmid} -- sha256sum {ct_file}")[1].split()[0]

    try:
        provision("up", str(path), "--yes", "--only", "container,model")
        deep = doctor("--deep")
        assert deep["status"] == "ok" and "sha256 verified" in deep["title"] and " read in " in deep["title"]
        # one byte changed, size and mtime kept: only --deep sees it
        code, _, err = sim_node.run(f"pct exec {vmid} -- sh -c 't=$(stat -c %Y {ct_file}); printf X | dd of={ct_file} "
                                    f"bs=1 seek=4096 conv=notrunc 2>/dev/null; touch -d @$t {ct_file}'")
        assert code == 0, err
        assert doctor()["status"] == "ok"
        deep = doctor("--deep")
        assert deep["status"] == "fail" and "is not the file that was verified" in deep["title"], deep
        assert f"rm {ct_file}.provision.json" in deep["fix"]
        # its mtime moves too: up sees "changed since it was verified", verifies, pushes again, in one run
        sim_node.run(f"pct exec {vmid} -- touch {ct_file}")
        rep = last_json(provision("--json", "up", str(path), "--yes", "--only", "container,model"))
        assert [(c["step"], c["action"]) for c in rep["applied"]] == [("model", "push")]
        assert ct_sha() == want
        assert doctor("--deep")["status"] == "ok"
    finally:
        provision("down", str(path), "--yes", check=False)


def test_a_host_driver_the_repository_lacks_is_refused_before_anything_moves(sim_node, tmp_path: Path) -> None:
    """Point 8: for a host driver NVIDIA's repository does not have, the plan promised it, the pin released
    the holds, verify failed misleadingly, and doctor's fix could not work."""
    import json

    vmid = 186
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=True,
                           extra={"gpu": {"share": True}})  # the node's one GPU, whoever else has it
    steps = "container,gpu,driver"
    try:
        provision("up", str(path), "--yes", "--only", steps)
        _, held_before, _ = sim_node.run(f"pct exec {vmid} -- apt-mark showhold")
        sim_node.faults.upgrade_host_driver("580.65.06")  # not in the simulated NVIDIA repository
        for cmd in (("plan",), ("up", "--yes")):
            proc = provision(*cmd, str(path), "--only", steps, check=False)
            assert proc.returncode == 1, proc.stderr
            assert "has no nvidia-driver-cuda, libcuda1, libnvidia-ml1 580.65.06" in proc.stderr, proc.stderr
            assert "580.105.08" in proc.stderr and "host.driver.version" in proc.stderr
        _, held_after, _ = sim_node.run(f"pct exec {vmid} -- apt-mark showhold")
        assert held_after == held_before and "nvidia-driver-cuda" in held_after  # nothing moved
        proc = provision("--json", "doctor", str(path), check=False)
        f = next(f for f in json.loads(proc.stdout.strip().splitlines()[-1])["findings"]
                 if f["id"] == "driver.userspace")
        assert f["status"] == "fail" and not f["fixable"] and "provision host" in f["fix"], f
    finally:
        sim_node.faults.upgrade_host_driver("580.95.05")
        provision("down", str(path), "--yes", check=False)


@pytest.mark.parametrize("auth", ["token", "password"])
def test_a_failed_hot_plug_shows_pves_reason_per_key(sim_node, tmp_path: Path, auth: str) -> None:
    """Point 12: up printed only `400 Parameter verification failed.`, not PVE's per-key errors."""
    vmid = 187 if auth == "token" else 188
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=False, auth=auth)
    try:
        provision("up", str(path), "--yes")
        missing = tmp_path / "not-there"  # a bind mount whose source does not exist: the hot-plug fails
        bad = _with(path, tmp_path / "bad.yaml", mounts=[{"host": str(missing), "path": "/srv/data"}])
        proc = provision("up", str(bad), "--yes", check=False)
        assert proc.returncode == 1, proc.stderr
        assert "Parameter verification failed" in proc.stderr
        assert f"mp0: unable to hotplug mp0: mount point '{missing}' does not exist" in proc.stderr, proc.stderr
        assert "output (tail)" not in proc.stderr  # PVE's reason is the message, not buried in a log tail
        assert f"nothing was written; fix the cause PVE names above, or stop the container (`pct stop {vmid}`)" \
            in proc.stderr
    finally:
        provision("down", str(path), "--yes", check=False)


def test_up_reports_the_whole_wall_time(sim_node, tmp_path: Path) -> None:
    """Point 15: the reported figure left out Python's start-up, the imports and the lock (~1.8 s)."""
    import time

    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=189, gpu=False)
    try:
        provision("up", str(path), "--yes")
        t0 = time.perf_counter()
        rep = last_json(provision("--json", "up", str(path), "--yes"))
        outside = time.perf_counter() - t0
        assert rep["applied"] == []
        t = rep["timings"]
        assert {"startup", "lock"} <= set(t) and t["startup"] > 0 and t["lock"] > 0
        # everything but the interpreter's exit is in it, and its parts add up
        assert 0.8 * outside <= rep["wall_seconds"] <= outside, (rep["wall_seconds"], outside)
        assert rep["wall_seconds"] >= t["startup"] + t["lock"] + rep["seconds"] - 0.05
        text = provision("up", str(path), "--yes").stderr
        assert "nothing changed (" in text and "s: start-up " in text and ", lock " in text and ", run " in text
    finally:
        provision("down", str(path), "--yes", check=False)


def test_a_stopped_containers_plan_lists_only_what_up_does(sim_node, tmp_path: Path) -> None:
    """Point 16: a stopped CT's plan listed a reinstall (from no facts) that `up` does not do."""
    vmid = 180
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=False)
    try:
        provision("up", str(path), "--yes")
        code, _, err = sim_node.run(f"pct stop {vmid}")
        assert code == 0, err
        rep = last_json(provision_cli("--json", "plan", str(path)))  # every step
        assert [(c["step"], c["action"]) for c in rep["planned"]] == [("container", "start")], rep["planned"]
        assert any(f"CT {vmid} is stopped: " in n and "llama" in n for n in rep["notes"]), rep["notes"]
    finally:
        provision("down", str(path), "--yes", check=False)


def test_a_wrong_api_token_names_what_to_check(sim_node, tmp_path: Path) -> None:
    """Point 16: `401 ... errors: b''` and no fix."""
    secret = tmp_path / "wrong-secret"
    secret.write_text("00000000-0000-0000-0000-000000000000\n")
    secret.chmod(0o600)
    path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=179, gpu=False,
                           extra={"proxmox": {"auth": {"token_secret": {"file": str(secret)}}}})
    proc = provision("plan", str(path), check=False)
    assert proc.returncode == 1
    assert "b''" not in proc.stderr and "401" in proc.stderr, proc.stderr
    assert "was refused: check proxmox.auth.token_id and that the secret source" in proc.stderr


def test_doctor_fix_leaves_an_unmarked_container_alone(sim_node, tmp_path: Path) -> None:
    """Point 3: on a container we did not create, doctor --fix added dev0-dev3."""
    import json

    vmid = 178
    sim_node.create_ct(vmid, hostname=f"llm-{vmid}")  # no provision tag, no marker line
    try:
        path = write_host_file(tmp_path / "h.yaml", sim_node.conn, vmid=vmid, gpu=True)
        proc = provision("--json", "doctor", str(path), "--fix", "--yes", check=False)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        assert f"CT {vmid} was not created by provision" in data.get("not_fixed", ""), data
        assert "container.devices" not in data["fixed"]
        _, conf, _ = sim_node.run(f"cat /etc/pve/lxc/{vmid}.conf")
        assert "dev0" not in conf and "provision" not in conf
    finally:
        sim_node.destroy_ct(vmid)
