"""Run the scripted upstream and the real gateway in a background event loop.

Tests then talk to the gateway over real HTTP from the test thread, with the
official ``anthropic`` SDK or plain sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from typing import Any, Coroutine

import anthropic
from aiohttp import web

from gw_scripted_upstream import ScriptedUpstream
from provisioner.gateway.app import build_app
from provisioner.gateway.config import GatewaySettings

API_KEY = "test-gateway-key-0123456789"


class LoopThread:
    """An asyncio loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        if os.environ.get("GATEWAY_TEST_LOOP") == "uvloop":  # run the suite on the production loop too
            import uvloop
            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Harness:
    """Scripted upstream + gateway, both on 127.0.0.1."""

    def __init__(self, tmp_path, **overrides: Any) -> None:
        key_file = tmp_path / "gateway.key"
        key_file.write_text(API_KEY + "\n")
        self.loop = LoopThread()
        self.upstream = ScriptedUpstream()
        # what the upstream's /v1/models answers, set before the gateway starts (it asks at start-up)
        self.upstream.model_ids = list(overrides.pop("upstream_models", self.upstream.model_ids))
        self.loop.call(self.upstream.start())
        values = {"upstream_url": self.upstream.url, "api_key_file": str(key_file),
                  "local_model_id": "smollm2", "ping_interval_s": 5.0, **overrides}
        self.settings = dataclasses.replace(GatewaySettings(), **values)
        self.runner: web.AppRunner | None = None
        self.port = self.loop.call(self._start_gateway())

    async def _start_gateway(self) -> int:
        self.runner = web.AppRunner(build_app(self.settings), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=API_KEY, max_retries=0, **kw)

    def script(self, *steps_lists: list) -> None:
        for steps in steps_lists:
            self.upstream.scripts.append(steps)

    def last_request(self, path: str = "/v1/chat/completions") -> dict:
        return [body for p, body in self.upstream.requests if p == path][-1]

    def close(self) -> None:
        if self.runner is not None:
            self.loop.call(self.runner.cleanup())
        self.loop.call(self.upstream.stop())
        self.loop.close()
