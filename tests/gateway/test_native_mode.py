"""Native mode: forward to the upstream's own /v1/messages, fixing its known gaps."""

from __future__ import annotations

import json

from gw_scripted_upstream import chunk, text_script, tool_delta


def sse(event: dict) -> tuple:
    return ("raw", f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())


NATIVE_STREAM = [
    sse({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "model": "smollm2", "content": [], "stop_reason": None,
                                              "stop_sequence": None,
                                              "usage": {"input_tokens": 7, "output_tokens": 0}}}),
    sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
    sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
    sse({"type": "content_block_stop", "index": 0}),
    sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 2}}),
    sse({"type": "message_stop"}),
]


def test_native_stream_rewrites_model_and_sanitises_body(make_gw):
    gw = make_gw(mode="native")
    gw.script(NATIVE_STREAM)
    with gw.client().messages.stream(
            model="claude-opus-x", max_tokens=64, thinking={"type": "adaptive"},
            system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2; cch=1f2e;"},
                    {"type": "text", "text": "Sys.", "cache_control": {"type": "ephemeral"}}],
            metadata={"user_id": "u1"},
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi",
                                                    "cache_control": {"type": "ephemeral"}}]}]) as stream:
        message = stream.get_final_message()
    assert message.model == "claude-opus-x"
    assert message.content[0].text == "Hi there" and message.stop_reason == "end_turn"
    sent = gw.last_request("/v1/messages")
    assert sent == {"model": "smollm2", "max_tokens": 64, "stream": True,
                    "thinking": {"type": "enabled", "budget_tokens": 63},
                    "chat_template_kwargs": {"enable_thinking": True},
                    "system": [{"type": "text", "text": "Sys."}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_native_named_tool_choice_falls_back_to_translate(make_gw):
    gw = make_gw(mode="native")
    # the forced call, as llama-server answers it when the template supports tools (text would be an error)
    gw.script([chunk(role="assistant", tool_calls=[tool_delta(0, id="call_1", name="clock", args="{}")]),
               chunk(finish="tool_calls")])
    tools = [{"name": "clock", "input_schema": {"type": "object"}}]
    with gw.client().messages.stream(model="claude-x", max_tokens=8, tools=tools,
                                     tool_choice={"type": "tool", "name": "clock"},
                                     messages=[{"role": "user", "content": "t"}]) as stream:
        stream.get_final_message()
    assert [p for p, _ in gw.upstream.requests] == ["/v1/chat/completions"]
    assert gw.last_request()["tool_choice"] == "required"


def test_native_non_streaming(make_gw):
    gw = make_gw(mode="native")
    # as llama-server answers when a stop sequence matched
    gw.script([("json", {"id": "msg_2", "type": "message", "role": "assistant", "model": "smollm2",
                         "content": [{"type": "text", "text": "yo"}], "stop_reason": "end_turn",
                         "stop_sequence": "5", "usage": {"input_tokens": 3, "output_tokens": 1}})])
    message = gw.client().messages.create(model="claude-x", max_tokens=8,
                                          thinking={"type": "disabled"},
                                          messages=[{"role": "user", "content": "t"}])
    assert (message.model, message.content[0].text) == ("claude-x", "yo")
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "5")
    assert "thinking" not in gw.last_request("/v1/messages")


def test_native_relay_handles_split_frames_llama_pings_and_errors(make_gw):
    gw = make_gw(mode="native")
    whole = b"".join(step[1] for step in NATIVE_STREAM[:3])
    # frames cut at odd places, llama-server's own ":" keep-alive comments, CRLF line ends
    cut = whole.index(b"\n\n") + 2  # llama-server pings between frames
    gw.script([("raw", whole[:17]), ("sleep", 0.02), ("raw", whole[17:cut]), ("raw", b":\n\n"),
               ("raw", whole[cut:cut + 9]), ("raw", whole[cut + 9:].replace(b"\n", b"\r\n")),
               ("raw", b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n')])
    import requests
    from gw_harness import API_KEY
    body = {"model": "claude-x", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "t"}]}
    with requests.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": API_KEY}, stream=True) as r:
        text = r.content.decode()
    frames = [f for f in text.split("\n\n") if f]
    assert [f.split("\n")[0] for f in frames] == ["event: message_start", "event: content_block_start",
                                                   "event: content_block_delta", "event: error"]
    assert '"model":"claude-x"' in frames[0]


def renumber(step: tuple) -> tuple:
    """The canned text block moved to index 1."""
    return ("raw", step[1].replace(b'"index": 0', b'"index": 1'))


def test_native_thinking_block_gets_a_signature(make_gw):
    gw = make_gw(mode="native")
    gw.script([NATIVE_STREAM[0],
               sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""}}),
               sse({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "hm"}}),
               sse({"type": "content_block_stop", "index": 0})]
              + [renumber(step) for step in NATIVE_STREAM[1:]])
    with gw.client().messages.stream(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "q"}],
                                     thinking={"type": "enabled", "budget_tokens": 32}) as stream:
        events = [e.type for e in stream]
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "hm" and message.content[0].signature.startswith("local.")
    assert events.index("signature") < events.index("content_block_stop")


def test_native_thinking_disabled_turns_the_templates_thinking_off(make_gw):
    """Issue 19.5: without enable_thinking=false a model that thinks by default still thinks."""
    gw = make_gw(mode="native")
    gw.script(NATIVE_STREAM)
    with gw.client().messages.stream(model="claude-x", max_tokens=64, thinking={"type": "disabled"},
                                     messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.get_final_message()
    sent = gw.last_request("/v1/messages")
    assert "thinking" not in sent and sent["chat_template_kwargs"] == {"enable_thinking": False}
