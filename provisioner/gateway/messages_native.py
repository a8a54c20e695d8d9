"""``POST /v1/messages`` in native mode: forward to the upstream's own ``/v1/messages``.

llama-server's native endpoint has known gaps, fixed here:

- a named ``tool_choice`` is not enforced → such requests go through translate mode,
  where it is enforced by grammar;
- structured outputs (``output_config.format``, ``output_format``) are dropped (its
  Anthropic → OpenAI conversion copies a fixed set of keys, tools/server/server-chat.cpp:348-620)
  → such requests go through translate mode too;
- only ``thinking.type = "enabled"`` is honoured → ``adaptive`` becomes ``enabled``
  (budget: ``max_tokens - 1``), ``disabled`` is removed, and each sets the template's
  ``enable_thinking`` (without it, a model that thinks by default still thinks);
- the response names the upstream model → ``model`` is rewritten to the requested name;
- a thinking block may close without a ``signature_delta`` → one is added;
- a matched stop sequence comes with ``stop_reason: end_turn`` → ``stop_sequence``;
- fields it rejects and Claude Code's billing header are removed (:mod:`sanitize`).
"""

from __future__ import annotations

import contextlib
import hashlib
import time

from aiohttp import web

from provisioner.gateway import messages_translate
from provisioner.gateway.access_log import AccessRecord
from provisioner.gateway.jsonfast import dumps, loads
from provisioner.gateway.sanitize import sanitize_native_body
from provisioner.gateway.sse_channel import SseChannel
from provisioner.gateway.state import record_of, state_of
from provisioner.gateway.stream_serve import serve_stream
from provisioner.gateway.translate_request import Translated
from provisioner.gateway.translate_stream import frame, thinking_signature
from provisioner.gateway.upstream import UpstreamStream
from provisioner.gateway.upstream_errors import protocol_error

MESSAGES_PATH = "/v1/messages"


def native_body(body: dict, upstream_model: str) -> dict:
    """The body llama-server's native endpoint gets."""
    out = sanitize_native_body(body)
    out["model"] = upstream_model
    thinking = out.get("thinking")
    if isinstance(thinking, dict):
        # it reads only type "enabled" (a budget; tools/server/server-chat.cpp:600-606) and passes
        # chat_template_kwargs through (:593), which is how a template's thinking is switched
        if thinking.get("type") == "disabled":
            out.pop("thinking")
        elif thinking.get("type") == "adaptive":
            out["thinking"] = {"type": "enabled", "budget_tokens": max(1, int(out["max_tokens"]) - 1)}
        out["chat_template_kwargs"] = {"enable_thinking": thinking.get("type") != "disabled"}
    return out


def fix_stop_reason(holder: dict) -> None:
    """llama-server reports a matched stop sequence with ``stop_reason: end_turn``; Anthropic says ``stop_sequence``."""
    if holder.get("stop_sequence") and holder.get("stop_reason") in ("end_turn", None):
        holder["stop_reason"] = "stop_sequence"


class NativeRelay:
    """Fixes the frames of a native Anthropic stream on their way through.

    Text and tool deltas pass untouched (the hot path); ``message_start`` gets the
    requested model name, ``message_delta`` feeds the access log, and a thinking
    block that closes without a ``signature_delta`` gets one (clients require it).
    """

    def __init__(self, model: str, record: AccessRecord) -> None:
        self.model = model
        self.record = record
        self.rest = b""
        self.thinking_index: int | None = None
        self.signed = False
        self.arrived: float | None = None

    def feed(self, chunk: bytes, arrived: float | None = None) -> bytes:
        """Frames completed by ``chunk`` (which came at ``arrived``), fixed, ready to send."""
        self.arrived = arrived
        frames = (self.rest + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        self.rest = frames.pop()
        return b"".join(self._frame(f) for f in frames if f.strip())

    def _frame(self, raw: bytes) -> bytes:
        if raw.startswith(b"event: content_block_delta"):
            if self.record.first_token_at is None:
                self.record.mark_first_token(self.arrived)
            if self.thinking_index is not None and b'"signature_delta"' in raw:
                self.signed = True
            return raw + b"\n\n"
        data = b"".join(line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return b""  # comments (llama-server's ":" pings) and empty frames
        try:
            event = loads(data)
        except (ValueError, RecursionError) as exc:
            raise protocol_error("the model server sent an event that is not JSON") from exc
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return b""
        kind, prefix = event["type"], b""
        if kind == "message_start" and isinstance(event.get("message"), dict):
            event["message"]["model"] = self.model
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                fix_stop_reason(delta)
            self.record.stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            self.record.set_usage(event.get("usage") if isinstance(event.get("usage"), dict) else None)
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") == "thinking":
                self.thinking_index, self.signed = event.get("index"), False
                block.setdefault("signature", "")
        elif kind == "content_block_delta":  # sent without an "event:" line
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "signature_delta":
                self.signed = True
        elif kind == "content_block_stop" and self.thinking_index is not None \
                and event.get("index") == self.thinking_index:
            if not self.signed:
                digest = hashlib.sha256(f"{self.record.request_id}:{self.thinking_index}".encode())
                prefix = frame({"type": "content_block_delta", "index": self.thinking_index,
                                "delta": {"type": "signature_delta", "signature": thinking_signature(digest)}})
            self.thinking_index = None
        return prefix + frame(event)


async def handle(request: web.Request, body: dict, translated: Translated, upstream_model: str
                 ) -> web.StreamResponse:
    """Serve a validated request through the upstream's native endpoint."""
    choice = body.get("tool_choice")
    if (isinstance(choice, dict) and choice.get("type") == "tool") or "response_format" in translated.payload:
        return await messages_translate.handle(request, translated)
    state = state_of(request)
    model = translated.requested_model
    payload = native_body(body, upstream_model)
    record_of(request).upstream_sent_at = time.monotonic()
    if not translated.stream:
        message = await state.upstream.request_json("POST", MESSAGES_PATH, payload)
        record_of(request).mark_first_token(time.monotonic())
        if isinstance(message, dict):
            message["model"] = model
            fix_stop_reason(message)
            record = record_of(request)
            record.stop_reason = message.get("stop_reason")
            record.set_usage(message.get("usage") if isinstance(message.get("usage"), dict) else None)
        record_of(request).status = 200
        return web.Response(body=dumps(message), content_type="application/json",
                            headers={"request-id": record_of(request).request_id})

    async def pump(stream: UpstreamStream, channel: SseChannel) -> None:
        relay = NativeRelay(model, record_of(request))
        async with contextlib.aclosing(stream.raw_chunks()) as chunks:
            async for chunk in chunks:
                out = relay.feed(chunk, time.monotonic())
                if out:
                    await channel.send(out)

    return await serve_stream(request, opener=state.upstream.open_stream(MESSAGES_PATH, payload),
                              first_frame=None, pump=pump)
