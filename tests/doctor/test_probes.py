"""doctor's HTTP probes against the real gateway (in front of the gateway tests' scripted upstream)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "gateway"))

from gw_harness import API_KEY, Harness

from provisioner.doctor import checks_services as cs
from provisioner.doctor.probes import ct_ip_from_config, gateway_url, run_probes

from .recorded_ctx import config, context, one
from .test_checks_dns_services_access import UP, server_raw


@pytest.fixture
def gw(tmp_path):
    # as deployed: the gateway serves the host file's model id (operations/units.gateway_config)
    harness = Harness(tmp_path, local_model_id=config().model.model_id)
    yield harness
    harness.close()


def test_health_and_a_tiny_message_round_trip(gw):
    # (the scripted upstream answers a non-streamed request with "Hello world")
    probes = run_probes(config(), gw.url, API_KEY)
    assert probes["gateway.health"].ok and probes["gateway.e2e"].ok
    d = context(raw={"services.ct": UP, "doctor.server": server_raw()}, probes=probes)
    fs = cs.check_gateway(d)
    assert [(f.id, f.status) for f in fs] == [("services.gateway_health", "ok"), ("services.e2e", "ok"),
                                              ("services.gateway_errors", "ok")]
    assert one(fs, "services.gateway_errors").title == "no client requests in the last minute"
    sent = gw.last_request()
    assert sent["max_tokens"] == 8 and sent["messages"][-1]["content"] == "Say OK."


def test_wrong_key_is_an_auth_finding(gw):
    probes = run_probes(config(), gw.url, "not-the-key")
    assert probes["gateway.health"].ok and probes["gateway.e2e"].status == 401
    f = one(cs.check_gateway(context(raw={"services.ct": UP, "doctor.server": server_raw()}, probes=probes)),
            "services.e2e")
    assert f.status == "fail" and "gateway.api_key" in f.fix and "not-the-key" not in str(f)


def test_nothing_listening():
    probes = run_probes(config(), "http://127.0.0.1:9", None)
    assert probes["gateway.health"].error and not probes["gateway.e2e"].ok


def test_gateway_address():
    assert ct_ip_from_config("name=eth0,bridge=vmbr0,ip=10.0.3.184/24,type=veth") == "10.0.3.184"
    assert ct_ip_from_config("name=eth0,bridge=vmbr0,ip=dhcp") is None
    assert gateway_url(config(), "10.0.3.184") == "http://10.0.3.184:4000"
    assert gateway_url(config(clients={"base_url": "https://llm.lan/"}), None) == "https://llm.lan"


def test_the_last_minutes_error_rate_from_the_gateways_metrics(gw):
    """Issue 19: doctor shows the last minute's error rate (scraped from /metrics before its own request)."""
    import anthropic

    client = gw.client()
    for _ in range(3):
        client.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    gw.script([("status", 500, {"error": {"message": "slot crashed"}})])
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    probes = run_probes(config(), gw.url, API_KEY)
    f = one(cs.check_gateway(context(raw={"services.ct": UP, "doctor.server": server_raw()}, probes=probes)),
            "services.gateway_errors")
    assert (f.status, f.title) == ("warn", "last minute: 5 requests, 1 server error (20%), 1 refused (4xx)")
    assert 'provision_gateway_recent_requests{class="5xx",window="60s"} 1' in f.evidence.output
