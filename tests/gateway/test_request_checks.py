"""Issue 19.5: thinking adaptive/disabled accepted and mapped; empty turns and too-large max_tokens get
Anthropic-shaped 400s that say what is wrong (through the SDK and raw HTTP)."""

from __future__ import annotations

import anthropic
import pytest
import requests

from gw_harness import API_KEY

HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("thinking, enabled", [
    ({"type": "adaptive"}, True), ({"type": "adaptive", "display": "summarized"}, True),
    ({"type": "disabled"}, False)])
def test_thinking_adaptive_and_disabled_are_accepted_and_mapped(gw, stream, thinking, enabled):
    if stream:
        with gw.client().messages.stream(model="claude-x", max_tokens=8, thinking=thinking, messages=HI) as s:
            assert s.get_final_message().content[0].text == "Hello world"
    else:
        assert gw.client().messages.create(model="claude-x", max_tokens=8, thinking=thinking,
                                           messages=HI).content[0].text == "Hello world"
    assert gw.last_request()["chat_template_kwargs"] == {"enable_thinking": enabled}


EMPTY = "all messages must have non-empty content except for the optional final assistant message"


@pytest.mark.parametrize("messages, where", [
    ([{"role": "user", "content": []}], "messages.0"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": []},
      {"role": "user", "content": "again"}], "messages.1"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
      {"role": "user", "content": ""}], "messages.2"),
])
def test_an_empty_turn_is_anthropics_400_not_a_silent_drop(gw, messages, where):
    with pytest.raises(anthropic.BadRequestError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=8, messages=messages)
    assert info.value.body["error"] == {"type": "invalid_request_error", "message": f"{where}: {EMPTY}"}
    assert not gw.upstream.requests


def test_an_empty_final_assistant_turn_is_allowed(gw):
    gw.client().messages.create(model="claude-x", max_tokens=8,
                                messages=[*HI, {"role": "assistant", "content": []}])
    assert gw.last_request()["messages"][-1]["role"] == "assistant"


def test_too_large_max_tokens_says_at_most(gw):
    response = requests.post(gw.url + "/v1/messages", headers=HEADERS,
                             json={"model": "claude-x", "max_tokens": 2**32, "messages": HI})
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error",
                                        "message": "max_tokens: must be at most 2147483647, found 4294967296"}
