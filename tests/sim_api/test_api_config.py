"""PUT/GET config over HTTPS: schema errors, root-only keys, digest, pending per version."""

from __future__ import annotations

import hashlib
import re

import pytest

from .conftest import Sim

CT = {"arch": "amd64", "hostname": "llm", "memory": "2048", "ostype": "debian",
      "rootfs": "local-lvm:vm-120-disk-0,size=8G", "unprivileged": "1"}
CONFIG = "/nodes/pve/lxc/120/config"
# a device node that exists on every Linux host; /dev/nvidia* may not exist here
HOST_DEV = "/dev/null"


def conf_text(sim: Sim) -> str:
    return (sim.root / "etc/pve/lxc/120.conf").read_text()


def test_bad_dev_is_rejected_with_pve_400_shape(sim: Sim) -> None:
    sim.write_ct(120, CT)
    r = sim.ticket().put(sim.base + CONFIG, data={"dev0": "/dev/nvidia0,gid=abc", "dev1": "/dev/x,color=red"})
    assert (r.status_code, r.reason) == (400, "Parameter verification failed.")
    assert r.json() == {"data": None, "message": "Parameter verification failed.\n", "errors": {
        "dev0": "invalid format - format error\ndev0.gid: type check ('integer') failed - got 'abc'\n",
        "dev1": "invalid format - invalid key in comma-separated list property: color\n"}}


def test_unknown_key_is_rejected(sim: Sim) -> None:
    sim.write_ct(120, CT)
    r = sim.ticket().put(sim.base + CONFIG, data={"lxc.cgroup2.devices.allow": "c 195:* rwm"})
    assert r.status_code == 400
    assert r.json()["errors"] == {"lxc.cgroup2.devices.allow": "property is not defined in schema "
                                  "and the schema does not allow additional properties"}


def test_token_is_never_root_for_devices(sim: Sim) -> None:
    sim.write_ct(120, CT)
    r = sim.token().put(sim.base + CONFIG, data={"dev0": f"{HOST_DEV},gid=44"})
    assert (r.status_code, r.reason) == (
        403, "Permission check failed (configuring device passthrough is only allowed for root@pam)")
    assert r.json() == {"data": None, "message": "Permission check failed (configuring device "
                                                 "passthrough is only allowed for root@pam)\n"}
    assert "dev0" not in conf_text(sim)
    # deleting a device is just as root-only
    sim.write_ct(120, {**CT, "dev0": HOST_DEV})
    assert sim.token().put(sim.base + CONFIG, data={"delete": "dev0"}).status_code == 403
    # the password ticket of root@pam may
    assert sim.ticket().put(sim.base + CONFIG, data={"dev0": f"{HOST_DEV},gid=44"}).status_code == 200
    assert f"dev0: {HOST_DEV},gid=44\n" in conf_text(sim)


@pytest.mark.parametrize("data, message", [
    ({"mp0": "/srv/models,mp=/models"}, "mount point type bind is only allowed for root@pam"),
    ({"features": "nesting=1,keyctl=1"}, "changing feature flags (except nesting) is only allowed for root@pam"),
    ({"hookscript": "local:snippets/hook.sh"}, "changing the hookscript is only allowed for root@pam"),
])
def test_other_root_only_keys(sim: Sim, data: dict, message: str) -> None:
    sim.write_ct(120, CT)
    r = sim.token().put(sim.base + CONFIG, data=data)
    assert (r.status_code, r.json()["message"]) == (403, f"Permission check failed ({message})\n")
    # root may; a hookscript must exist and be executable (src/PVE/LXC/Config.pm:1349-1350)
    hook = sim.root / "storage" / "local" / "snippets" / "hook.sh"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert sim.ticket().put(sim.base + CONFIG, data=data).status_code == 200


def test_nesting_alone_is_allowed_for_a_token_on_unprivileged_only(sim: Sim) -> None:
    sim.write_ct(120, CT)
    assert sim.token().put(sim.base + CONFIG, data={"features": "nesting=1"}).status_code == 200
    sim.write_ct(120, {**CT, "unprivileged": "0"})
    r = sim.token().put(sim.base + CONFIG, data={"features": "nesting=1"})
    assert r.json()["message"] == ("Permission check failed (changing feature flags for privileged "
                                   "container is only allowed for root@pam)\n")


def test_missing_host_device(sim: Sim) -> None:
    sim.write_ct(120, CT)
    r = sim.ticket().put(sim.base + CONFIG, data={"dev0": "/dev/nvidia-nope"})
    assert (r.status_code, r.reason) == (500, "Device /dev/nvidia-nope does not exist")
    assert r.json() == {"data": None, "message": "Device /dev/nvidia-nope does not exist\n"}
    r = sim.ticket().put(sim.base + CONFIG, data={"dev0": "/dev/shm"})
    assert r.json()["message"] == "/dev/shm is not a device\n"


def test_digest_conflict(sim: Sim) -> None:
    sim.write_ct(120, CT)
    s = sim.token()
    got = s.get(sim.base + CONFIG).json()["data"]
    assert got["digest"] == hashlib.sha1(conf_text(sim).encode()).hexdigest()
    assert s.put(sim.base + CONFIG, data={"cores": 2, "digest": got["digest"]}).status_code == 200
    r = s.put(sim.base + CONFIG, data={"cores": 4, "digest": got["digest"]})
    assert (r.status_code, r.json()["message"]) == (
        500, "detected modified configuration - file changed by other user? Try again.\n")
    assert "cores: 2\n" in conf_text(sim)


def test_delete_and_tags_normalised(sim: Sim) -> None:
    sim.write_ct(120, {**CT, "swap": "512", "cores": "2"})
    s = sim.token()
    assert s.put(sim.base + CONFIG, data={"delete": "swap,cores", "tags": "LLM;gpu,llm Zeta"}).status_code == 200
    data = s.get(sim.base + CONFIG).json()["data"]
    assert "swap" not in data and "cores" not in data
    assert data["tags"] == "gpu;llm;zeta"
    r = s.put(sim.base + CONFIG, data={"delete": "memory"})
    assert r.json()["message"] == "unable to delete required option 'memory'\n"
    r = s.put(sim.base + CONFIG, data={"delete": "cores", "cores": 2})
    assert r.json()["errors"] == {"delete": "you can't use '-cores' and -delete cores' at the same time"}
    r = s.put(sim.base + CONFIG, data={"unprivileged": 0})
    assert r.json()["message"] == "unable to modify read-only option: 'unprivileged'\n"
    assert s.put(sim.base + CONFIG, data={}).json()["message"] == "no options specified\n"


def test_config_of_missing_ct(sim: Sim) -> None:
    r = sim.token().get(sim.base + "/nodes/pve/lxc/999/config")
    assert (r.status_code, r.json()["message"]) == (
        500, "Configuration file 'nodes/pve/lxc/999.conf' does not exist\n")


def test_description_round_trip(sim: Sim) -> None:
    sim.write_ct(120, CT)
    s = sim.token()
    assert s.put(sim.base + CONFIG, data={"description": "GPU: yes\n100% local"}).status_code == 200
    assert conf_text(sim).startswith("#GPU%3A yes\n#100%25 local\n")
    assert s.get(sim.base + CONFIG).json()["data"]["description"] == "GPU: yes\n100% local\n"


def test_pending_on_running_ct_pve9(sim9: Sim) -> None:
    """PVE 9: new devN hot-plugs; features and edits of an existing devN stay pending."""
    sim = sim9
    sim.write_ct(120, {**CT, "dev0": HOST_DEV}, running=True)
    s = sim.ticket()
    r = s.put(sim.base + CONFIG, data={
        "dev1": f"{HOST_DEV},gid=44", "dev0": f"{HOST_DEV},mode=0666", "features": "nesting=1",
        "hostname": "llm2", "memory": 4096, "tags": "b;a"})
    assert r.status_code == 200, r.text
    pending = {p["key"]: p for p in s.get(sim.base + "/nodes/pve/lxc/120/pending").json()["data"]}
    assert pending["dev1"] == {"key": "dev1", "value": f"{HOST_DEV},gid=44"}
    assert pending["dev0"] == {"key": "dev0", "value": HOST_DEV, "pending": f"{HOST_DEV},mode=0666"}
    assert pending["features"] == {"key": "features", "pending": "nesting=1"}
    assert pending["hostname"] == {"key": "hostname", "value": "llm2"}
    assert pending["memory"] == {"key": "memory", "value": 4096}  # typed like PVE
    assert pending["tags"] == {"key": "tags", "value": "a;b"}
    assert sim.backend.hotplugged == [(120, "dev1", f"{HOST_DEV},gid=44")]
    current = s.get(sim.base + CONFIG, params={"current": 1}).json()["data"]
    with_pending = s.get(sim.base + CONFIG).json()["data"]
    assert "features" not in current and with_pending["features"] == "nesting=1"
    assert current["dev0"] == HOST_DEV and with_pending["dev0"] == f"{HOST_DEV},mode=0666"


def test_pending_on_running_ct_pve8(sim8: Sim) -> None:
    """PVE 8: a new devN on a running CT stays pending until restart."""
    sim = sim8
    sim.write_ct(120, CT, running=True)
    s = sim.ticket()
    assert s.put(sim.base + CONFIG, data={"dev0": HOST_DEV, "cores": 2}).status_code == 200
    pending = {p["key"]: p for p in s.get(sim.base + "/nodes/pve/lxc/120/pending").json()["data"]}
    assert pending["dev0"] == {"key": "dev0", "pending": HOST_DEV}
    assert pending["cores"] == {"key": "cores", "value": 2}
    assert pending["digest"]["value"] == hashlib.sha1(conf_text(sim).encode()).hexdigest()
    assert sim.backend.hotplugged == []
    assert "[pve:pending]\ndev0: /dev/null\n" in conf_text(sim)


def test_pending_delete_on_running_ct_and_start_applies_it(sim: Sim) -> None:
    sim.write_ct(120, {**CT, "dev0": HOST_DEV, "swap": "512"}, running=True)
    s = sim.ticket()
    assert s.put(sim.base + CONFIG, data={"delete": "dev0,swap", "features": "nesting=1"}).status_code == 200
    pending = {p["key"]: p for p in s.get(sim.base + "/nodes/pve/lxc/120/pending").json()["data"]}
    assert pending["dev0"] == {"key": "dev0", "value": HOST_DEV, "delete": 1}
    assert "swap" not in pending  # swap deletion hot-plugs
    # revert drops a pending change
    assert s.put(sim.base + CONFIG, data={"revert": "features"}).status_code == 200
    assert "features" not in {p["key"] for p in s.get(sim.base + "/nodes/pve/lxc/120/pending").json()["data"]}
    # a stop + start folds the pending deletion in
    upid = s.post(sim.base + "/nodes/pve/lxc/120/status/stop").json()["data"]
    assert sim.wait_task(s, upid)["exitstatus"] == "OK"
    upid = s.post(sim.base + "/nodes/pve/lxc/120/status/start").json()["data"]
    assert sim.wait_task(s, upid)["exitstatus"] == "OK"
    text = conf_text(sim)
    assert "dev0" not in text and "[pve:pending]" not in text


def test_stopped_ct_applies_at_once(sim: Sim) -> None:
    sim.write_ct(120, CT)
    s = sim.ticket()
    assert s.put(sim.base + CONFIG, data={"dev0": HOST_DEV, "features": "nesting=1",
                                          "net0": "bridge=vmbr0,name=eth0,ip=dhcp"}).status_code == 200
    text = conf_text(sim)
    assert "[pve:pending]" not in text
    # re-printed like PVE's parse_lxc_network: type=veth, a generated BC:24:11 MAC
    assert re.search(r"^net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11(:[0-9A-F]{2}){3},ip=dhcp,type=veth$",
                     text, re.M)
    assert s.get(sim.base + "/nodes/pve/lxc/120/pending").json()["data"][0]["key"] == "arch"
