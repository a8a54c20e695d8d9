"""A real HTTP server that answers like the Hugging Face hub's ``resolve`` URLs.

HEAD/GET on ``/<repo>/resolve/<rev>/<file>`` answer 302 with ``x-linked-size`` and
``x-linked-etag`` (the LFS sha256) and a ``location`` on a "CDN" path that serves
the bytes with Range support (aiohttp's FileResponse). A token can be required.
Used to exercise the real fetch script (curl, resume, verification) offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from aiohttp import web


class HubServer:
    def __init__(self, files: dict[str, Path], *, token: str | None = None, etag: str | None = None,
                 cut_after: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.files = files  # "repo/file" -> local path
        self.token = token
        self.etag_override = etag
        #: close the first CDN response after this many bytes (to test resume)
        self.cut_after = cut_after
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _sha(self, path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.match_info['org']}/{request.match_info['name']}/{request.match_info['file']}"
        auth = request.headers.get("Authorization")
        self.requests.append((request.method, request.path, auth, request.headers.get("Range")))
        if self.token and auth != f"Bearer {self.token}":
            return web.Response(status=401, text="unauthorized")
        path = self.files.get(key)
        if path is None:
            return web.Response(status=404, text="not found")
        etag = self.etag_override or self._sha(path)
        return web.Response(status=302, headers={
            "x-linked-size": str(path.stat().st_size), "x-linked-etag": f'"{etag}"',
            "x-repo-commit": "0" * 40, "location": f"/cdn/{key}"})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.requests.append((request.method, request.path, request.headers.get("Authorization"),
                              request.headers.get("Range")))
        path = self.files[key]
        if self.cut_after is not None and request.method == "GET" and "Range" not in request.headers:
            cut, self.cut_after = self.cut_after, None
            resp = web.StreamResponse(headers={"Content-Length": str(path.stat().st_size)})
            await resp.prepare(request)
            await resp.write(path.read_bytes()[:cut])
            request.transport.close()  # the connection drops mid-body
            return resp
        return web.FileResponse(path)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{file:.+}", self._resolve)
        app.router.add_get("/cdn/{key:.+}", self._cdn)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
