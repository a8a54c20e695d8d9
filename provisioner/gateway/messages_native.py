"""``POST /v1/messages`` in native mode: forward to the upstream's own ``/v1/messages``.

llama-server's native endpoint has known gaps, fixed here:

- a named ``tool_choice`` is not enforced → such requests go through translate mode,
  where it is enforced by grammar;
- only ``thinking.type = "enabled"`` is honoured → ``adaptive`` becomes ``enabled``
  (budget: ``max_tokens - 1``), ``disabled`` is removed;
- the response names the upstream model → ``model`` is rewritten to the requested name;
- fields it rejects and Claude Code's billing header are removed (:mod:`sanitize`).
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from provisioner.gateway import messages_translate
from provisioner.gateway.jsonfast import dumps, loads
from provisioner.gateway.sanitize import sanitize_native_body
from provisioner.gateway.sse_channel import SseChannel
from provisioner.gateway.state import record_of, state_of
from provisioner.gateway.stream_serve import serve_stream
from provisioner.gateway.translate_request import Translated
from provisioner.gateway.translate_stream import frame
from provisioner.gateway.upstream import UpstreamStream
from provisioner.gateway.upstream_errors import protocol_error

MESSAGES_PATH = "/v1/messages"


def native_body(body: dict, upstream_model: str) -> dict:
    """The body llama-server's native endpoint gets."""
    out = sanitize_native_body(body)
    out["model"] = upstream_model
    thinking = out.get("thinking")
    if isinstance(thinking, dict):
        if thinking.get("type") == "disabled":
            out.pop("thinking")
        elif thinking.get("type") == "adaptive":
            out["thinking"] = {"type": "enabled", "budget_tokens": max(1, int(out["max_tokens"]) - 1)}
    return out


def _rewrite(raw: bytes, model: str, request: web.Request) -> bytes:
    """Fix one upstream SSE frame: our model name, an ``event:`` line that matches, usage for the log."""
    if raw.startswith(b"event:") and b'"message_start"' not in raw and b'"message_delta"' not in raw:
        return raw + b"\n\n"
    data = b"".join(line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:"))
    if not data:
        return b""
    try:
        event = loads(data)
    except (ValueError, RecursionError) as exc:
        raise protocol_error("the model server sent an event that is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return b""
    if event["type"] == "message_start" and isinstance(event.get("message"), dict):
        event["message"]["model"] = model
    elif event["type"] == "message_delta":
        record = record_of(request)
        record.stop_reason = (event.get("delta") or {}).get("stop_reason")
        record.set_usage(event.get("usage"))
    elif event["type"] in ("content_block_delta", "content_block_start"):
        record_of(request).mark_first_token()
    return frame(event)


async def handle(request: web.Request, body: dict, translated: Translated, upstream_model: str
                 ) -> web.StreamResponse:
    """Serve a validated request through the upstream's native endpoint."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return await messages_translate.handle(request, translated)
    state = state_of(request)
    model = translated.requested_model
    payload = native_body(body, upstream_model)
    if not translated.stream:
        message = await state.upstream.request_json("POST", MESSAGES_PATH, payload)
        if isinstance(message, dict):
            message["model"] = model
            record = record_of(request)
            record.stop_reason = message.get("stop_reason")
            record.set_usage(message.get("usage") if isinstance(message.get("usage"), dict) else None)
        record_of(request).status = 200
        return web.Response(body=dumps(message), content_type="application/json",
                            headers={"request-id": record_of(request).request_id})

    async def pump(stream: UpstreamStream, channel: SseChannel) -> None:
        rest = b""
        async with contextlib.aclosing(stream.raw_chunks()) as chunks:
            async for chunk in chunks:
                frames = (rest + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
                rest = frames.pop()
                out = b"".join(_rewrite(f, model, request) for f in frames if f.strip())
                if out:
                    await channel.send(out)

    return await serve_stream(request, opener=state.upstream.open_stream(MESSAGES_PATH, payload),
                              first_frame=None, pump=pump)
