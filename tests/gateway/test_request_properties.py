"""Property tests: hostile request bodies get a clean 400, never a traceback or a 500."""

from __future__ import annotations

import json

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gw_harness import API_KEY
from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.jsonfast import dumps
from provisioner.gateway.translate_request import Translated, translate_request

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=15)
sources = st.fixed_dictionaries({"type": st.sampled_from(["base64", "url", "text", "file"]) | json_values},
                                optional={"media_type": st.text(max_size=10) | json_values,
                                          "data": st.text(max_size=10) | json_values,
                                          "url": st.text(max_size=10) | json_values})
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking",
                              "document", "bogus"]) | json_values},
    optional={"text": st.text(max_size=10) | json_values, "source": sources | json_values,
              "id": st.text(max_size=5) | json_values, "name": st.text(max_size=5) | json_values,
              "input": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
              "tool_use_id": st.text(max_size=5) | json_values, "thinking": st.text(max_size=5) | json_values,
              "content": (st.text(max_size=10) | st.lists(st.deferred(lambda: blocks) | json_values, max_size=3)
                          | json_values),
              "is_error": st.booleans() | json_values, "cache_control": json_values})
contents = st.text(max_size=10) | st.lists(blocks | json_values, max_size=4) | json_values
messages = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | json_values},
                                 optional={"content": contents})
tools = st.fixed_dictionaries({"name": st.text(max_size=5) | json_values},
                              optional={"input_schema": st.just({"type": "object"}) | json_values,
                                        "description": st.text(max_size=5) | json_values,
                                        "type": st.sampled_from(["custom", "web_search_20250305"]) | json_values})
bodies = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["claude-x", "smollm2", "gpt-4"]) | json_values,
    "max_tokens": st.integers(-3, 100) | json_values,
    "messages": st.lists(messages | json_values, max_size=4) | json_values,
    "system": st.text(max_size=10) | st.lists(blocks | json_values, max_size=3) | json_values,
    "tools": st.lists(tools | json_values, max_size=3) | json_values,
    "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]) | json_values},
                                         optional={"name": st.text(max_size=5) | json_values,
                                                   "disable_parallel_tool_use": json_values}) | json_values,
    "stream": st.booleans() | json_values, "temperature": json_values, "top_p": json_values,
    "top_k": json_values, "stop_sequences": st.lists(st.text(max_size=4), max_size=3) | json_values,
    "thinking": (st.fixed_dictionaries({"type": st.sampled_from(["enabled", "adaptive", "disabled"]) | json_values})
                 | json_values),
    "metadata": json_values})


@settings(max_examples=1500, deadline=None)
@given(bodies | json_values)
def test_translation_either_succeeds_or_raises_a_clean_400(body):
    try:
        result = translate_request(body, upstream_model="local")
    except ApiError as exc:
        assert exc.status == 400 and exc.error_type == "invalid_request_error" and exc.message
        return
    assert isinstance(result, Translated)
    json.loads(dumps(result.payload))  # what goes upstream is valid JSON


def test_http_hostile_bodies_never_500(make_gw):
    gw = make_gw()
    session = requests.Session()
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}

    def check(raw: bytes, path: str) -> None:
        response = session.post(gw.url + path, data=raw, headers=headers, timeout=30)
        assert response.status_code in (200, 400, 404), (response.status_code, response.text, raw[:200])
        if response.status_code != 200:
            error = response.json()
            assert error["type"] == "error" and error["error"]["message"]
            assert error["error"]["type"] == ("not_found_error" if response.status_code == 404
                                              else "invalid_request_error")
        if response.status_code == 404:  # only an unserved model name earns a 404
            assert error["error"]["message"].startswith("model: ")

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies, st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
    def structured(body, path):
        check(json.dumps(body).encode(), path)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def raw_bytes(raw):
        check(raw, "/v1/messages")

    structured()
    raw_bytes()
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    deep_schema = (b'{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"x"}],'
                   b'"tools":[{"name":"t","input_schema":' + deep + b"}]}")
    deep_input = (b'{"model":"claude-x","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use",'
                  b'"id":"a","name":"n","input":' + deep + b"}]}]}")
    for raw in (deep_schema, deep_input):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            check(raw, path)
    for raw in (b"[" * 100_000, b'{"a":' * 50_000, b'{"model": NaN}', b'{"model":"claude-x","max_tokens":1e999}',
                b"\xff\xfe", b'"\\ud800"', b"null", b"{}"):
        check(raw, "/v1/messages")
