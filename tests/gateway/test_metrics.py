"""Issue 19: /metrics in Prometheus text format, scraped; its counters match the requests sent."""

from __future__ import annotations

import threading
import time

import anthropic
import pytest
import requests

from gw_harness import API_KEY
from gw_scripted_upstream import chunk, text_script
from provisioner.gateway.metrics import parse

HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
HI = [{"role": "user", "content": "hi"}]


def scrape(gw, headers=HEADERS) -> dict[tuple, float]:
    response = requests.get(gw.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in parse(response.text)}


def value(samples, name, **labels) -> float:
    return samples.get(("provision_gateway_" + name, tuple(sorted(labels.items()))), 0.0)


def test_counters_match_the_requests_sent(gw):
    client = gw.client()
    gw.script(text_script(["a", "b"], prompt=30, cached=20), text_script(["c"], prompt=40, cached=30))
    for _ in range(2):
        with client.messages.stream(model="claude-x", max_tokens=5, messages=HI) as stream:
            stream.get_final_message()
    client.messages.create(model="claude-x", max_tokens=5, messages=HI)  # the upstream's default answer
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": []}])
    gw.script([("status", 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})])
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-x", max_tokens=5, messages=HI)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4", max_tokens=5, messages=HI)
    assert requests.get(gw.url + "/metrics").status_code == 401  # behind the key

    s = scrape(gw)
    route = "/v1/messages"
    assert value(s, "requests_total", route=route, status="200") == 3
    assert value(s, "requests_total", route=route, status="400") == 1
    assert value(s, "requests_total", route=route, status="429") == 1
    assert value(s, "requests_total", route=route, status="404") == 1
    assert value(s, "requests_total", route="/metrics", status="401") == 1
    assert value(s, "errors_total", route=route, type="rate_limit_error", status="429") == 1
    assert value(s, "errors_total", route=route, type="invalid_request_error", status="400") == 1
    assert value(s, "errors_total", route=route, type="not_found_error", status="404") == 1
    # usage: streamed 30/20 cached and 40/30 cached, 2 + 1 out; the plain answer 3 in, 2 out
    assert value(s, "tokens_total", model="smollm2", kind="input") == (30 - 20) + (40 - 30) + 3
    assert value(s, "tokens_total", model="smollm2", kind="cache_read") == 50
    assert value(s, "tokens_total", model="smollm2", kind="output") == 2 + 1 + 2
    assert value(s, "time_to_first_token_seconds_count", model="smollm2", stream="true") == 2
    assert value(s, "time_to_first_token_seconds_count", model="smollm2", stream="false") == 1
    assert value(s, "gateway_added_seconds_count", stream="true") == 2
    assert value(s, "gateway_added_seconds_count", stream="false") == 1
    # what the gateway adds to a local round trip is well under the time of the whole request
    assert 0 < value(s, "gateway_added_seconds_sum", stream="true") < value(
        s, "time_to_first_token_seconds_sum", model="smollm2", stream="true")
    assert value(s, "request_duration_seconds_count", route=route) == 6
    assert value(s, "upstream_latency_seconds_count", path="/v1/chat/completions") == 4
    assert value(s, "recent_requests", window="60s", **{"class": "2xx"}) == 3
    assert value(s, "recent_requests", window="60s", **{"class": "4xx"}) == 4
    assert value(s, "open_streams") == 0


def test_open_streams_gauge_and_public_metrics(make_gw):
    gw = make_gw(metrics_public=True)
    gw.script([chunk(content="first"), ("sleep", 3)] + text_script(["end"]))
    done = threading.Event()

    def hold():
        with gw.client().messages.stream(model="claude-x", max_tokens=5, messages=HI) as stream:
            stream.get_final_message()
        done.set()

    threading.Thread(target=hold, daemon=True).start()
    deadline = time.monotonic() + 5
    while value(scrape(gw, headers={}), "open_streams") != 1:  # no key needed: metrics_public
        assert time.monotonic() < deadline, "the stream never showed as open"
        time.sleep(0.05)
    assert done.wait(10)
    assert value(scrape(gw, headers={}), "open_streams") == 0


def test_the_local_model_id_is_learnt_from_the_upstream(make_gw):
    """Issue 19: with no local_model_id the gateway answers to the upstream's own model name."""
    gw = make_gw(local_model_id=None, upstream_models=["qwen2.5-coder-7b"])
    deadline = time.monotonic() + 5
    while [m.id for m in gw.client().models.list().data] != ["qwen2.5-coder-7b"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gw.client().messages.create(model="claude-x", max_tokens=5, messages=HI)
    assert gw.last_request()["model"] == "qwen2.5-coder-7b"
    gw.client().messages.create(model="qwen2.5-coder-7b", max_tokens=5, messages=HI)
    assert gw.last_request()["model"] == "qwen2.5-coder-7b"


def test_the_grafana_dashboard_queries_only_metrics_the_gateway_exposes(gw):
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "templates/grafana/provision-gateway.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"provision_gateway_[a-z_]+", e)}
    gw.client().messages.create(model="claude-x", max_tokens=5, messages=HI)
    exposed = set()
    text = requests.get(gw.url + "/metrics", headers=HEADERS, timeout=10).text
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exposed |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    assert used and used <= exposed, used - exposed
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
