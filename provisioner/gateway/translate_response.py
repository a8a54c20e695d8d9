"""OpenAI chat-completion response → Anthropic Messages response (non-streaming).

Also :func:`message_from_events`, which folds the gateway's own SSE events into
a message: used for non-streaming requests with stop sequences, which the
gateway serves from an upstream stream so it can match the sequences itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.ids import new_id
from provisioner.gateway.jsonfast import loads
from provisioner.gateway.translate_stream import FINISH_REASONS, anthropic_usage, thinking_signature
from provisioner.gateway.upstream_errors import protocol_error


def _tool_input(arguments: Any) -> dict | None:
    """The call's input, or None when its arguments are not complete JSON (cut off, or broken)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = loads(arguments)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else {"value": value}


def _broken_tool_call(name: str) -> ApiError:
    """A finished turn with unparseable tool arguments: never hand a client a tool to run with them."""
    return protocol_error(f"the model server ended a call of tool {name!r} with arguments that are not "
                          "valid JSON")


def from_openai(response: Any, *, model: str) -> dict:
    """Build the Anthropic message for a non-streaming chat-completion response."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise protocol_error("the model server's response has no choices")
    choice = choices[0]
    raw_message = choice.get("message")
    message: dict = raw_message if isinstance(raw_message, dict) else {}
    content: list[dict] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning,
                        "signature": thinking_signature(hashlib.sha256(reasoning.encode()))})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    finish = choice.get("finish_reason")
    truncated = finish == "length"
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        function = call["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("toolu_")
        tool_input = _tool_input(function.get("arguments"))
        if tool_input is None:
            if truncated:
                continue  # cut off by max_tokens: the turn says max_tokens, the half call is left out
            raise _broken_tool_call(name)
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": tool_input})
    if truncated:
        # Anthropic's answer to a turn cut off by max_tokens, whatever it was doing (a tool call too):
        # llama-server says "length" for any stop that was neither a stop word nor EOS
        # (tools/server/server-task.cpp:415-424), tool calls included.
        stop_reason = "max_tokens"
    elif any(block["type"] == "tool_use" for block in content):
        stop_reason = "tool_use"
    else:
        stop_reason = FINISH_REASONS.get(finish if isinstance(finish, str) else "stop", "end_turn")
        if stop_reason == "tool_use":
            stop_reason = "end_turn"
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": anthropic_usage(response.get("usage"))}


def message_from_events(stream: bytes) -> dict:
    """Fold Anthropic SSE bytes (as :class:`StreamTranslator` writes them) into a message."""
    message: dict = {}
    json_bufs: dict[int, str] = {}
    for raw in stream.split(b"\n\n"):
        if not raw.strip():
            continue
        data = raw.split(b"\ndata: ", 1)[1]
        event = loads(data)
        kind = event["type"]
        if kind == "message_start":
            message = event["message"]
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                json_bufs[event["index"]] = json_bufs.get(event["index"], "") + delta["partial_json"]
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"] = event["usage"]
    broken = []
    for index, text in json_bufs.items():
        tool_input = _tool_input(text)
        if tool_input is None:
            if message.get("stop_reason") != "max_tokens":
                raise _broken_tool_call(message["content"][index]["name"])
            broken.append(index)
        else:
            message["content"][index]["input"] = tool_input
    # a call cut off by max_tokens is left out, as in from_openai
    message["content"] = [b for i, b in enumerate(message["content"]) if i not in broken]
    return message
