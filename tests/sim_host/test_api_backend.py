"""The simulated API driving real containers through LxcBackend (token auth, tasks)."""

from __future__ import annotations

import hashlib
import ssl
import time

import pytest
from proxmoxer import ProxmoxAPI

pytestmark = pytest.mark.sim

VMID = 751
TEMPLATE = "debian-12-standard_12.12-1_amd64.tar.zst"


def _wait(node, upid: str, timeout: float = 120) -> tuple[str, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = node.tasks(upid).status.get()
        if status["status"] == "stopped":
            return status["exitstatus"], [row["t"] for row in node.tasks(upid).log.get(limit=500)]
        time.sleep(0.3)
    raise AssertionError(f"task {upid} still running")


@pytest.fixture(scope="module")
def api(sim_node):
    pem = ssl.get_server_certificate(("127.0.0.1", sim_node.api_port))
    der = ssl.PEM_cert_to_DER_cert(pem)
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert fingerprint == sim_node.fingerprint  # the certificate we would pin
    user, token = sim_node.token_id.split("!")
    prox = ProxmoxAPI("127.0.0.1", port=sim_node.api_port, user=user, token_name=token,
                      token_value=sim_node.token_secret, verify_ssl=False)
    return prox.nodes(sim_node.node)


def test_create_start_and_fail_through_the_api(sim_node, api):
    assert _wait(api, api.aplinfo.post(storage="local", template=TEMPLATE))[0] == "OK"
    volid = f"local:vztmpl/{TEMPLATE}"
    assert volid in [c["volid"] for c in api.storage("local").content.get(content="vztmpl")]
    ip = sim_node.ip_for(VMID)
    upid = api.lxc.post(vmid=VMID, ostemplate=volid, hostname="apict", memory=1024, swap=256,
                        rootfs="local-lvm:8", unprivileged=1, features="nesting=1",
                        net0=f"name=eth0,bridge=vmbr0,ip={ip}/24,gw=10.0.3.1")
    assert _wait(api, upid)[0] == "OK"
    try:
        assert _wait(api, api.lxc(VMID).status.start.post())[0] == "OK"
        assert api.lxc(VMID).status.current.get()["status"] == "running"
        assert sim_node.wait_systemd(VMID) == "running"
        assert _wait(api, api.lxc(VMID).status.stop.post())[0] == "OK"
        sim_node.faults.fail_next_task("vzstart", "injected: start refused")
        assert _wait(api, api.lxc(VMID).status.start.post())[0] == "injected: start refused"
        assert api.lxc(VMID).status.current.get()["status"] == "stopped"
        sim_node.faults.set_api_delay(400)
        t0 = time.monotonic()
        api.lxc(VMID).status.current.get()
        assert time.monotonic() - t0 >= 0.4
        sim_node.faults.set_api_delay(0)
        # devN is root-only: set it as root over SSH, then the start task fails like PVE's
        rc, _, err = sim_node.run(f"pct set {VMID} --dev0 /dev/nvidia0 && rm /dev/nvidia0")
        assert rc == 0, err
        status, _log = _wait(api, api.lxc(VMID).status.start.post())
        assert status == "Device /dev/nvidia0 does not exist"  # pve-container src/PVE/LXC/Tools.pm:163
    finally:
        sim_node.faults.upgrade_host_driver("580.95.05")  # puts /dev/nvidia0 back
        if api.lxc(VMID).status.current.get()["status"] == "running":
            _wait(api, api.lxc(VMID).status.stop.post())
        _wait(api, api.lxc(VMID).delete())
    assert not (sim_node.sim_root / "lxc" / str(VMID) / "config").exists()
    assert not list(sim_node.sim_root.glob(f"storage/*/images/{VMID}"))
