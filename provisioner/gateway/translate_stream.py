"""OpenAI chat-completion chunks → Anthropic Messages SSE events.

One :class:`StreamTranslator` per response. It upholds the Anthropic contract:
``message_start``, then blocks with indexes 0..n in start order and only one
open at a time (``content_block_start`` → deltas → ``content_block_stop``), then
``message_delta`` (never-null ``stop_reason``, cumulative usage) and
``message_stop``. Every frame's ``event:`` equals its ``data.type``.

Tool calls: the call being streamed is forwarded live, fragment by fragment,
as ``input_json_delta``. A delta for another call (OpenAI interleaves them by
``index``) is buffered; the gateway switches to it as soon as the live call's
arguments form complete JSON, otherwise at the end of the turn. Text arriving
after a tool call started is emitted after the tool blocks.
"""

from __future__ import annotations

import hashlib
from typing import Any

from provisioner.gateway.api_errors import forced_tool_ignored
from provisioner.gateway.jsonfast import dumps, dumps_str, loads
from provisioner.gateway.stop_matcher import StopMatcher
from provisioner.gateway.upstream_errors import error_from_upstream, protocol_error
from provisioner.gateway.ids import new_id

FINISH_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "function_call": "tool_use", "content_filter": "refusal"}

_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def frame(event: dict) -> bytes:
    """One SSE frame whose ``event:`` line equals ``data.type``."""
    return b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"


def ping_frame() -> bytes:
    """The keep-alive event."""
    return _PING


def _delta(index: int, kind: str, key: str, value: str) -> bytes:
    return b'%s%d,"delta":{"type":"%s","%s":%s}}\n\n' % (
        _DELTA_HEAD, index, kind.encode(), key.encode(), dumps_str(value))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage → Anthropic usage (input_tokens excludes cache reads, as Anthropic's does)."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = _int(usage.get("prompt_tokens"))
    return {"input_tokens": max(prompt - cached, 0), "output_tokens": _int(usage.get("completion_tokens")),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": min(cached, prompt)}


def thinking_signature(digest: "hashlib._Hash") -> str:
    """A stable signature for a thinking block (clients require one; nothing verifies it)."""
    return "local." + digest.hexdigest()[:32]


class _Tool:
    __slots__ = ("openai_index", "id", "name", "args", "block", "closed", "_checked")

    def __init__(self, openai_index: int) -> None:
        self.openai_index = openai_index
        self.id = ""
        self.name = ""
        self.args: list[str] = []
        self.block: int | None = None  # Anthropic index once started
        self.closed = False
        self._checked = -1  # len(args) when last found incomplete: interleaving would re-parse each time

    def args_parse(self) -> bool:
        """The arguments are complete JSON (an empty string counts: no arguments)."""
        text = "".join(self.args)
        if not text.strip():
            return True
        try:
            loads(text)
        except (ValueError, RecursionError):
            return False
        return True

    def args_complete(self) -> bool:
        if self._checked == len(self.args):
            return False
        self._checked = len(self.args)
        text = "".join(self.args)
        try:
            loads(text)
        except ValueError:
            return False
        return True


class StreamTranslator:
    """Feed OpenAI ``data:`` payloads; get Anthropic SSE bytes back."""

    def __init__(self, *, model: str, stop_sequences: tuple[str, ...] = (), message_id: str | None = None,
                 forced_tool: bool = False) -> None:
        self.model = model
        #: tool_choice any/tool: text before a tool call means the template ignored the choice
        self.forced_tool = forced_tool
        self.message_id = message_id or new_id("msg_")
        self.stop = StopMatcher(stop_sequences) if stop_sequences else None
        self.next_index = 0
        self.open_kind: str | None = None
        self.open_tool: _Tool | None = None
        self.tools: dict[int, _Tool] = {}
        self.tool_started = False
        self.deferred_text: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.done = False  # [DONE] seen
        self.stopped = False  # a stop sequence matched: stop reading
        self.first_token = False
        self._text_head: bytes | None = None  # prefix of a text delta for the open text block
        self._signature = hashlib.sha256()
        self.stop_reason: str | None = None
        self.final_usage: dict[str, int] | None = None

    def start(self) -> bytes:
        """The ``message_start`` frame (sent before the upstream answers: usage comes later)."""
        return frame({"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}})

    # --- input -----------------------------------------------------------------------------
    def feed(self, data: bytes, out: list[bytes]) -> None:
        """Process one upstream ``data:`` payload, appending frames to ``out``."""
        if data == b"[DONE]":
            self.done = True
            return
        if self.stopped:
            return  # a stop sequence ended the answer; the rest of this batch is discarded
        try:
            chunk = loads(data)
        except (ValueError, RecursionError) as exc:
            raise protocol_error("the upstream sent a chunk that is not JSON") from exc
        if not isinstance(chunk, dict):
            raise protocol_error("the upstream sent a chunk that is not a JSON object")
        if "error" in chunk:
            raise error_from_upstream(500, chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content")
            if reasoning and isinstance(reasoning, str):
                self._thinking(reasoning, out)
            content = delta.get("content")
            if content and content.__class__ is str:
                head = self._text_head
                if head is not None:  # hot path: more text for the open text block (first_token is set)
                    out.append(head + dumps_str(content) + b"}}\n\n")
                else:
                    self._text(content, out)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool_delta(call, out)
        reason = choice.get("finish_reason")
        if reason and isinstance(reason, str):
            self.finish_reason = reason

    # --- blocks ----------------------------------------------------------------------------
    def _close(self, out: list[bytes]) -> None:
        kind = self.open_kind
        if kind is None:
            return
        if kind == "text" and self.stop is not None:
            rest = self.stop.flush()
            if rest:
                out.append(_delta(self.next_index - 1, "text_delta", "text", rest))
        elif kind == "thinking":
            out.append(_delta(self.next_index - 1, "signature_delta", "signature",
                              thinking_signature(self._signature)))
            self._signature = hashlib.sha256()
        elif self.open_tool is not None:
            self.open_tool.closed = True
            self.open_tool = None
        out.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
                   % (self.next_index - 1))
        self.open_kind = None
        self._text_head = None

    def _open(self, block: dict, out: list[bytes]) -> int:
        self._close(out)
        index = self.next_index
        self.next_index += 1
        self.open_kind = "tool" if block["type"] == "tool_use" else block["type"]
        out.append(frame({"type": "content_block_start", "index": index, "content_block": block}))
        if self.open_kind == "text" and self.stop is None:
            self._text_head = b'%s%d,"delta":{"type":"text_delta","text":' % (_DELTA_HEAD, index)
        return index

    def _text(self, text: str, out: list[bytes]) -> None:
        if self.stop is not None:
            text = self.stop.feed(text)
            if self.stop.matched is not None:
                self.stopped = True
        if text:
            self._emit_text(text, out)

    def _emit_text(self, text: str, out: list[bytes]) -> None:
        self.first_token = True
        if self.forced_tool and not self.tool_started:
            if not text.strip():
                return  # a template's newline before its call: no text block for it
            raise forced_tool_ignored()
        if self.tool_started:
            self.deferred_text.append(text)
            return
        if self.open_kind != "text":
            self._open({"type": "text", "text": ""}, out)
        out.append(_delta(self.next_index - 1, "text_delta", "text", text))

    def _thinking(self, text: str, out: list[bytes]) -> None:
        self.first_token = True
        if self.tool_started:
            return  # reasoning after a tool call has no place in an Anthropic turn
        if self.open_kind != "thinking":
            self._open({"type": "thinking", "thinking": "", "signature": ""}, out)
        self._signature.update(text.encode())
        out.append(_delta(self.next_index - 1, "thinking_delta", "thinking", text))

    def _start_tool(self, tool: _Tool, out: list[bytes]) -> None:
        tool.id = tool.id or new_id("toolu_")
        block = self._open({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}, out)
        tool.block = block
        self.open_tool = tool
        self.tool_started = True
        if tool.args:
            out.append(_delta(block, "input_json_delta", "partial_json", "".join(tool.args)))

    def _tool_delta(self, call: dict, out: list[bytes]) -> None:
        self.first_token = True
        index = call.get("index", 0)
        index = index if isinstance(index, int) else 0
        tool = self.tools.get(index)
        if tool is None:
            tool = self.tools[index] = _Tool(index)
        if not tool.id and isinstance(call.get("id"), str):
            tool.id = call["id"]
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if not tool.name and isinstance(function.get("name"), str):
            tool.name = function["name"]
        args = function.get("arguments")
        args = args if isinstance(args, str) else ""
        if tool.closed:
            return  # a finished call's JSON can only gain whitespace
        if tool is self.open_tool and tool.block is not None:
            if args:
                tool.args.append(args)
                out.append(_delta(tool.block, "input_json_delta", "partial_json", args))
            return
        if args:
            tool.args.append(args)
        if tool.name and (self.open_tool is None or self.open_tool.args_complete()):
            self._start_tool(tool, out)

    # --- end -------------------------------------------------------------------------------
    def finish(self, out: list[bytes]) -> None:
        """Close everything and append ``message_delta`` + ``message_stop``."""
        if self.stop is not None and self.open_kind != "text":
            rest = self.stop.flush()
            if rest:
                self._emit_text(rest, out)
        for tool in sorted(self.tools.values(), key=lambda t: t.openai_index):
            if tool.block is None and tool.name:
                self._start_tool(tool, out)
        text = "".join(self.deferred_text)
        if text.strip():
            self._open({"type": "text", "text": ""}, out)
            out.append(_delta(self.next_index - 1, "text_delta", "text", text))
        self._close(out)
        if self.finish_reason == "length":
            # cut off by max_tokens, a tool call too (llama-server says "length" for any stop that was
            # neither a stop word nor EOS: tools/server/server-task.cpp:415-424): the client must not
            # run a call whose input was cut short, and Anthropic says max_tokens here
            reason = "max_tokens"
        elif self.tool_started:
            for tool in self.tools.values():
                if tool.block is not None and not tool.args_parse():
                    raise protocol_error(f"the model server ended a call of tool {tool.name!r} with "
                                         "arguments that are not valid JSON")
            reason = "tool_use"
        elif self.stop is not None and self.stop.matched is not None:
            reason = "stop_sequence"
        else:
            reason = FINISH_REASONS.get(self.finish_reason or "stop", "end_turn")
            if reason == "tool_use":  # the backend said tool_calls but sent none
                reason = "end_turn"
        self.stop_reason = reason
        self.final_usage = anthropic_usage(self.usage)
        stop_sequence = self.stop.matched if reason == "stop_sequence" and self.stop else None
        out.append(frame({"type": "message_delta",
                          "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                          "usage": self.final_usage}))
        out.append(_STOP)
