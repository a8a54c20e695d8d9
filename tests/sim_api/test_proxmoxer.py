"""The simulated API as proxmoxer (the library our connector uses) sees it."""

from __future__ import annotations

import time

import proxmoxer
import pytest
from proxmoxer.core import ResourceException

from .conftest import ROOT_PASSWORD, TOKEN_SECRET, Sim

# proxmoxer cannot pin a fingerprint, so it runs unverified here (our connector pins it)
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def client(sim: Sim, *, token: bool):
    kw = dict(token_name="provision", token_value=TOKEN_SECRET) if token else dict(password=ROOT_PASSWORD)
    # verify_ssl=False only because proxmoxer cannot pin a fingerprint; our connector pins it
    return proxmoxer.ProxmoxAPI("127.0.0.1", port=sim.api.port, user="root@pam",
                                verify_ssl=False, **kw)


def wait(px, upid: str) -> dict:
    for _ in range(300):
        status = px.nodes("pve").tasks(upid).status.get()
        if status["status"] == "stopped":
            return status
        time.sleep(0.05)
    raise AssertionError("task did not finish")


@pytest.mark.parametrize("token", [True, False], ids=["token", "password"])
def test_create_and_configure(sim: Sim, token: bool) -> None:
    px = client(sim, token=token)
    assert px.version.get()["release"] == sim.api.version
    vmid = int(px.cluster.nextid.get())
    upid = px.nodes("pve").lxc.post(vmid=vmid, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.gz",
                                    storage="local-lvm", hostname="llm", unprivileged=1, memory=1024)
    assert wait(px, upid)["exitstatus"] == "OK"
    cfg = px.nodes("pve").lxc(vmid).config.get()
    px.nodes("pve").lxc(vmid).config.put(cores=4, tags="LLM;gpu", digest=cfg["digest"])
    assert px.nodes("pve").lxc(vmid).config.get()["tags"] == "gpu;llm"
    with pytest.raises(ResourceException) as exc:
        px.nodes("pve").lxc(vmid).config.put(cores=2, digest=cfg["digest"])
    assert exc.value.status_code == 500
    assert "detected modified configuration" in str(exc.value)
    with pytest.raises(ResourceException) as exc:
        px.nodes("pve").lxc(vmid).config.put(dev0="/dev/null,gid=abc")
    assert exc.value.status_code == 400
    assert exc.value.errors == {
        "dev0": "invalid format - format error\ndev0.gid: type check ('integer') failed - got 'abc'\n"}


def test_device_passthrough_needs_the_root_password_ticket(sim: Sim) -> None:
    sim.write_ct(120, {"arch": "amd64", "hostname": "a", "memory": "512",
                       "rootfs": "local-lvm:vm-120-disk-0,size=8G", "unprivileged": "1"})
    with pytest.raises(ResourceException) as exc:
        client(sim, token=True).nodes("pve").lxc(120).config.put(dev0="/dev/null,gid=44")
    assert exc.value.status_code == 403
    assert "configuring device passthrough is only allowed for root@pam" in str(exc.value)
    client(sim, token=False).nodes("pve").lxc(120).config.put(dev0="/dev/null,gid=44")
    assert client(sim, token=True).nodes("pve").lxc(120).config.get()["dev0"] == "/dev/null,gid=44"


def test_task_log_through_proxmoxer(sim: Sim) -> None:
    px = client(sim, token=True)
    upid = px.nodes("pve").aplinfo.post(storage="local", template="debian-12-standard_12.12-1_amd64.tar.zst")
    assert wait(px, upid)["exitstatus"] == "OK"
    log = px.nodes("pve").tasks(upid).log.get(start=0, limit=50)
    assert log[-1] == {"n": len(log), "t": "TASK OK"}
