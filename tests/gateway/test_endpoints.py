"""Non-streaming messages, count_tokens, models, health, auth, limits, access log."""

from __future__ import annotations

import json
import logging

import anthropic
import pytest
import requests

from gw_harness import API_KEY
from gw_scripted_upstream import text_script

OPENAI_ANSWER = {"id": "chatcmpl-9", "object": "chat.completion", "model": "smollm2",
                 "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                     "role": "assistant", "content": "Checking.", "reasoning_content": "Need a tool.",
                     "tool_calls": [{"id": "call_7", "type": "function",
                                     "function": {"name": "clock", "arguments": "{\"tz\":\"UTC\"}"}}]}}],
                 "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
                           "prompt_tokens_details": {"cached_tokens": 40}}}


def test_non_streaming_message(gw):
    gw.script([("json", OPENAI_ANSWER)])
    message = gw.client().messages.create(
        model="claude-haiku-x", max_tokens=50, messages=[{"role": "user", "content": "time?"}],
        tools=[{"name": "clock", "input_schema": {"type": "object"}}])
    assert message.model == "claude-haiku-x"
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"tz": "UTC"} and message.content[2].id == "call_7"
    assert message.stop_reason == "tool_use"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (10, 40, 12)
    assert "stream" not in gw.last_request()


def test_non_streaming_with_stop_sequence(gw):
    gw.script(text_script(["alpha ", "beta", "<END>gamma"]))
    message = gw.client().messages.create(model="claude-x", max_tokens=50, stop_sequences=["<END>"],
                                          messages=[{"role": "user", "content": "go"}])
    assert message.content[0].text == "alpha beta"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "<END>")


def test_count_tokens_uses_backend_template_and_tokenizer(gw):
    result = gw.client().messages.count_tokens(
        model="claude-x", system="Be brief.", messages=[{"role": "user", "content": "one two three"}])
    template = gw.last_request("/apply-template")
    assert template["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "one two three"}]
    prompt = "<|system|> Be brief.\n<|user|> one two three\n<|assistant|>"
    # "model" routes /apply-template and /tokenize in llama-server's router mode
    assert template["model"] == "smollm2"
    assert gw.last_request("/tokenize") == {"model": "smollm2", "content": prompt, "add_special": True}
    assert result.input_tokens == len(prompt.split())


def test_models_list_and_get(make_gw):
    gw = make_gw(model_aliases={"fast": "smollm2"})
    page = gw.client().models.list()
    assert [m.id for m in page.data] == ["smollm2", "fast"]
    assert page.data[0].type == "model" and page.data[0].created_at
    raw = requests.get(gw.url + "/v1/models?beta=true", headers={"x-api-key": API_KEY}).json()
    assert raw["has_more"] is False and raw["first_id"] == "smollm2" and raw["last_id"] == "fast"
    assert gw.client().models.retrieve("claude-opus-x").id == "claude-opus-x"
    with pytest.raises(anthropic.NotFoundError):
        gw.client().models.retrieve("gpt-4")


def test_health_reports_upstream_and_needs_no_key(gw):
    assert requests.get(gw.url + "/health").json() == {
        "status": "ok", "mode": "translate", "upstream": {"status": "ok", "http_status": 200}}
    gw.upstream.health_status = 503
    response = requests.get(gw.url + "/health")
    assert response.status_code == 503 and response.json()["upstream"]["status"] == "loading"
    assert requests.head(gw.url + "/").status_code == 200


def test_auth_x_api_key_bearer_and_rejection(gw):
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    url = gw.url + "/v1/messages?beta=true"
    assert requests.post(url, json=body, headers={"x-api-key": API_KEY}).status_code == 200
    assert requests.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    for headers in ({}, {"x-api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = requests.post(url, json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="nope", max_retries=0).messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def test_unknown_model_is_not_found(gw):
    with pytest.raises(anthropic.NotFoundError) as info:
        gw.client().messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"] == {
        "type": "not_found_error",
        "message": "model: gpt-4o (this gateway serves: smollm2; Claude Code's names (opus, sonnet, haiku, "
                   "claude-…) map to smollm2 (main) and smollm2 (small_fast))"}


def test_request_too_large(make_gw):
    gw = make_gw(max_request_bytes=10_000)
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 20_000}]}
    response = requests.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": API_KEY})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    # also without a Content-Length (chunked upload)
    response = requests.post(gw.url + "/v1/messages", data=iter([json.dumps(body).encode()]),
                             headers={"x-api-key": API_KEY, "Content-Type": "application/json"})
    assert response.status_code == 413


def test_unknown_route_and_method_are_anthropic_errors(gw):
    response = requests.get(gw.url + "/v1/nothing", headers={"x-api-key": API_KEY})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    response = requests.get(gw.url + "/v1/messages", headers={"x-api-key": API_KEY})
    assert response.status_code == 405 and response.json()["type"] == "error"


def test_access_log_is_json_without_prompt_or_key(gw, caplog):
    gw.script(text_script(["secret-answer"], prompt=21))
    with caplog.at_level(logging.INFO, logger="provisioner.gateway.access"):
        with gw.client().messages.stream(model="claude-x", max_tokens=5,
                                         messages=[{"role": "user", "content": "TOP-SECRET-PROMPT"}]) as s:
            s.get_final_message()
    lines = [r.getMessage() for r in caplog.records if r.name == "provisioner.gateway.access"]
    entry = json.loads(lines[-1])
    assert {k: entry[k] for k in ("method", "path", "status", "model", "stream", "input_tokens",
                                  "output_tokens", "stop_reason")} == {
        "method": "POST", "path": "/v1/messages", "status": 200, "model": "claude-x", "stream": True,
        "input_tokens": 21, "output_tokens": 1, "stop_reason": "end_turn"}
    assert entry["request_id"].startswith("req_") and entry["ttft_ms"] >= 0 and entry["duration_ms"] >= 0
    assert "TOP-SECRET" not in lines[-1] and "secret-answer" not in lines[-1] and API_KEY not in lines[-1]
