"""The downstream SSE connection: writes, keep-alive pings, client-gone detection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

from aiohttp import web

from provisioner.gateway.translate_stream import ping_frame

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "Connection": "keep-alive", "X-Accel-Buffering": "no"}


class SseChannel:
    """Writes SSE bytes and pings after ``interval`` seconds without a write."""

    def __init__(self, response: web.StreamResponse, interval: float) -> None:
        self.response = response
        self.interval = interval
        self.last_write = time.monotonic()
        self.client_gone = False

    @classmethod
    async def open(cls, request: web.Request, interval: float, headers: dict[str, str]) -> "SseChannel":
        """Send the 200 status and headers."""
        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        await response.prepare(request)
        return cls(response, interval)

    async def send(self, data: bytes) -> None:
        """Write bytes now (aiohttp hands them straight to the socket)."""
        self.last_write = time.monotonic()
        try:
            await self.response.write(data)
        except ConnectionError:
            self.client_gone = True
            raise

    @contextlib.asynccontextmanager
    async def keepalive(self) -> AsyncIterator[None]:
        """Ping while the body runs; if the client is gone, cancel the body (and so the upstream)."""
        task = asyncio.create_task(self._pinger(asyncio.current_task()))
        try:
            yield
        finally:
            task.cancel()

    async def _pinger(self, owner: asyncio.Task | None) -> None:
        ping = ping_frame()
        try:
            while True:
                wait = self.last_write + self.interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                await self.send(ping)
        except ConnectionError:
            if owner is not None:
                owner.cancel()
