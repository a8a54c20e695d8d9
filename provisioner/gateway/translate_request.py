"""Anthropic Messages request → OpenAI chat-completions request.

Validation and translation happen in one pass: anything malformed raises
``invalid_request`` (HTTP 400) naming the offending path, e.g.
``messages.2.content.0.tool_use_id: expected a string``. Nothing a client sends
may end in a traceback.

Stop sequences are *not* sent upstream: OpenAI-style backends strip the matched
text and do not say which sequence matched, so the gateway matches them itself
(see :mod:`provisioner.gateway.stop_matcher`) and can report ``stop_sequence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.gateway.api_errors import invalid_request
from provisioner.gateway.jsonfast import dumps
from provisioner.gateway.request_fields import (as_blocks, field_error, number_field, optional_string,
                                                  string_field)
from provisioner.gateway.sanitize import is_billing_header
from provisioner.gateway.translate_options import apply_output_format, apply_thinking
from provisioner.gateway.translate_tools import apply_tool_choice, translate_tools

MAX_TOKENS_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Translated:
    """The upstream request plus what the response side needs to know."""

    payload: dict[str, Any]
    requested_model: str
    stream: bool
    stop_sequences: tuple[str, ...]
    #: tool_choice any/tool: a call is required; an answer in text means the template ignored it
    forced_tool: bool = False


def _image_part(block: dict, path: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise field_error(f"{path}.source", "an object", source)
    kind = source.get("type")
    if kind == "base64":
        media = string_field(source, "media_type", f"{path}.source")
        data = string_field(source, "data", f"{path}.source")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = string_field(source, "url", f"{path}.source")
    else:
        raise invalid_request(f"{path}.source.type: expected 'base64' or 'url', found {kind!r}")
    return {"type": "image_url", "image_url": {"url": url}}


#: document blocks are text by now (:mod:`provisioner.gateway.documents` runs first)
TEXT_LIKE = ("text", "search_result", "tool_reference")


def _text_of(block: dict, path: str) -> str:
    """Text for a text block, a search result or a tool reference."""
    kind = block["type"]
    if kind == "text":
        return string_field(block, "text", path)
    if kind == "tool_reference":  # Claude Code's tool search: the tool is now available
        return f"[tool available: {string_field(block, 'tool_name', path)}]"
    title = optional_string(block, "title", path) or ""  # a search result
    parts = [title] + [string_field(b, "text", f"{path}.content.{i}")
                       for i, b in enumerate(as_blocks(block.get("content"), f"{path}.content"))
                       if b["type"] == "text"]
    return "\n".join(p for p in parts if p)


def _join_parts(parts: list[dict]) -> str | list[dict]:
    """A string when every part is text (templates handle that best), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict, path: str) -> tuple[dict, list[dict]]:
    """A tool message, plus image parts that must travel in a following user message."""
    call_id = string_field(block, "tool_use_id", path)
    texts: list[str] = []
    images: list[dict] = []
    content = block.get("content")
    if content is not None:
        for i, part in enumerate(as_blocks(content, f"{path}.content")):
            if part["type"] == "image":
                images.append(_image_part(part, f"{path}.content.{i}"))
            elif part["type"] in TEXT_LIKE:
                texts.append(_text_of(part, f"{path}.content.{i}"))
            else:
                raise invalid_request(f"{path}.content.{i}.type: unsupported in a tool result: "
                                      f"{part['type']!r}")
    text = "\n\n".join(texts)
    if images:
        text += ("\n\n" if text else "") + f"[{len(images)} image(s) follow in the next message]"
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise field_error(f"{path}.is_error", "a boolean", is_error)
    if is_error:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_messages(content: Any, path: str) -> list[dict]:
    """One Anthropic user turn → tool messages first, then one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict] = []
    parts: list[dict] = []
    for i, block in enumerate(as_blocks(content, path)):
        kind, bpath = block["type"], f"{path}.{i}"
        if kind == "tool_result":
            message, images = _tool_result(block, bpath)
            tools.append(message)
            parts.extend(images)
        elif kind in TEXT_LIKE:
            parts.append({"type": "text", "text": _text_of(block, bpath)})
        elif kind == "image":
            parts.append(_image_part(block, bpath))
        else:
            raise invalid_request(f"{bpath}.type: unsupported content block type {kind!r}")
    if parts:
        tools.append({"role": "user", "content": _join_parts(parts)})
    return tools


def _assistant_message(content: Any, path: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict] = []
    for i, block in enumerate(as_blocks(content, path)):
        kind, bpath = block["type"], f"{path}.{i}"
        if kind == "text":
            texts.append(string_field(block, "text", bpath))
        elif kind == "thinking":
            reasoning.append(string_field(block, "thinking", bpath))
        elif kind == "redacted_thinking":
            continue  # opaque to any other model
        elif kind == "tool_use":
            call_id, name = string_field(block, "id", bpath), string_field(block, "name", bpath)
            args = block.get("input", {})
            if not isinstance(args, dict):
                raise field_error(f"{bpath}.input", "an object", args)
            try:
                arguments = dumps(args).decode()
            except ValueError as exc:
                raise invalid_request(f"{bpath}.input: nests too deeply") from exc
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        else:
            raise invalid_request(f"{bpath}.type: unsupported content block type {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _system_text(system: Any, where: str = "system") -> str | None:
    """System prompt as one string, without Claude Code's per-request billing header."""
    if system is None:
        return None
    texts = []
    for i, block in enumerate(as_blocks(system, where)):
        if block["type"] != "text":
            raise invalid_request(f"{where}.{i}.type: expected 'text', found {block['type']!r}")
        text = string_field(block, "text", f"{where}.{i}")
        if not is_billing_header(text):
            texts.append(text)
    return "\n\n".join(texts) if texts else None


def _messages(body: dict) -> tuple[list[dict], list[str]]:
    """OpenAI messages, and the text of system-role messages found among them.

    Claude Code (2.1.x) sends ``role: system`` entries inside ``messages``. They are folded
    into the one leading system message, in order: most chat templates accept a system
    message only first, and a stable leading prompt keeps llama.cpp's prefix cache useful.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise (invalid_request("messages: field required") if messages is None
               else field_error("messages", "a list", messages))
    out: list[dict] = []
    systems: list[str] = []
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise field_error(path, "an object", message)
        role = message.get("role")
        if "content" not in message:
            raise invalid_request(f"{path}.content: field required")
        if message["content"] in ([], "") and not (role == "assistant" and i == len(messages) - 1):
            # Anthropic's own 400 for it, word for word; dropping the turn would change the conversation
            raise invalid_request(f"{path}: all messages must have non-empty content except for the optional "
                                  "final assistant message")
        if role == "user":
            out.extend(_user_messages(message["content"], f"{path}.content"))
        elif role == "assistant":
            out.append(_assistant_message(message["content"], f"{path}.content"))
        elif role == "system":
            text = _system_text(message["content"], f"{path}.content")
            if text:
                systems.append(text)
        else:
            raise invalid_request(f"{path}.role: expected 'user', 'assistant' or 'system', found {role!r}")
    return out, systems


def translate_request(body: Any, *, upstream_model: str, count_only: bool = False) -> Translated:
    """Validate an Anthropic request body and build the OpenAI chat-completions body.

    ``count_only`` is for ``count_tokens``: ``max_tokens`` is then not required.
    """
    if not isinstance(body, dict):
        raise field_error("body", "a JSON object", body)
    requested = string_field(body, "model", "body")
    payload: dict[str, Any] = {"model": upstream_model}
    messages, inline_systems = _messages(body)
    system = "\n\n".join(t for t in [_system_text(body.get("system")), *inline_systems] if t) or None
    payload["messages"] = ([{"role": "system", "content": system}] if system else []) + messages
    tools = translate_tools(body)
    if tools:
        payload["tools"] = tools
    apply_tool_choice(body, payload, tools, count_only)
    apply_thinking(body, payload)
    apply_output_format(body, payload)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise field_error("stream", "a boolean", stream)
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_only:
        raise invalid_request("max_tokens: field required")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise field_error("max_tokens", "an integer", max_tokens)
        if max_tokens < 1:
            raise invalid_request("max_tokens: must be at least 1")
        if max_tokens > MAX_TOKENS_LIMIT:
            raise invalid_request(f"max_tokens: must be at most {MAX_TOKENS_LIMIT}, found {max_tokens}")
        payload["max_tokens"] = max_tokens
    for key, hi in (("temperature", 1.0), ("top_p", 1.0)):
        value = number_field(body, key, 0.0, hi)
        if value is not None:
            payload[key] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOKENS_LIMIT:
            raise field_error("top_k", "a non-negative integer", top_k)
        payload["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is None:
        stops = []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid_request("stop_sequences: expected a list of non-empty strings")
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return Translated(payload=payload, requested_model=requested, stream=stream,
                      stop_sequences=tuple(dict.fromkeys(stops)),
                      forced_tool=payload.get("tool_choice") == "required" and bool(payload.get("tools")))
