"""Serve one streamed response: open the upstream, commit to 200, relay, ping, clean up.

The upstream's status decides the HTTP status only if it arrives within
``header_wait_s``: a busy llama-server answers 503 at once, and that must reach
Claude Code as HTTP 529 so it retries. llama-server may also hold its headers
until prefill ends (minutes), so after that short wait the gateway commits to
200, flushes ``message_start`` (when it has one) and pings until data flows.
Failures after the commit become an ``event: error`` frame.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiohttp import web

from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.sse_channel import SseChannel
from provisioner.gateway.state import record_of, state_of
from provisioner.gateway.upstream import UpstreamStream

Pump = Callable[[UpstreamStream, SseChannel], Awaitable[None]]


async def serve_stream(request: web.Request, *, opener: Awaitable[UpstreamStream],
                       first_frame: bytes | None, pump: Pump) -> web.StreamResponse:
    """Run ``pump`` over the upstream stream that ``opener`` opens, with all the guarantees above."""
    settings, metrics = state_of(request).settings, state_of(request).metrics
    record = record_of(request)
    task = asyncio.ensure_future(opener)
    channel: SseChannel | None = None
    try:
        done, _ = await asyncio.wait((task,), timeout=settings.header_wait_s)
        if done:
            task.result()  # an upstream error now is still an HTTP error status
        channel = await SseChannel.open(request, settings.ping_interval_s,
                                        {"request-id": record.request_id})
        metrics.open_streams += 1
        record.status = 200
        async with channel.keepalive():
            if first_frame is not None:
                await channel.send(first_frame)
            stream = await task
            async with stream:
                await pump(stream, channel)
    except ApiError as exc:
        if channel is None:
            raise
        record.error = exc.error_type
        if not channel.client_gone:
            try:
                await channel.send(exc.sse_frame())
            except ConnectionError:
                pass
    except ConnectionError:
        record.error = "client_disconnected"
    except asyncio.CancelledError:
        record.error = "client_disconnected"
        if channel is None or not channel.client_gone:
            raise  # cancelled from outside (server shutdown, aiohttp on disconnect)
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # our own pinger found the client gone: finish normally
    finally:
        if channel is not None:
            metrics.open_streams -= 1
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            task.result().close()
    return channel.response if channel is not None else web.Response(status=499)
