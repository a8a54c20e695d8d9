"""Authentication on the wire: tickets, CSRF, API tokens, PVE's error shapes."""

from __future__ import annotations

import json

from .conftest import ROOT_PASSWORD, TOKEN_ID, Sim


def test_ticket_login_and_wrong_password(sim: Sim) -> None:
    s = sim.session()
    ok = s.post(f"{sim.base}/access/ticket", data={"username": "root@pam", "password": ROOT_PASSWORD})
    assert ok.status_code == 200
    data = ok.json()["data"]
    assert data["username"] == "root@pam"
    assert data["ticket"].startswith("PVE:root@pam:")
    assert data["CSRFPreventionToken"]
    bad = s.post(f"{sim.base}/access/ticket", data={"username": "root@pam", "password": "nope"})
    assert (bad.status_code, bad.reason) == (401, "authentication failure")
    assert bad.json() == {"data": None, "message": "authentication failure\n"}
    realm = s.post(f"{sim.base}/access/ticket",
                   data={"username": "root", "realm": "pam", "password": ROOT_PASSWORD})
    assert realm.json()["data"]["username"] == "root@pam"


def test_no_ticket_is_a_bare_401(sim: Sim) -> None:
    r = sim.session().get(f"{sim.base}/nodes")
    assert (r.status_code, r.reason, r.text) == (401, "No ticket", "")


def test_forged_ticket_and_wrong_token_secret(sim: Sim) -> None:
    s = sim.session()
    s.cookies.set("PVEAuthCookie", "PVE:root@pam:6A000000::forged")
    assert s.get(f"{sim.base}/nodes").reason == "Authentication failed!"
    t = sim.token(secret="wrong")
    r = t.get(f"{sim.base}/nodes")
    assert (r.status_code, r.reason) == (401, "Authentication failed!")


def test_csrf_token_required_for_writes_with_a_ticket(sim: Sim) -> None:
    sim.write_ct(120, {"hostname": "a", "memory": "512", "rootfs": "local-lvm:vm-120-disk-0,size=8G"})
    s = sim.ticket()
    assert s.get(f"{sim.base}/nodes/pve/lxc/120/config").status_code == 200  # GET needs no CSRF
    csrf = s.headers.pop("CSRFPreventionToken")
    r = s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"cores": 2})
    assert (r.status_code, r.reason) == (401, "Permission denied - invalid csrf token")
    s.headers["CSRFPreventionToken"] = csrf[:-2] + "xx"
    assert s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"cores": 2}).status_code == 401
    s.headers["CSRFPreventionToken"] = csrf
    assert s.put(f"{sim.base}/nodes/pve/lxc/120/config", data={"cores": 2}).status_code == 200


def test_token_needs_no_csrf_and_tokens_are_read_at_request_time(sim: Sim) -> None:
    r = sim.token().get(f"{sim.base}/version")
    assert r.json()["data"]["release"] == sim.api.version
    new_id, new_secret = "root@pam!later", "added-while-running"
    assert sim.token(new_id, new_secret).get(f"{sim.base}/version").status_code == 401
    settings = json.loads((sim.root / "sim.json").read_text())
    sim.settings(tokens={**settings["tokens"], new_id: new_secret})
    assert sim.token(new_id, new_secret).get(f"{sim.base}/version").status_code == 200
    assert sim.token(TOKEN_ID).get(f"{sim.base}/version").status_code == 200


def test_unknown_method_is_501(sim: Sim) -> None:
    r = sim.token().get(f"{sim.base}/nodes/pve/qemu")
    assert (r.status_code, r.reason) == (501, "Method 'GET /nodes/pve/qemu' not implemented")


def test_other_node_is_not_reachable(sim: Sim) -> None:
    # a die in remote_node_ip's DNS fallback is an ordinary 500 (pve-common src/PVE/Network.pm:891
    # @f665029, pve-manager PVE/HTTPServer.pm:176-188@14a22df); REFERENCE §1 had 595
    r = sim.token().get(f"{sim.base}/nodes/pve2/lxc")
    assert r.status_code == 500
    assert r.json()["message"].startswith("hostname lookup 'pve2' failed")


def test_api_delay_fault_is_read_per_request(sim: Sim) -> None:
    import time
    t = sim.token()
    sim.settings(delay_ms=400)
    start = time.monotonic()
    assert t.get(f"{sim.base}/version").status_code == 200
    assert time.monotonic() - start >= 0.4
    sim.settings(delay_ms=0)


def test_fingerprint_matches_the_served_certificate(sim: Sim) -> None:
    import hashlib
    import socket
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", sim.api.port)) as raw:
        with ctx.wrap_socket(raw) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert sim.api.fingerprint == expected


def test_ticket_renewal_with_the_ticket_as_password(sim: Sim) -> None:
    """proxmoxer renews its ticket by posting the old ticket as the password."""
    s = sim.session()
    first = s.post(f"{sim.base}/access/ticket", data={"username": "root@pam", "password": ROOT_PASSWORD})
    ticket = first.json()["data"]["ticket"]
    again = s.post(f"{sim.base}/access/ticket", data={"username": "root@pam", "password": ticket})
    assert again.status_code == 200 and again.json()["data"]["ticket"].startswith("PVE:root@pam:")
    other = s.post(f"{sim.base}/access/ticket", data={"username": "admin@pve", "password": ticket})
    assert other.status_code == 401


def test_authentication_comes_before_routing(sim: Sim) -> None:
    r = sim.session().get(f"{sim.base}/nodes/pve/qemu")
    assert (r.status_code, r.reason) == (401, "No ticket")


def test_connector_renews_its_password_ticket_before_two_hours(sim: Sim) -> None:
    """A ticket lives 7200 s (pve-access-control src/PVE/AccessControl.pm:58@5ccd07d); the connector
    renews it with the ticket as password after an hour, so a long `up` keeps working."""
    import time

    from provisioner.connectors.pve import PVE, TICKET_RENEW_AFTER, Credentials, Endpoint

    pve = PVE(Endpoint(host="127.0.0.1", port=sim.api.port, fingerprint=sim.api.fingerprint),
              Credentials(user="root@pam", password=ROOT_PASSWORD))
    first = pve._auth.ticket
    time.sleep(1.1)  # tickets carry their time in seconds
    pve.get("/version")  # a real call each time (pve.version() is asked once per connection)
    assert pve._auth.ticket == first  # young: kept
    pve._ticket_at -= TICKET_RENEW_AFTER + 1
    assert pve.get("/version")["release"] == sim.api.version
    assert pve._auth.ticket != first and pve._auth.ticket.startswith("PVE:root@pam:")
    # a write needs the renewed CSRF token to match the renewed ticket
    sim.write_ct(120, {"arch": "amd64", "hostname": "llm", "memory": "512", "ostype": "debian",
                       "rootfs": "local-lvm:vm-120-disk-0,size=8G"})
    pve.put(pve.ct(120, "config"), cores=2)
