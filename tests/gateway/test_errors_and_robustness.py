"""Upstream failures, pings during prefill, client disconnects, upstream restarts."""

from __future__ import annotations

import json
import time

import anthropic
import pytest
import requests

from gw_harness import API_KEY
from gw_scripted_upstream import chunk, text_script

BODY = {"model": "claude-x", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


def raw_events(gw, body=BODY, timeout=30) -> list[tuple[str, str, float]]:
    """(event, data, seconds since the request) for each SSE frame, read off the wire."""
    start = time.monotonic()
    frames, event = [], None
    with requests.post(gw.url + "/v1/messages?beta=true", json=body, headers=HEADERS, stream=True,
                       timeout=timeout) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                frames.append((event, line[6:], time.monotonic() - start))
    return frames


@pytest.mark.parametrize("status, body, error_class, error_type", [
    (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
     anthropic.OverloadedError, "overloaded_error"),
    (500, {"error": {"code": 500, "message": "boom", "type": "server_error"}},
     anthropic.InternalServerError, "api_error"),
    (401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}},
     anthropic.InternalServerError, "api_error"),
])
def test_upstream_error_before_stream_maps_status(gw, status, body, error_class, error_type):
    gw.script([("status", status, body)])
    with pytest.raises(error_class) as info:
        with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                         messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert info.value.body["error"]["type"] == error_type
    assert info.value.response.headers["x-should-retry"] == "true"


def test_context_exceeded_becomes_prompt_too_long(gw):
    gw.script([("status", 400, {"error": {"code": 400, "type": "exceed_context_size_error",
                                          "message": "the request exceeds the available context size",
                                          "n_prompt_tokens": 9012, "n_ctx": 8192}})])
    with pytest.raises(anthropic.BadRequestError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"] == {"type": "invalid_request_error",
                                        "message": "prompt is too long: 9012 tokens > 8192 maximum"}


def test_error_during_stream_is_an_error_event(gw):
    gw.script([chunk(content="partial"), ("chunk", {"error": {"code": 500, "message": "slot crashed"}})])
    frames = raw_events(gw)
    assert [f[0] for f in frames] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert '"type":"api_error"' in frames[-1][1]
    gw.script([chunk(content="partial"), ("abort",)])
    with pytest.raises(anthropic.APIStatusError):
        with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                         messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()


def test_every_frame_event_matches_data_type(gw):
    gw.script(text_script(["a", "b"]))
    for event, data, _ in raw_events(gw):
        assert f'"type":"{event}"' in data[:40]


def test_slow_prefill_flushes_message_start_and_pings(make_gw):
    gw = make_gw(ping_interval_s=0.2)
    gw.script([("sleep", 1.1)] + text_script(["late"]))
    frames = raw_events(gw)
    assert frames[0][0] == "message_start" and frames[0][2] < 0.5
    first_content = next(i for i, f in enumerate(frames) if f[0] == "content_block_start")
    pings = [f for f in frames[:first_content] if f[0] == "ping"]
    assert len(pings) >= 4


def test_upstream_holding_headers_still_gets_message_start_and_pings(make_gw):
    gw = make_gw(ping_interval_s=0.2, header_wait_s=0.1)
    gw.script([("delay_headers", 1.0)] + text_script(["late"]))
    frames = raw_events(gw)
    assert frames[0][0] == "message_start" and frames[0][2] < 0.5
    assert sum(1 for f in frames if f[0] == "ping") >= 3
    assert frames[-1][0] == "message_stop"
    # a busy answer that comes after the commit to 200 is an overloaded error event
    gw.script([("delay_headers", 0.5), ("status", 503, {"error": {"message": "busy"}})])
    frames = raw_events(gw)
    assert frames[0][0] == "message_start" and frames[-1][0] == "error"
    assert '"overloaded_error"' in frames[-1][1]


@pytest.mark.parametrize("during", ["prefill", "generation"])
def test_client_disconnect_cancels_upstream(make_gw, during):
    gw = make_gw(ping_interval_s=0.2)
    if during == "prefill":
        gw.script([("sleep", 30)] + text_script(["never"]))
    else:
        gw.script([chunk(content="first")] + [("sleep", 0.05), chunk(content="x")] * 600)
    with requests.post(gw.url + "/v1/messages", json=BODY, headers=HEADERS, stream=True, timeout=10) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith(b"event: message_start" if during == "prefill" else b"event: content_block_delta"):
                break
    assert gw.upstream.disconnected.wait(5), "the upstream request was not cancelled"
    assert gw.upstream.completed == 0


def test_upstream_down_then_recovers(gw):
    port = gw.upstream.port
    gw.loop.call(gw.upstream.stop())
    with pytest.raises(anthropic.InternalServerError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.InternalServerError):
        with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                         messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert requests.get(gw.url + "/health").json()["upstream"]["status"] == "down"
    gw.loop.call(gw.upstream.start(port))
    gw.script(text_script(["back"]))
    with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                     messages=[{"role": "user", "content": "x"}]) as stream:
        assert stream.get_final_message().content[0].text == "back"


def test_stream_ending_without_finish_is_an_error(gw):
    gw.script([chunk(content="cut")])
    frames = raw_events(gw)
    assert frames[-1][0] == "error"


def test_usage_only_in_finish_chunk(gw):
    gw.script([chunk(content="x"), chunk(finish="stop", usage={"prompt_tokens": 9, "completion_tokens": 1}),
               ("done",)])
    with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                     messages=[{"role": "user", "content": "x"}]) as stream:
        message = stream.get_final_message()
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 1)


RATE_LIMITED = ("status", 429, {"error": {"code": 429, "message": "too many requests", "type": "rate_limit"}},
                {"Retry-After": "7", "retry-after-ms": "6500"})


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_is_a_rate_limit_error_with_retry_after(gw, stream):
    """Issue 19.2: 429 stays 429 rate_limit_error and keeps Retry-After (it was 529 without it)."""
    gw.script([RATE_LIMITED])
    with pytest.raises(anthropic.RateLimitError) as info:
        if stream:
            with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                             messages=[{"role": "user", "content": "x"}]) as s:
                s.get_final_message()
        else:
            gw.client().messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 429 and info.value.body["error"]["type"] == "rate_limit_error"
    headers = info.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"], headers["x-should-retry"]) == ("7", "6500", "true")
    # overload stays 529
    gw.script([("status", 503, {"error": {"code": 503, "message": "Loading model"}})])
    with pytest.raises(anthropic.APIStatusError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"


def test_429_after_the_stream_committed_is_a_rate_limit_error_event(make_gw):
    gw = make_gw(ping_interval_s=0.2, header_wait_s=0.05)
    gw.script([("delay_headers", 0.4), RATE_LIMITED])
    frames = raw_events(gw)
    assert frames[0][0] == "message_start" and frames[-1][0] == "error"
    assert json.loads(frames[-1][1])["error"]["type"] == "rate_limit_error"
