"""The verify script, run for real against HTTP servers that take a while to become healthy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from aiohttp import web

from provisioner.operations.scripts import render

from .test_model_fetch import local_run


class Slow:
    """/health answers 503 until ``ready_after`` seconds, then 200; /v1/messages checks the key."""

    def __init__(self, ready_after: float, key: str) -> None:
        self.t0 = time.monotonic()
        self.ready_after, self.key = ready_after, key
        self.bodies: list[dict] = []
        self.props_auth: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_get("/health", self.health)
            app.router.add_get("/props", self.props)
            app.router.add_post("/v1/messages", self.messages)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    async def health(self, request: web.Request) -> web.Response:
        ok = time.monotonic() - self.t0 >= self.ready_after
        return web.json_response({"status": "ok" if ok else "loading"}, status=200 if ok else 503)

    #: what /props says about the chat template (llama-server b11312's chat_template_caps), None = no /props
    caps: dict | None = {"supports_tool_calls": True, "supports_tools": True}

    async def props(self, request: web.Request) -> web.Response:
        self.props_auth.append(request.headers.get("Authorization"))
        if self.caps is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"default_generation_settings": {"n_ctx": 2048}, "chat_template_caps": self.caps})

    async def messages(self, request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") != self.key:
            return web.json_response({"type": "error"}, status=401)
        self.bodies.append(await request.json())
        return web.json_response({"type": "message", "content": [{"type": "text", "text": "OK"}],
                                  "usage": {"output_tokens": 1}})

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def script(tmp: Path, llama: str, gw: str, timeout: int) -> str:
    key = tmp / "gateway.key"
    key.write_text("the-gateway-key\n")
    server_key = tmp / "llama-server.key"
    server_key.write_text("the-server-key\n")
    (tmp / "flag").touch()
    return render("scripts/verify.sh.j2", llama_unit="llama-server", gateway_unit="provision-gateway",
                  llama_url=llama, gateway_url=gw, gateway=True, timeout=timeout, key_file=str(key),
                  server_key_file=str(server_key), model_ids=["smollm2"], messages_url=gw,
                  verify_flag=str(tmp / "flag"))


def test_waits_while_loading_then_generates_one_token(tmp_path: Path) -> None:
    llama, gw = Slow(3.0, "the-gateway-key"), Slow(0, "the-gateway-key")
    lines: list[str] = []
    try:
        result = local_run(script(tmp_path, llama.url, gw.url, 30), on_line=lines.append)
    finally:
        llama.close(), gw.close()
    assert result.exit_code == 0, result.stderr
    waits = [ln for ln in lines if ln.startswith("progress llama-server")]
    assert len(waits) >= 1 and lines[-1].startswith("done ")
    assert gw.bodies == [{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "Say OK."}]}]
    assert not (tmp_path / "flag").exists()


def test_times_out_with_a_clear_error(tmp_path: Path) -> None:
    llama, gw = Slow(3600, "k"), Slow(0, "k")
    try:
        result = local_run(script(tmp_path, llama.url, gw.url, 3))
    finally:
        llama.close(), gw.close()
    assert result.exit_code == 11
    assert "llama-server did not become healthy within 3 s (last HTTP status 503)" in result.stderr
    assert (tmp_path / "flag").exists()  # the next `up` verifies again


def test_wrong_key_fails_the_generation(tmp_path: Path) -> None:
    llama, gw = Slow(0, "x"), Slow(0, "another-key")
    try:
        result = local_run(script(tmp_path, llama.url, gw.url, 10))
    finally:
        llama.close(), gw.close()
    assert result.exit_code == 12 and "POST /v1/messages answered HTTP 401" in result.stderr
    assert json.loads(json.dumps(gw.bodies)) == []


def test_says_whether_the_chat_template_supports_tools(tmp_path: Path) -> None:
    """Issue 20 point 11: a template without tool support turns a forced tool_choice into text; verify reads
    /props (with the server key from a header file) and the step warns."""
    found = {}
    for caps, want in (({"supports_tools": True}, "true"), ({"supports_tools": False}, "false"), (None, "unknown")):
        llama, gw = Slow(0, "the-gateway-key"), Slow(0, "the-gateway-key")
        llama.caps = caps
        lines: list[str] = []
        try:
            result = local_run(script(tmp_path, llama.url, gw.url, 30), on_line=lines.append)
        finally:
            llama.close(), gw.close()
        assert result.exit_code == 0, result.stderr
        found[want] = [ln for ln in lines if ln.startswith("tools ")]
        assert llama.props_auth == ["Bearer the-server-key"]
        assert "the-server-key" not in script(tmp_path, llama.url, gw.url, 30)  # read from its file there
    assert found == {"true": ["tools true"], "false": ["tools false"], "unknown": ["tools unknown"]}
