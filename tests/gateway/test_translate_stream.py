"""The streaming state machine and stop matcher, compared as whole event sequences."""

from __future__ import annotations

import json

import pytest

from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.stop_matcher import StopMatcher
from provisioner.gateway.translate_response import from_openai, message_from_events
from provisioner.gateway.translate_stream import StreamTranslator


def run(chunks: list[dict | str], **kw) -> list[dict]:
    """Feed chunks, return the decoded events after message_start (checking event == data.type)."""
    translator = StreamTranslator(model="claude-x", message_id="msg_t", **kw)
    out: list[bytes] = [translator.start()]
    for c in chunks:
        translator.feed(c.encode() if isinstance(c, str) else json.dumps(c).encode(), out)
    translator.finish(out)
    events = []
    for frame in b"".join(out).split(b"\n\n")[:-1]:
        head, data = frame.split(b"\n")
        event = json.loads(data[6:])
        assert head == b"event: " + event["type"].encode()
        events.append(event)
    assert events[0]["type"] == "message_start" and events[-1] == {"type": "message_stop"}
    return events[1:-1]


def d(**delta) -> dict:
    finish = delta.pop("finish", None)
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call(i, id=None, name=None, args=None) -> dict:
    entry = {"index": i, "function": {}}
    if id:
        entry["id"] = id
    if name:
        entry["function"]["name"] = name
    if args is not None:
        entry["function"]["arguments"] = args
    return entry


def short(events: list[dict]) -> list[tuple]:
    out = []
    for e in events:
        if e["type"] == "content_block_start":
            out.append(("start", e["index"], e["content_block"]["type"]))
        elif e["type"] == "content_block_delta":
            delta = e["delta"]
            value = next(v for k, v in delta.items() if k != "type")
            out.append((delta["type"], e["index"], value if delta["type"] != "signature_delta" else "sig"))
        elif e["type"] == "content_block_stop":
            out.append(("stop", e["index"]))
        elif e["type"] == "message_delta":
            out.append(("end", e["delta"]["stop_reason"], e["delta"]["stop_sequence"]))
    return out


def test_thinking_text_tools_and_late_text():
    events = run([d(reasoning_content="hm"), d(content="Hi"),
                  d(tool_calls=[call(0, "a", "f", '{"x":')]),
                  d(tool_calls=[call(1, "b", "g", "{}")]),      # a's JSON incomplete: buffered
                  d(tool_calls=[call(0, args="1}")]),
                  d(content="  \n"),                           # whitespace after tools: dropped
                  d(finish="tool_calls"), "[DONE]"])
    assert short(events) == [
        ("start", 0, "thinking"), ("thinking_delta", 0, "hm"), ("signature_delta", 0, "sig"), ("stop", 0),
        ("start", 1, "text"), ("text_delta", 1, "Hi"), ("stop", 1),
        ("start", 2, "tool_use"), ("input_json_delta", 2, '{"x":'), ("input_json_delta", 2, "1}"), ("stop", 2),
        ("start", 3, "tool_use"), ("input_json_delta", 3, "{}"), ("stop", 3),
        ("end", "tool_use", None)]


def test_stop_sequence_split_across_chunks_and_false_start():
    events = run([d(content="a <"), d(content="<x"), d(content=" b <<"), d(content="END"), d(content="zzz")],
                 stop_sequences=("<<END",))
    assert short(events) == [("start", 0, "text"), ("text_delta", 0, "a "), ("text_delta", 0, "<<x"),
                             ("text_delta", 0, " b "), ("stop", 0), ("end", "stop_sequence", "<<END")]


def test_nothing_after_a_stop_sequence_in_the_same_batch():
    events = run([d(content="ok STOP"), d(tool_calls=[call(0, "c", "f", "{}")]), d(content="more")],
                 stop_sequences=("STOP",))
    assert short(events) == [("start", 0, "text"), ("text_delta", 0, "ok "), ("stop", 0),
                             ("end", "stop_sequence", "STOP")]


def test_held_back_text_is_flushed_at_the_end():
    events = run([d(content="ends with <"), d(finish="stop")], stop_sequences=("<<END",))
    assert short(events) == [("start", 0, "text"), ("text_delta", 0, "ends with "), ("text_delta", 0, "<"),
                             ("stop", 0), ("end", "end_turn", None)]


def test_empty_answer_still_ends_properly():
    events = run([d(content=""), d(finish="length")])
    assert short(events) == [("end", "max_tokens", None)]
    assert events[-1]["usage"] == {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0}


def test_upstream_error_chunk_and_garbage_raise_api_errors():
    translator = StreamTranslator(model="m")
    with pytest.raises(ApiError) as info:
        translator.feed(b'{"error":{"code":503,"message":"Loading model"}}', [])
    assert info.value.error_type == "overloaded_error"
    with pytest.raises(ApiError) as info:
        translator.feed(b"not json", [])
    assert (info.value.status, info.value.error_type) == (502, "api_error")


@pytest.mark.parametrize("pieces, seqs, emitted, matched", [
    (["abc"], ("x",), "abc", None),
    (["ab", "cX", "Yz"], ("XY",), "abc", "XY"),
    (["aXYZ"], ("YZ", "XY"), "a", "XY"),
    (["a", "X", "X", "Y"], ("XY",), "aX", "XY"),
])
def test_stop_matcher(pieces, seqs, emitted, matched):
    matcher = StopMatcher(seqs)
    text = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    assert (text, matcher.matched) == (emitted, matched)


def test_from_openai_whole_message():
    message = from_openai({"choices": [{"finish_reason": "length", "message": {
        "role": "assistant", "content": "partial", "tool_calls": [
            {"id": "", "type": "function", "function": {"name": "", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2}}, model="claude-x")
    assert message["id"].startswith("msg_")
    del message["id"]
    assert message == {"type": "message", "role": "assistant", "model": "claude-x",
                       "content": [{"type": "text", "text": "partial"}], "stop_reason": "max_tokens",
                       "stop_sequence": None, "usage": {"input_tokens": 4, "output_tokens": 2,
                                                        "cache_creation_input_tokens": 0,
                                                        "cache_read_input_tokens": 0}}


def test_message_from_events_folds_the_translator_output():
    translator = StreamTranslator(model="claude-x", message_id="msg_f")
    out = [translator.start()]
    for c in (d(reasoning_content="r"), d(content="t"), d(tool_calls=[call(0, "c", "f", '{"a":[1')]),
              d(tool_calls=[call(0, args="]}")]), d(finish="stop")):
        translator.feed(json.dumps(c).encode(), out)
    translator.finish(out)
    message = message_from_events(b"".join(out))
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][2]["input"] == {"a": [1]} and message["stop_reason"] == "tool_use"


# --- property: any chunk sequence yields a contract-conforming event stream (or a clean ApiError) ---
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DELTA_FOR = {"text": "text_delta", "thinking": ("thinking_delta", "signature_delta"), "tool_use": "input_json_delta"}
texts = st.sampled_from(["", "a", " ", "STOP", "ST", "OP", "{", "}", '{"k":1}', "\n", "é"]) | st.text(max_size=5)
tool_calls = st.lists(st.fixed_dictionaries({"index": st.integers(0, 2)}, optional={
    "id": st.sampled_from(["c1", "c2", ""]), "function": st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["f", "g", ""]), "arguments": texts})}), max_size=2)
deltas = st.fixed_dictionaries({}, optional={"content": texts | st.none(), "reasoning_content": texts,
                                             "tool_calls": tool_calls})
chunks = st.one_of(
    st.builds(lambda d, f: {"choices": [{"index": 0, "delta": d, "finish_reason": f}]}, deltas,
              st.sampled_from([None, None, None, "stop", "length", "tool_calls", "weird"])),
    st.just({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                      "prompt_tokens_details": {"cached_tokens": 3}}}),
    st.just({"choices": "nonsense"}), st.just({"choices": [None]}))


def check_contract(events: list[dict]) -> None:
    open_block, next_index, kinds, tool_seen = None, 0, {}, False
    for e in events[:-1]:
        if e["type"] == "content_block_start":
            assert open_block is None and e["index"] == next_index
            open_block, next_index = e["index"], next_index + 1
            kinds[e["index"]] = e["content_block"]["type"]
            tool_seen |= kinds[e["index"]] == "tool_use"
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_block
            allowed = DELTA_FOR[kinds[open_block]]
            assert e["delta"]["type"] in (allowed if isinstance(allowed, tuple) else (allowed,))
        elif e["type"] == "content_block_stop":
            assert e["index"] == open_block
            open_block = None
    assert open_block is None
    end = events[-1]
    assert end["type"] == "message_delta" and end["delta"]["stop_reason"] in (
        "end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal")
    # a tool call cut off by max_tokens is reported as max_tokens, never as a tool to run
    assert end["delta"]["stop_reason"] in (("tool_use", "max_tokens") if tool_seen else
                                           ("end_turn", "max_tokens", "stop_sequence", "refusal"))


@settings(max_examples=600, deadline=None)
@given(st.lists(chunks, max_size=12), st.sampled_from([(), ("STOP",)]))
def test_any_chunk_sequence_keeps_the_streaming_contract(sequence, stops):
    try:
        events = run(sequence + ["[DONE]"], stop_sequences=stops)
    except ApiError:
        return
    check_contract(events)


@pytest.mark.parametrize("status, body, expected", [
    (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
     (529, "overloaded_error", "the model server is busy: Loading model")),
    (500, {"error": {"code": 500, "type": "server_error", "message": "image input is not supported - hint: "
                     "if this is unexpected, you may need to provide the mmproj"}},
     (400, "invalid_request_error", "the model server cannot serve this request: image input is not supported"
                                    " - hint: if this is unexpected, you may need to provide the mmproj")),
    (400, {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 3031, "n_ctx": 2048,
                     "message": "the request exceeds the available context size, try increasing it"}},
     (400, "invalid_request_error", "prompt is too long: 3031 tokens > 2048 maximum")),
    (401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}},
     (500, "api_error", "the model server rejected the gateway's credentials; check upstream_api_key_file")),
    (500, "plain text failure", (500, "api_error", "the model server failed: plain text failure")),
])
def test_upstream_error_mapping(status, body, expected):
    from provisioner.gateway.upstream_errors import error_from_upstream
    error = error_from_upstream(status, body)
    assert (error.status, error.error_type, error.message) == expected
