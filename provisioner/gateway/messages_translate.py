"""``POST /v1/messages`` in translate mode: Anthropic in, OpenAI chat completions upstream."""

from __future__ import annotations

import contextlib
import time

from aiohttp import web

from provisioner.gateway.api_errors import ApiError, forced_tool_ignored
from provisioner.gateway.jsonfast import dumps
from provisioner.gateway.sse_channel import SseChannel
from provisioner.gateway.state import record_of, state_of
from provisioner.gateway.stream_serve import serve_stream
from provisioner.gateway.translate_request import Translated
from provisioner.gateway.translate_response import from_openai, message_from_events
from provisioner.gateway.translate_stream import StreamTranslator
from provisioner.gateway.upstream import UpstreamStream
from provisioner.gateway.upstream_errors import protocol_error

CHAT_PATH = "/v1/chat/completions"


async def _pump(translator: StreamTranslator, stream: UpstreamStream, channel: SseChannel | None,
                request: web.Request) -> bytes:
    """Translate the upstream stream; write to ``channel`` or, without one, return the bytes."""
    record = record_of(request)
    collected: list[bytes] = []
    async with contextlib.aclosing(stream.data_batches()) as batches:
        async for batch in batches:
            arrived = time.monotonic()
            out: list[bytes] = []
            try:
                for data in batch:
                    translator.feed(data, out)
            except ApiError:
                if out and channel is not None:
                    await channel.send(b"".join(out))  # what came before the error still counts
                raise
            if out:
                if translator.first_token:
                    record.mark_first_token(arrived)
                if channel is not None:
                    await channel.send(b"".join(out))
                else:
                    collected.extend(out)
            if translator.stopped:
                break  # a stop sequence matched: closing the stream stops the upstream
    if not (translator.done or translator.stopped or translator.finish_reason):
        raise protocol_error("the model server ended the stream early")
    out = []
    translator.finish(out)
    record.stop_reason = translator.stop_reason
    record.set_usage(translator.final_usage)
    if channel is not None:
        await channel.send(b"".join(out))
        return b""
    return b"".join(collected + out)


async def handle(request: web.Request, translated: Translated) -> web.StreamResponse:
    """Serve a validated, translated request."""
    state = state_of(request)
    record = record_of(request)
    model = translated.requested_model
    if translated.stream:
        translator = StreamTranslator(model=model, stop_sequences=translated.stop_sequences,
                                      forced_tool=translated.forced_tool)

        async def pump(stream: UpstreamStream, channel: SseChannel) -> None:
            await _pump(translator, stream, channel, request)

        record.upstream_sent_at = time.monotonic()
        return await serve_stream(request, opener=state.upstream.open_stream(CHAT_PATH, translated.payload),
                                  first_frame=translator.start(), pump=pump)
    if translated.stop_sequences:
        # Served from an upstream stream so the gateway can match (and report) stop sequences.
        payload = {**translated.payload, "stream": True, "stream_options": {"include_usage": True}}
        translator = StreamTranslator(model=model, stop_sequences=translated.stop_sequences,
                                      forced_tool=translated.forced_tool)
        record.upstream_sent_at = time.monotonic()
        async with await state.upstream.open_stream(CHAT_PATH, payload) as stream:
            events = translator.start() + await _pump(translator, stream, None, request)
        message = message_from_events(events)
    else:
        record.upstream_sent_at = time.monotonic()
        response = await state.upstream.request_json("POST", CHAT_PATH, translated.payload)
        answered = time.monotonic()
        message = from_openai(response, model=model)
        if translated.forced_tool and not any(b["type"] == "tool_use" for b in message["content"]):
            raise forced_tool_ignored()
        record.mark_first_token(answered)
        record.stop_reason = message["stop_reason"]
        record.set_usage(message["usage"])
    record.status = 200
    return web.Response(body=dumps(message), content_type="application/json",
                        headers={"request-id": record.request_id})
