"""Streaming through the gateway with the official anthropic SDK as the client."""

from __future__ import annotations

import json

import anthropic
import pytest

from gw_scripted_upstream import chunk, text_script, tool_delta, usage_chunk

TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
         {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}]


def events_of(stream) -> list:
    return [event for event in stream]


def test_text_stream_accumulates_and_echoes_model(gw):
    gw.script(text_script(["Hel", "lo", " there"], prompt=42, cached=30))
    with gw.client().messages.stream(model="claude-local-test", max_tokens=64,
                                     messages=[{"role": "user", "content": "hi"}]) as stream:
        message = stream.get_final_message()
    assert message.model == "claude-local-test"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (12, 30, 3)
    sent = gw.last_request()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "smollm2"


def test_tool_arguments_in_one_byte_fragments(gw):
    args = json.dumps({"city": "Zürich", "days": [1, 2]})
    steps = [chunk(role="assistant", content=""),
             chunk(tool_calls=[tool_delta(0, id="call_1", name="get_weather", args="")])]
    steps += [chunk(tool_calls=[tool_delta(0, args=ch)]) for ch in args]
    steps += [chunk(finish="tool_calls"), usage_chunk(20, 15), ("done",)]
    gw.script(steps)
    with gw.client().messages.stream(model="claude-x", max_tokens=64, tools=TOOLS,
                                     messages=[{"role": "user", "content": "weather?"}]) as stream:
        events = events_of(stream)
        message = stream.get_final_message()
    deltas = [e for e in events if e.type == "input_json"]
    assert len(deltas) == len(args)  # forwarded live, one fragment per upstream chunk
    assert message.content[0].type == "tool_use"
    assert (message.content[0].id, message.content[0].name) == ("call_1", "get_weather")
    assert message.content[0].input == {"city": "Zürich", "days": [1, 2]}
    assert message.stop_reason == "tool_use"


def test_interleaved_parallel_tool_calls(gw):
    a, b = json.dumps({"city": "Bern"}), json.dumps({"tz": "UTC"})
    steps = [chunk(tool_calls=[tool_delta(0, id="call_a", name="get_weather", args=""),
                               tool_delta(1, id="call_b", name="get_time", args="")])]
    for i in range(max(len(a), len(b))):
        calls = []
        if i < len(a):
            calls.append(tool_delta(0, args=a[i]))
        if i < len(b):
            calls.append(tool_delta(1, args=b[i]))
        steps.append(chunk(tool_calls=calls))
    steps += [chunk(finish="tool_calls"), usage_chunk(5, 9), ("done",)]
    gw.script(steps)
    with gw.client().messages.stream(model="claude-x", max_tokens=64, tools=TOOLS,
                                     messages=[{"role": "user", "content": "both"}]) as stream:
        events = events_of(stream)
        message = stream.get_final_message()
    assert [(c.type, c.id, c.input) for c in message.content] == [
        ("tool_use", "call_a", {"city": "Bern"}), ("tool_use", "call_b", {"tz": "UTC"})]
    open_blocks = 0
    for e in events:  # one block open at a time, indexes in start order
        if e.type == "content_block_start":
            assert open_blocks == 0
            open_blocks += 1
        elif e.type == "content_block_stop":
            open_blocks -= 1
    assert [e.index for e in events if e.type == "content_block_start"] == [0, 1]


def test_sequential_parallel_calls_both_stream_live(gw):
    steps = [chunk(tool_calls=[tool_delta(0, id="c1", name="get_weather", args='{"city":')]),
             chunk(tool_calls=[tool_delta(0, args='"Oslo"}')]),
             chunk(tool_calls=[tool_delta(1, id="c2", name="get_time", args='{"tz":')]),
             chunk(tool_calls=[tool_delta(1, args='"CET"}')]),
             chunk(finish="tool_calls"), usage_chunk(5, 9), ("done",)]
    gw.script(steps)
    with gw.client().messages.stream(model="claude-x", max_tokens=64, tools=TOOLS,
                                     messages=[{"role": "user", "content": "both"}]) as stream:
        events = events_of(stream)
        message = stream.get_final_message()
    assert [c.input for c in message.content] == [{"city": "Oslo"}, {"tz": "CET"}]
    kinds = [e.type for e in events if e.type in ("content_block_start", "input_json", "content_block_stop")]
    assert kinds == ["content_block_start", "input_json", "input_json", "content_block_stop",
                     "content_block_start", "input_json", "input_json", "content_block_stop"]


def test_usage_after_finish_reason_and_reasoning_before_text(gw):
    steps = [chunk(role="assistant", reasoning="Let me "), chunk(reasoning="think."),
             chunk(content="Answer"), chunk(content="."), chunk(finish="stop"),
             ("sleep", 0.05), usage_chunk(100, 7, cached=64), ("done",)]
    gw.script(steps)
    with gw.client().messages.stream(model="claude-x", max_tokens=64,
                                     thinking={"type": "enabled", "budget_tokens": 1024},
                                     messages=[{"role": "user", "content": "q"}]) as stream:
        events = events_of(stream)
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."
    assert message.content[0].signature  # signature_delta came before the block closed
    sig = [i for i, e in enumerate(events) if e.type == "signature"]
    stop0 = [i for i, e in enumerate(events) if e.type == "content_block_stop" and e.index == 0]
    assert sig and sig[0] < stop0[0]
    assert message.content[1].text == "Answer."
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (36, 64, 7)
    assert gw.last_request()["chat_template_kwargs"] == {"enable_thinking": True}


def test_tool_call_with_finish_reason_stop_is_tool_use(gw):
    steps = [chunk(content="Checking."),
             chunk(tool_calls=[tool_delta(0, id="c9", name="get_time", args='{"tz":"UTC"}')]),
             chunk(finish="stop"), usage_chunk(5, 5), ("done",)]
    gw.script(steps)
    with gw.client().messages.stream(model="claude-x", max_tokens=64, tools=TOOLS,
                                     messages=[{"role": "user", "content": "t"}]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.stop_reason == "tool_use"


def test_stop_sequence_is_matched_and_reported(gw):
    gw.script(text_script(["one two ", "ST", "OP three", " four"]))
    with gw.client().messages.stream(model="claude-x", max_tokens=64, stop_sequences=["STOP"],
                                     messages=[{"role": "user", "content": "count"}]) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "one two "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    assert "stop" not in gw.last_request()


def test_length_finish_is_max_tokens(gw):
    gw.script(text_script(["a", "b"], finish="length"))
    with gw.client().messages.stream(model="claude-x", max_tokens=2,
                                     messages=[{"role": "user", "content": "x"}]) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"


def claude_code_body(cch: str) -> dict:
    return {
        "model": "claude-sonnet-x", "max_tokens": 32000, "stream": True,
        "metadata": {"user_id": "user_abc_account__session_1"},
        "thinking": {"type": "adaptive"},
        "system": [{"type": "text",
                    "text": f"x-anthropic-billing-header: cc_version=2.1.330.abc; cc_entrypoint=cli; cch={cch};"},
                   {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "description": "Run a command", "strict": True,
                   "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                    "required": ["command"], "additionalProperties": False,
                                    "$schema": "http://json-schema.org/draft-07/schema#"}},
                  {"name": "mcp__x__y", "defer_loading": True, "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
            {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}}]}]}


def test_claude_code_request_prefix_is_stable_across_billing_headers(gw):
    import requests
    from gw_harness import API_KEY
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming"}
    sent = []
    for cch in ("a1b2c", "ffff0"):
        gw.script(text_script(["ok"]))
        with requests.post(gw.url + "/v1/messages?beta=true", json=claude_code_body(cch), headers=headers,
                           stream=True) as response:
            assert response.status_code == 200 and response.text.endswith('{"type":"message_stop"}\n\n')
        sent.append(json.dumps(gw.last_request()))
    assert sent[0] == sent[1]
    upstream = json.loads(sent[0])
    assert upstream["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    assert upstream["messages"][1] == {"role": "user",
                                       "content": "<system-reminder>ctx</system-reminder>\n\nlist files"}
    assert [t["function"]["name"] for t in upstream["tools"]] == ["Bash", "mcp__x__y"]
    assert "cache_control" not in sent[0] and "defer_loading" not in sent[0] and "strict" not in sent[0]
    assert upstream["chat_template_kwargs"] == {"enable_thinking": True} and upstream["max_tokens"] == 32000


# --- issue 19.1: a tool call cut off by max_tokens is max_tokens, never a tool to run -------------
CUT_TOOL = [chunk(content="Reading."),
            chunk(tool_calls=[tool_delta(0, id="c5", name="get_time", args='{"tz": "Eur')]),
            chunk(finish="length"), usage_chunk(5, 8), ("done",)]


def test_tool_call_cut_by_max_tokens_streams_max_tokens(gw):
    gw.script(CUT_TOOL)
    with gw.client().messages.stream(model="claude-x", max_tokens=8, tools=TOOLS,
                                     messages=[{"role": "user", "content": "t"}]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "max_tokens"
    # raw SSE: the live tool block went out, the turn ends with max_tokens
    import requests
    from gw_harness import API_KEY
    gw.script(CUT_TOOL)
    body = {"model": "claude-x", "max_tokens": 8, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": "t"}]}
    with requests.post(gw.url + "/v1/messages", json=body, stream=True,
                       headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"


def test_tool_call_cut_by_max_tokens_non_streaming_leaves_the_half_call_out(gw):
    gw.script([("json", {"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": "Reading.", "tool_calls": [
                {"id": "c5", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "Eur'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8}})])
    message = gw.client().messages.create(model="claude-x", max_tokens=8, tools=TOOLS,
                                          messages=[{"role": "user", "content": "t"}])
    assert message.stop_reason == "max_tokens"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Reading."
    # the same through the stop-sequence path (a non-streaming answer served from a stream)
    gw.script(CUT_TOOL)
    message = gw.client().messages.create(model="claude-x", max_tokens=8, tools=TOOLS, stop_sequences=["##"],
                                          messages=[{"role": "user", "content": "t"}])
    assert message.stop_reason == "max_tokens" and [b.type for b in message.content] == ["text"]


def test_finished_tool_call_with_broken_arguments_is_an_error_not_a_tool_to_run(gw):
    gw.script([("json", {"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [
                {"id": "c5", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": '}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8}})])
    with pytest.raises(anthropic.APIStatusError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=8, tools=TOOLS,
                                    messages=[{"role": "user", "content": "t"}])
    assert info.value.status_code == 502 and "not valid JSON" in info.value.body["error"]["message"]
    gw.script([chunk(tool_calls=[tool_delta(0, id="c5", name="get_time", args='{"tz": ')]),
               chunk(finish="tool_calls"), ("done",)])
    with pytest.raises(anthropic.APIStatusError):
        with gw.client().messages.stream(model="claude-x", max_tokens=8, tools=TOOLS,
                                         messages=[{"role": "user", "content": "t"}]) as stream:
            stream.get_final_message()
