"""Anthropic → OpenAI request translation, compared as whole outputs."""

from __future__ import annotations

import pytest

from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.translate_request import translate_request

WEATHER = {"name": "weather", "description": "Weather", "cache_control": {"type": "ephemeral"},
           "strict": True, "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
CLOCK = {"name": "clock", "defer_loading": True, "input_schema": {"type": "object"}}
FN_WEATHER = {"type": "function", "function": {"name": "weather", "parameters": WEATHER["input_schema"],
                                               "description": "Weather"}}
FN_CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}


def tr(**body):
    body.setdefault("model", "claude-x")
    body.setdefault("max_tokens", 100)
    return translate_request(body, upstream_model="local").payload


def test_tool_round_trip_orders_tool_messages_before_user_text():
    payload = tr(
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=ab12;"},
                {"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}],
        tools=[WEATHER, CLOCK],
        messages=[
            {"role": "user", "content": "Weather in Bern and the time?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two tools.", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Bern"}},
                {"type": "tool_use", "id": "t2", "name": "clock", "input": {}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Also, hurry."},
                {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 20°C"},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
                 "content": [{"type": "text", "text": "clock offline"}]}]}])
    assert payload == {
        "model": "local",
        "messages": [
            {"role": "system", "content": "You are helpful.\n\nBe brief."},
            {"role": "user", "content": "Weather in Bern and the time?"},
            {"role": "assistant", "content": "Let me check.", "reasoning_content": "Two tools.",
             "tool_calls": [
                 {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Bern"}'}},
                 {"id": "t2", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "Sunny, 20°C"},
            {"role": "tool", "tool_call_id": "t2", "content": "Error: clock offline"},
            {"role": "user", "content": "Also, hurry."}],
        "tools": [FN_WEATHER, FN_CLOCK],
        "parallel_tool_calls": True,
        "max_tokens": 100}


def test_images_base64_url_and_inside_tool_results():
    payload = tr(messages=[
        {"role": "assistant", "content": [{"type": "tool_use", "id": "s1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "s1", "content": [
                {"type": "text", "text": "screenshot"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            {"type": "text", "text": "What do you see?"}]}])
    assert payload["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "s1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "s1", "content": "screenshot\n\n[1 image(s) follow in the next message]"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            {"type": "text", "text": "What do you see?"}]}]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, {"tool_choice": "auto", "parallel_tool_calls": True}),
    ({"type": "any"}, {"tool_choice": "required", "parallel_tool_calls": True}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "tool", "name": "clock"}, {"tool_choice": "required", "parallel_tool_calls": True,
                                         "tools": [FN_CLOCK]}),
    ({"type": "tool", "name": "clock", "disable_parallel_tool_use": True},
     {"tool_choice": "required", "parallel_tool_calls": False, "tools": [FN_CLOCK]}),
])
def test_tool_choice_variants(choice, expected):
    payload = tr(tools=[WEATHER, CLOCK], tool_choice=choice, messages=[{"role": "user", "content": "x"}])
    assert payload == {"model": "local", "messages": [{"role": "user", "content": "x"}],
                       "tools": [FN_WEATHER, FN_CLOCK], "max_tokens": 100, **expected}


def test_sampling_stream_thinking_and_ignored_fields():
    t = translate_request({"model": "claude-x", "max_tokens": 5, "stream": True, "temperature": 0.2,
                          "top_p": 0.9, "top_k": 40, "stop_sequences": ["END", "END", "##"],
                          "metadata": {"user_id": "u"}, "thinking": {"type": "disabled"},
                          "system": "Plain system.", "messages": [{"role": "user", "content": "hi"}]},
                         upstream_model="local")
    assert t.payload == {"model": "local", "messages": [{"role": "system", "content": "Plain system."},
                                                        {"role": "user", "content": "hi"}],
                         "chat_template_kwargs": {"enable_thinking": False}, "max_tokens": 5,
                         "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stream": True,
                         "stream_options": {"include_usage": True}}
    assert (t.stream, t.stop_sequences, t.requested_model) == (True, ("END", "##"), "claude-x")


@pytest.mark.parametrize("thinking, expected", [
    ({"type": "enabled", "budget_tokens": 2048},
     {"chat_template_kwargs": {"enable_thinking": True}, "thinking_budget_tokens": 2048}),
    ({"type": "enabled"}, {"chat_template_kwargs": {"enable_thinking": True}}),
    ({"type": "adaptive"}, {"chat_template_kwargs": {"enable_thinking": True}}),
])
def test_thinking_budget_is_forwarded_under_llama_servers_name(thinking, expected):
    payload = tr(thinking=thinking, messages=[{"role": "user", "content": "x"}])
    assert {k: payload[k] for k in expected} == expected
    assert ("thinking_budget_tokens" in payload) == ("thinking_budget_tokens" in expected)


@pytest.mark.parametrize("budget, message", [
    ("many", "thinking.budget_tokens: expected an integer, found str"),
    (True, "thinking.budget_tokens: expected an integer, found bool"),
    (0, "thinking.budget_tokens: must be at least 1"),
])
def test_thinking_budget_errors(budget, message):
    with pytest.raises(ApiError) as err:
        tr(thinking={"type": "enabled", "budget_tokens": budget}, messages=[{"role": "user", "content": "x"}])
    assert message in str(err.value)


def test_system_role_messages_join_the_leading_system_prompt():
    """Claude Code 2.1.x sends role=system inside messages (seen in the end-to-end run)."""
    payload = tr(system="Top.", messages=[
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Reminder."}]},
        {"role": "assistant", "content": "ok"}])
    assert payload["messages"] == [{"role": "system", "content": "Top.\n\nReminder."},
                                   {"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "ok"}]


def test_server_tools_are_dropped():
    payload = tr(tools=[{"type": "web_search_20250305", "name": "web_search"}, CLOCK],
                 messages=[{"role": "user", "content": "x"}])
    assert payload["tools"] == [FN_CLOCK]


@pytest.mark.parametrize("body, message", [
    ({"model": "m", "messages": []}, "max_tokens: field required"),
    ({"model": "m", "max_tokens": 1}, "messages: field required"),
    ({"model": "m", "max_tokens": True, "messages": []}, "max_tokens: expected an integer, found bool"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens: must be at least 1"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]},
     "messages.0.role: expected 'user', 'assistant' or 'system', found 'tool'"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": [{"type": "image"}]}]},
     "messages.0.content.0.type: expected 'text', found 'image'"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
     "messages.0.content.0.type: unsupported content block type 'audio'"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": 7}]}]},
     "messages.0.content.0.tool_use_id: expected a string, found int"),
    ({"model": "m", "max_tokens": 1, "temperature": 1.5, "messages": []}, "temperature: must be between 0 and 1"),
    ({"model": "m", "max_tokens": 1, "tool_choice": {"type": "tool", "name": "nope"}, "messages": []},
     "tool_choice.name: no tool named 'nope' in tools"),
    ({"model": "m", "max_tokens": 1, "stop_sequences": [""], "messages": []},
     "stop_sequences: expected a list of non-empty strings"),
])
def test_invalid_requests_name_the_path(body, message):
    with pytest.raises(ApiError) as info:
        translate_request(body, upstream_model="local")
    assert (info.value.status, info.value.error_type, info.value.message) == (400, "invalid_request_error", message)


def test_tool_search_references_and_search_results_become_text():
    payload = tr(messages=[
        {"role": "assistant", "content": [{"type": "tool_use", "id": "s", "name": "search", "input": {"q": "x"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "s", "content": [
                {"type": "tool_reference", "tool_name": "mcp__db__query"}]},
            {"type": "search_result", "source": "https://d", "title": "Doc",
             "content": [{"type": "text", "text": "body"}]}]}])
    assert payload["messages"][1:] == [
        {"role": "tool", "tool_call_id": "s", "content": "[tool available: mcp__db__query]"},
        {"role": "user", "content": "Doc\nbody"}]
