"""The API on a real simulated node (real LXC backend, fake NVIDIA device nodes in /dev).

Marked ``sim``: needs root and lxc; uses the session-wide ``sim_node`` fixture.
"""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.sim


def _session(node) -> requests.Session:  # type: ignore[no-untyped-def]
    s = requests.Session()
    s.trust_env = False
    s.verify = str(node.sim_root / "pve-ssl.pem")
    return s


def _wait(s: requests.Session, base: str, node: str, upid: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = s.get(f"{base}/nodes/{node}/tasks/{upid}/status").json()["data"]
        if status["status"] == "stopped":
            return status
        time.sleep(0.3)
    raise AssertionError(f"task {upid} still running after {timeout}s")


def _clients(n):  # type: ignore[no-untyped-def]
    tok = _session(n)
    tok.headers["Authorization"] = f"PVEAPIToken={n.token_id}={n.token_secret}"
    root = _session(n)
    login = root.post(f"{n.api_url}/access/ticket", data={"username": "root@pam", "password": n.root_password})
    root.cookies.set("PVEAuthCookie", login.json()["data"]["ticket"])
    root.headers["CSRFPreventionToken"] = login.json()["data"]["CSRFPreventionToken"]
    return tok, root


def _create(n, tok) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """Download the template like a fresh PVE host, then create a CT from its volid."""
    base, node = n.api_url, n.node
    name = "debian-12-standard_12.12-1_amd64.tar.zst"
    t0 = time.monotonic()
    upid = tok.post(f"{base}/nodes/{node}/aplinfo", data={"storage": "local", "template": name}).json()["data"]
    assert _wait(tok, base, node, upid)["exitstatus"] == "OK"
    downloaded = time.monotonic() - t0
    content = tok.get(f"{base}/nodes/{node}/storage/local/content", params={"content": "vztmpl"}).json()["data"]
    volid = next(c["volid"] for c in content if c["volid"].endswith(name))
    vmid = tok.get(f"{base}/cluster/nextid").json()["data"]
    t0 = time.monotonic()
    upid = tok.post(f"{base}/nodes/{node}/lxc", data={
        "vmid": vmid, "ostemplate": volid, "hostname": "apitest", "storage": "local-lvm",
        "unprivileged": 1, "memory": 512, "net0": "name=eth0,bridge=vmbr0,ip=dhcp"}).json()["data"]
    status = _wait(tok, base, node, upid)
    assert status["exitstatus"] == "OK", tok.get(f"{base}/nodes/{node}/tasks/{upid}/log").json()
    return vmid, downloaded, time.monotonic() - t0


def _destroy(n, tok, vmid: int) -> None:  # type: ignore[no-untyped-def]
    upid = tok.delete(f"{n.api_url}/nodes/{n.node}/lxc/{vmid}", params={"force": 1}).json()["data"]
    assert _wait(tok, n.api_url, n.node, upid)["exitstatus"] == "OK"


def test_create_passthrough_start_destroy(sim_node) -> None:  # type: ignore[no-untyped-def]
    n = sim_node
    base, node = n.api_url, n.node
    tok, root = _clients(n)
    vmid, downloaded, created = _create(n, tok)
    try:
        r = tok.put(f"{base}/nodes/{node}/lxc/{vmid}/config", data={"dev0": "/dev/nvidia0,gid=44"})
        assert r.status_code == 403
        r = root.put(f"{base}/nodes/{node}/lxc/{vmid}/config", data={"dev0": "/dev/nvidia-nope"})
        assert r.json()["message"] == "Device /dev/nvidia-nope does not exist\n"
        assert root.put(f"{base}/nodes/{node}/lxc/{vmid}/config",
                        data={"dev0": "/dev/nvidia0,gid=44", "dev1": "/dev/nvidiactl,gid=44"}).status_code == 200
        t1 = time.monotonic()
        status = _wait(tok, base, node, tok.post(f"{base}/nodes/{node}/lxc/{vmid}/status/start").json()["data"])
        assert status["exitstatus"] == "OK", tok.get(f"{base}/nodes/{node}/tasks/{status['upid']}/log").json()
        started = time.monotonic() - t1
        assert tok.get(f"{base}/nodes/{node}/lxc/{vmid}/status/current").json()["data"]["status"] == "running"
        # features stay pending on a running CT (both versions)
        assert root.put(f"{base}/nodes/{node}/lxc/{vmid}/config", data={"features": "nesting=1"}).status_code == 200
        pending = {p["key"]: p for p in tok.get(f"{base}/nodes/{node}/lxc/{vmid}/pending").json()["data"]}
        assert pending["features"] == {"key": "features", "pending": "nesting=1"}
        status = _wait(tok, base, node, tok.post(f"{base}/nodes/{node}/lxc/{vmid}/status/stop").json()["data"])
        assert status["exitstatus"] == "OK"
        print(f"\ndownload {downloaded:.1f}s, create {created:.1f}s, start {started:.1f}s")
    finally:
        _destroy(n, tok, vmid)


def test_new_device_hotplugs_into_running_ct_on_pve9(sim_node) -> None:  # type: ignore[no-untyped-def]
    n = sim_node
    base, node = n.api_url, n.node
    tok, root = _clients(n)
    vmid, _, _ = _create(n, tok)
    try:
        status = _wait(tok, base, node, tok.post(f"{base}/nodes/{node}/lxc/{vmid}/status/start").json()["data"])
        assert status["exitstatus"] == "OK"
        r = root.put(f"{base}/nodes/{node}/lxc/{vmid}/config", data={"dev0": "/dev/nvidia-uvm"})
        assert r.status_code == 200, r.text
        pending = {p["key"]: p for p in tok.get(f"{base}/nodes/{node}/lxc/{vmid}/pending").json()["data"]}
        assert pending["dev0"] == {"key": "dev0", "value": "/dev/nvidia-uvm"}
    finally:
        _destroy(n, tok, vmid)
