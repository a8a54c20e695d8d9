"""Tasks over HTTPS: create/start/stop/destroy, UPIDs, exit status, logs, faults, templates."""

from __future__ import annotations

import json
import re

import requests

from .conftest import Sim

TEMPLATE = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.gz"
UPID_RE = re.compile(r"UPID:pve:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:(\w+):([^:]*):([^:]+):")


def create(sim: Sim, s: requests.Session, vmid: int = 120, **extra: object) -> dict:
    r = s.post(f"{sim.base}/nodes/pve/lxc", data={
        "vmid": vmid, "ostemplate": TEMPLATE, "hostname": "llm", "storage": "local-lvm",
        "memory": 2048, "net0": "name=eth0,bridge=vmbr0,ip=dhcp", **extra})
    assert r.status_code == 200, r.text
    return sim.wait_task(s, r.json()["data"])


def test_create_task_upid_status_and_log(sim: Sim) -> None:
    s = sim.token()
    status = create(sim, s, password="secret-pw", **{"ssh-public-keys": "ssh-ed25519 AAAAC3Nz test"})
    m = UPID_RE.fullmatch(status["upid"])
    assert m and m.groups() == ("vzcreate", "120", "root@pam!provision")
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"
    assert (status["user"], status["tokenid"], status["type"], status["id"]) == (
        "root@pam", "provision", "vzcreate", "120")
    log = s.get(f"{sim.base}/nodes/pve/tasks/{status['upid']}/log", params={"start": 0, "limit": 500}).json()
    lines = [entry["t"] for entry in log["data"]]
    assert [entry["n"] for entry in log["data"]] == list(range(1, len(lines) + 1))
    assert lines[-1] == "TASK OK" and log["total"] == len(lines)
    assert not any("secret-pw" in line for line in lines)
    page = s.get(f"{sim.base}/nodes/pve/tasks/{status['upid']}/log", params={"start": 1, "limit": 1}).json()
    assert page["data"] == [{"n": 2, "t": lines[1]}]
    conf = s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert conf["rootfs"] == "local-lvm:vm-120-disk-0,size=4G"
    assert conf["ostype"] == "debian" and "lock" not in conf
    rootfs = sim.root / "storage/local-lvm/images/120/rootfs"
    assert (rootfs / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAAC3Nz test\n"
    assert (rootfs / "etc/shadow").read_text().startswith("root:$6$")


def test_unprivileged_default_differs_per_version(sim: Sim) -> None:
    s = sim.token()
    create(sim, s)
    conf = s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert conf.get("unprivileged", 0) == (1 if sim.api.version == "9.1" else 0)
    create(sim, s, vmid=121, unprivileged=1)
    assert s.get(f"{sim.base}/nodes/pve/lxc/121/config").json()["data"]["unprivileged"] == 1


def test_create_refusals(sim: Sim) -> None:
    s = sim.token()
    create(sim, s)
    r = s.post(f"{sim.base}/nodes/pve/lxc", data={"vmid": 120, "ostemplate": TEMPLATE})
    assert r.json()["message"] == "CT 120 already exists on node 'pve'\n"
    r = s.post(f"{sim.base}/nodes/pve/lxc", data={"vmid": 121, "ostemplate": TEMPLATE})
    assert r.json()["errors"] == {"storage": "storage 'local' does not support container directories"}
    r = s.post(f"{sim.base}/nodes/pve/lxc", data={"vmid": 122, "ostemplate": TEMPLATE,
                                                  "storage": "local-lvm", "dev0": "/dev/null"})
    assert r.status_code == 403
    status = create(sim, s, vmid=123, ostemplate="local:vztmpl/nope.tar.zst")
    assert status["exitstatus"] == "unable to create CT 123 - volume 'local:vztmpl/nope.tar.zst' does not exist"
    assert not (sim.root / "etc/pve/lxc/123.conf").exists()


def test_start_stop_and_state_errors(sim: Sim) -> None:
    s = sim.token()
    create(sim, s)
    r = s.post(f"{sim.base}/nodes/pve/lxc/120/status/stop")
    assert (r.status_code, r.json()["message"]) == (500, "CT 120 not running\n")
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"])
    assert status["exitstatus"] == "OK" and status["type"] == "vzstart"
    assert s.get(f"{sim.base}/nodes/pve/lxc/120/status/current").json()["data"]["status"] == "running"
    r = s.post(f"{sim.base}/nodes/pve/lxc/120/status/start")
    assert r.json()["message"] == "CT 120 already running\n"
    r = s.delete(f"{sim.base}/nodes/pve/lxc/120")
    assert r.json()["message"] == "unable to destroy CT 120 - container is running\n"
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/shutdown",
                                     data={"timeout": 5}).json()["data"])
    assert status["exitstatus"] == "OK"
    status = sim.wait_task(s, s.delete(f"{sim.base}/nodes/pve/lxc/120").json()["data"])
    assert status["exitstatus"] == "OK" and status["type"] == "vzdestroy"
    assert s.get(f"{sim.base}/nodes/pve/lxc").json()["data"] == []


def test_force_destroy_of_running_ct(sim: Sim) -> None:
    s = sim.token()
    create(sim, s, start=1)
    assert sim.backend.status(120) == "running"
    status = sim.wait_task(s, s.delete(f"{sim.base}/nodes/pve/lxc/120", params={"force": 1}).json()["data"])
    assert status["exitstatus"] == "OK"
    assert ("stop", 120) in sim.backend.calls and ("destroy", 120) in sim.backend.calls


def test_start_failure_becomes_exitstatus(sim: Sim) -> None:
    """A devN whose host node vanished after the PUT fails the start task with PVE's text: vm_start's
    update_lxc_config stats it first (pve-container src/PVE/LXC.pm:777, Tools.pm:157-167@94f5585)."""
    s = sim.token()
    create(sim, s)
    conf_path = sim.root / "etc/pve/lxc/120.conf"
    conf_path.write_text(conf_path.read_text() + "dev0: /dev/nvidia-gone\n")
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"])
    assert status["exitstatus"] == "Device /dev/nvidia-gone does not exist"
    log = s.get(f"{sim.base}/nodes/pve/tasks/{status['upid']}/log").json()["data"]
    assert log[-1]["t"] == "TASK ERROR: Device /dev/nvidia-gone does not exist"


def test_fail_next_task_fault(sim: Sim) -> None:
    s = sim.token()
    create(sim, s)
    sim.settings(fail_next_task={"type": "vzstart", "message": "injected: startup for container '120' failed"})
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"])
    assert status["exitstatus"] == "injected: startup for container '120' failed"
    assert "fail_next_task" not in json.loads((sim.root / "sim.json").read_text())
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"])
    assert status["exitstatus"] == "OK"
    flag = sim.root / "faults" / "fail_next_task.json"
    flag.parent.mkdir(exist_ok=True)
    flag.write_text(json.dumps({"type": "*", "message": "disk full"}))
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/stop").json()["data"])
    assert status["exitstatus"] == "disk full" and not flag.exists()


def test_running_task_status_has_no_exitstatus(sim: Sim) -> None:
    import threading
    s = sim.token()
    create(sim, s)
    gate = threading.Event()
    original = sim.backend.start

    def slow_start(vmid, conf, log, debug=False):  # type: ignore[no-untyped-def]
        gate.wait(10)
        original(vmid, conf, log)

    sim.backend.start = slow_start  # type: ignore[method-assign]
    upid = s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"]
    running = s.get(f"{sim.base}/nodes/pve/tasks/{upid}/status").json()["data"]
    assert running["status"] == "running" and "exitstatus" not in running
    gate.set()
    assert sim.wait_task(s, upid)["exitstatus"] == "OK"


def test_nextid_and_resources(sim: Sim) -> None:
    s = sim.token()
    assert s.get(f"{sim.base}/cluster/nextid").json()["data"] == 100
    create(sim, s, vmid=100)
    assert s.get(f"{sim.base}/cluster/nextid").json()["data"] == 101
    r = s.get(f"{sim.base}/cluster/nextid", params={"vmid": 100})
    assert (r.status_code, r.json()["errors"]) == (400, {"vmid": "VM 100 already exists"})
    assert s.get(f"{sim.base}/cluster/nextid", params={"vmid": 150}).json()["data"] == 150
    res = s.get(f"{sim.base}/cluster/resources", params={"type": "vm"}).json()["data"]
    assert [(x["id"], x["type"], x["node"], x["status"]) for x in res] == [("lxc/100", "lxc", "pve", "stopped")]
    r = s.get(f"{sim.base}/cluster/resources", params={"type": "bogus"})
    assert r.status_code == 400


def test_aplinfo_download_and_storage_content(sim: Sim) -> None:
    s = sim.token()
    index = s.get(f"{sim.base}/nodes/pve/aplinfo").json()["data"]
    names = {e["template"] for e in index}
    assert {"debian-12-standard_12.12-1_amd64.tar.zst", "debian-13-standard_13.1-2_amd64.tar.zst"} <= names
    r = s.post(f"{sim.base}/nodes/pve/aplinfo", data={"storage": "local", "template": "nope.tar.zst"})
    assert r.json()["errors"] == {"template": "no such template"}
    r = s.post(f"{sim.base}/nodes/pve/aplinfo",
               data={"storage": "local", "template": "debian-13-standard_13.1-2_amd64.tar.zst"})
    status = sim.wait_task(s, r.json()["data"])
    assert (status["type"], status["exitstatus"]) == ("download", "OK")
    content = s.get(f"{sim.base}/nodes/pve/storage/local/content", params={"content": "vztmpl"}).json()["data"]
    volids = [c["volid"] for c in content]
    assert "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst" in volids
    create(sim, s, vmid=130, ostemplate="local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst")
    assert (sim.root / "storage/local-lvm/images/130/rootfs/etc/os-release").exists()


def test_snapshots(sim: Sim) -> None:
    s = sim.token()
    create(sim, s)
    base = f"{sim.base}/nodes/pve/lxc/120/snapshot"
    status = sim.wait_task(s, s.post(base, data={"snapname": "before", "description": "clean"}).json()["data"])
    assert (status["type"], status["exitstatus"]) == ("vzsnapshot", "OK")
    again = sim.wait_task(s, s.post(base, data={"snapname": "before"}).json()["data"])
    assert again["exitstatus"] == "snapshot name 'before' already used"
    s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"cores": 4})
    snaps = s.get(base).json()["data"]
    assert [x["name"] for x in snaps] == ["before", "current"]
    assert snaps[0]["description"] == "clean\n" and isinstance(snaps[0]["snaptime"], int)
    assert snaps[1] == {"name": "current", "description": "You are here!", "running": 0, "parent": "before"}
    status = sim.wait_task(s, s.post(f"{base}/before/rollback").json()["data"])
    assert status["exitstatus"] == "OK"
    conf = s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert "cores" not in conf and conf["parent"] == "before"
    status = sim.wait_task(s, s.delete(f"{base}/before").json()["data"])
    assert status["exitstatus"] == "OK"
    assert [x["name"] for x in s.get(base).json()["data"]] == ["current"]
    assert "parent" not in s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert sim.wait_task(s, s.delete(f"{base}/nope").json()["data"])["exitstatus"] == \
        "snapshot 'nope' does not exist"
    r = s.post(f"{base}/nope/rollback")
    assert r.json()["message"] == "snapshot 'nope' does not exist\n"
    r = s.post(base, data={"snapname": "current"})
    assert r.json()["message"] == "unable to use snapshot name 'current' (reserved name)\n"


def test_snapshot_needs_the_storage_feature(sim: Sim) -> None:
    """A bind mount (host path) cannot be snapshotted: PVE fails the task."""
    s = sim.ticket()
    create(sim, s, mp0="/srv,mp=/srv")
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/snapshot",
                                     data={"snapname": "snap1"}).json()["data"])
    assert status["exitstatus"] == "snapshot feature is not available"


def test_consuming_a_fault_keeps_sim_json_private(sim: Sim) -> None:
    path = sim.root / "sim.json"
    path.chmod(0o600)
    s = sim.token()
    create(sim, s)
    sim.settings(fail_next_task={"type": "vzstart", "message": "boom"})
    path.chmod(0o600)
    status = sim.wait_task(s, s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"])
    assert status["exitstatus"] == "boom"
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["root_password"]


def test_new_volumes_are_named_like_pve(sim: Sim) -> None:
    s = sim.ticket()
    create(sim, s, rootfs="local-lvm:8", mp0="local-lvm:32,mp=/data", mp1="/srv/models,mp=/models,ro=1")
    conf = s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert conf["rootfs"] == "local-lvm:vm-120-disk-0,size=8G"
    assert conf["mp0"] == "local-lvm:vm-120-disk-1,mp=/data,size=32G"
    assert conf["mp1"] == "/srv/models,mp=/models,ro=1"
    assert s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"mp2": "local-lvm:0.5,mp=/x"}).status_code == 200
    assert s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]["mp2"] == \
        "local-lvm:vm-120-disk-2,mp=/x,size=512M"
    r = s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"mp3": "local:4,mp=/y"})
    assert r.json()["message"] == "storage 'local' does not allow content type 'rootdir' (Container)\n"
    # deleting a volume mount point keeps the volume as unusedN
    assert s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"delete": "mp0"}).status_code == 200
    conf = s.get(f"{sim.base}/nodes/pve/lxc/120/config").json()["data"]
    assert "mp0" not in conf and conf["unused0"] == "local-lvm:vm-120-disk-1"


def test_empty_task_log_is_no_content_and_the_first_real_line_is_not_skipped(sim: Sim) -> None:
    """An empty task log reads as [{n: 1, t: "no content"}] (pve-common src/PVE/Tools.pm:791-795
    @f665029). The connector neither prints it nor counts it as line 1."""
    import threading

    from provisioner.connectors.pve import PVE, Credentials, Endpoint

    from .conftest import TOKEN_ID, TOKEN_SECRET

    s = sim.token()
    create(sim, s)
    gate = threading.Event()
    original = sim.backend.start

    def quiet_then_talk(vmid, conf, log, debug=False):  # type: ignore[no-untyped-def]
        gate.wait(10)
        log("first real line")
        original(vmid, conf, log)

    sim.backend.start = quiet_then_talk  # type: ignore[method-assign]
    upid = s.post(f"{sim.base}/nodes/pve/lxc/120/status/start").json()["data"]
    r = s.get(f"{sim.base}/nodes/pve/tasks/{upid}/log", params={"start": 0})
    assert (r.json()["data"], r.json()["total"]) == ([{"n": 1, "t": "no content"}], 1)
    pve = PVE(Endpoint(host="127.0.0.1", port=sim.api.port, fingerprint=sim.api.fingerprint),
              Credentials(token_id=TOKEN_ID, token_secret=TOKEN_SECRET))
    seen: list[str] = []

    def on_log(line: str) -> None:
        seen.append(line)
        gate.set()  # the first poll has been read: let the task talk

    threading.Timer(1.0, gate.set).start()
    pve.wait_task(upid, on_log=on_log, poll=0.05)
    assert "no content" not in seen
    assert seen[0] == "first real line", seen
