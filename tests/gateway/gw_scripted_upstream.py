"""A real OpenAI-compatible HTTP server on 127.0.0.1 that replays scripted responses.

Each request to ``/v1/chat/completions`` (or ``/v1/messages`` for native mode) takes
the next script from ``scripts``; it records what it got and whether the client
went away before the script finished. Steps:

- ``("status", code, body[, headers])``  answer an error status at once
- ``("json", obj)``           a non-streaming JSON answer
- ``("chunk", obj)``          one ``data: <json>`` SSE frame (a dict) — or raw bytes
- ``("raw", bytes)``          bytes as they are
- ``("sleep", seconds)``
- ``("done",)``               ``data: [DONE]``
- ``("abort",)``              drop the connection mid-body
- ``("delay_headers", s)``    (first step only) wait before sending any status
It also serves ``/apply-template``, ``/tokenize`` (one token per whitespace word),
``/health`` (status settable), ``GET /v1/models`` and ``GET /files/<name>`` (bytes put in ``files``, for
documents given by URL).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from typing import Any

from aiohttp import web

Step = tuple


def chunk(*, content: str | None = None, reasoning: str | None = None, tool_calls: list | None = None,
          finish: str | None = None, usage: dict | None = None, role: str | None = None) -> Step:
    """One OpenAI ``chat.completion.chunk`` step."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "local",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return ("chunk", body)


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> Step:
    """The usage-only chunk llama-server sends after ``finish_reason`` (empty choices)."""
    return ("chunk", {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                      "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                                "prompt_tokens_details": {"cached_tokens": cached}}})


def tool_delta(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    """One entry of ``delta.tool_calls``."""
    entry: dict[str, Any] = {"index": index}
    function: dict[str, Any] = {}
    if id:
        entry["id"] = id
        entry["type"] = "function"
    if name:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    entry["function"] = function
    return entry


def text_script(texts: list[str], *, finish: str = "stop", prompt: int = 10, cached: int = 0) -> list[Step]:
    """A plain streamed answer: role chunk, text chunks, finish, usage, [DONE]."""
    return ([chunk(role="assistant", content="")] + [chunk(content=t) for t in texts]
            + [chunk(finish=finish), usage_chunk(prompt, len(texts), cached), ("done",)])


class ScriptedUpstream:
    """The server; thread-safe views for tests running in another thread."""

    def __init__(self) -> None:
        self.scripts: deque[list[Step]] = deque()
        self.requests: deque[tuple[str, dict]] = deque(maxlen=1000)  # bounded: load tests
        self.disconnects = 0
        self.completed = 0
        self.health_status = 200
        self.files: dict[str, bytes] = {}
        self.model_ids = ["smollm2"]  # what GET /v1/models answers, as llama-server: its --alias
        self.file_gets = 0
        self.disconnected = threading.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    # --- server lifecycle (call in the server loop) ----------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._scripted)
        app.router.add_post("/v1/messages", self._scripted)
        app.router.add_post("/apply-template", self._apply_template)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/health", self._health)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self, port: int = 0) -> int:
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- handlers ------------------------------------------------------------------------
    async def _scripted(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.scripts:
            script = self.scripts.popleft()
        elif body.get("stream"):
            script = text_script(["Hello", " world"])
        else:
            script = [("json", {"id": "chatcmpl-0", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello world"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})]
        if script[0][0] == "delay_headers":  # like llama-server holding headers until prefill ends
            await asyncio.sleep(script[0][1])
            script = script[1:]
        if script[0][0] == "status":
            return web.json_response(script[0][2], status=script[0][1],
                                     headers=script[0][3] if len(script[0]) > 3 else None)
        if script[0][0] == "json":
            return web.json_response(script[0][1])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for step in script:
                kind = step[0]
                if kind == "sleep":
                    await asyncio.sleep(step[1])
                elif kind == "chunk":
                    data = step[1] if isinstance(step[1], bytes) else json.dumps(step[1]).encode()
                    await response.write(b"data: " + data + b"\n\n")
                elif kind == "raw":
                    await response.write(step[1])
                elif kind == "done":
                    await response.write(b"data: [DONE]\n\n")
                elif kind == "abort":
                    request.transport.close()
                    return response
            self.completed += 1
        except (asyncio.CancelledError, ConnectionError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        return response

    async def _apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        parts = [f"<|{m['role']}|> {m['content'] if isinstance(m['content'], str) else json.dumps(m['content'])}"
                 for m in body["messages"]]
        if body.get("tools"):
            parts.insert(0, "<|tools|> " + json.dumps(body["tools"]))
        return web.json_response({"prompt": "\n".join(parts) + "\n<|assistant|>"})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"tokens": list(range(len(body["content"].split())))})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.model_ids]})

    async def _file(self, request: web.Request) -> web.Response:
        self.file_gets += 1
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="no such file")
        return web.Response(body=data, content_type="application/pdf")

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_status == 200:
            return web.json_response({"status": "ok"})
        return web.json_response({"error": {"code": 503, "message": "Loading model",
                                            "type": "unavailable_error"}}, status=self.health_status)
