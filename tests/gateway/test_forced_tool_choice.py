"""A forced tool_choice the model's chat template cannot honour (issue 20, point 11): llama-server then
answers in text with stop_reason max_tokens; the gateway says so as an Anthropic error instead."""

from __future__ import annotations

import anthropic
import pytest

from gw_scripted_upstream import chunk, text_script, tool_delta, usage_chunk

TOOLS = [{"name": "clock", "input_schema": {"type": "object"}}]
ASK = [{"role": "user", "content": "time?"}]
TEXT_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "smollm2",
               "choices": [{"index": 0, "finish_reason": "length",
                            "message": {"role": "assistant", "content": "It is noon somewhere."}}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "clock"}])
def test_forced_choice_answered_in_text_is_an_error_not_text(gw, choice):
    gw.script([("json", TEXT_ANSWER)])
    with pytest.raises(anthropic.BadRequestError) as info:
        gw.client().messages.create(model="claude-x", max_tokens=5, tools=TOOLS, tool_choice=choice, messages=ASK)
    assert "tool_choice requires a tool call, but the model answered with text" in str(info.value)
    assert gw.last_request()["tool_choice"] == "required"
    # streaming: an error event where the text would have begun
    gw.script(text_script(["\n", "It is noon."], finish="length"))
    with pytest.raises(anthropic.APIStatusError) as info:
        with gw.client().messages.stream(model="claude-x", max_tokens=5, tools=TOOLS, tool_choice=choice,
                                         messages=ASK) as stream:
            for _ in stream:
                pass
    assert "chat template cannot honour a forced tool choice" in str(info.value)


def test_forced_choice_that_is_honoured_streams_the_call(gw):
    gw.script([chunk(role="assistant", content="\n"),
               chunk(tool_calls=[tool_delta(0, id="call_1", name="clock", args="{}")]),
               chunk(finish="tool_calls"), usage_chunk(9, 3)])
    with gw.client().messages.stream(model="claude-x", max_tokens=50, tools=TOOLS, tool_choice={"type": "any"},
                                     messages=ASK) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["tool_use"] and message.stop_reason == "tool_use"
    # auto: text is a fine answer
    gw.script([("json", TEXT_ANSWER)])
    auto = gw.client().messages.create(model="claude-x", max_tokens=5, tools=TOOLS, tool_choice={"type": "auto"},
                                       messages=ASK)
    assert auto.content[0].text == "It is noon somewhere."
