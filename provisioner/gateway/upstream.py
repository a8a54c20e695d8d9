"""The upstream model server (llama-server) behind one small interface.

One :class:`aiohttp.ClientSession` with a connection pool serves every request.
Streamed bodies are :class:`UpstreamStream` objects used as ``async with``: on
exit the body is released to the pool if it was read to the end, and the
connection is closed otherwise — which is how llama-server learns that a client
went away and stops generating.

Every failure leaves this module as an :class:`~provisioner.gateway.api_errors.ApiError`
(see :mod:`provisioner.gateway.upstream_errors`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncGenerator

import aiohttp

from provisioner.gateway.api_errors import ApiError, invalid_request
from provisioner.gateway.config import GatewaySettings
from provisioner.gateway.jsonfast import dumps, loads
from provisioner.gateway.metrics import Metrics
from provisioner.gateway.upstream_errors import error_from_exception, error_from_upstream, protocol_error

_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class UpstreamStream:
    """An open streamed response; use as ``async with`` so the body is always closed."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.closed = False

    async def __aenter__(self) -> "UpstreamStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the connection back if the body was read to the end, else drop it."""
        if self.closed:
            return
        self.closed = True
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()

    async def data_batches(self) -> AsyncGenerator[list[bytes], None]:
        """SSE ``data:`` payloads, in batches of what arrived together (fewer writes downstream)."""
        rest = b""
        try:
            async for chunk in self.response.content.iter_any():
                if rest:
                    chunk = rest + chunk
                lines = chunk.split(b"\n")
                rest = lines.pop()
                batch = []
                for line in lines:
                    if line.startswith(b"data:"):
                        batch.append(line[5:].strip())
                    elif line.startswith(b"error:"):
                        raise error_from_upstream(500, _loads_or_text(line[6:].strip()))
                if batch:
                    yield batch
        except _UPSTREAM_ERRORS as exc:
            raise error_from_exception(exc) from exc
        if rest.startswith(b"data:"):
            yield [rest[5:].strip()]

    async def raw_chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (for relaying a native Anthropic stream)."""
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except _UPSTREAM_ERRORS as exc:
            raise error_from_exception(exc) from exc


def _loads_or_text(data: bytes) -> Any:
    try:
        return loads(data)
    except (ValueError, RecursionError):
        return data.decode("utf-8", "replace")


class Upstream:
    """Client for the upstream's HTTP API."""

    def __init__(self, settings: GatewaySettings, *, api_key: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.base_url = settings.upstream_url
        self._metrics = metrics
        self._settings = settings
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the pooled session (inside the running event loop)."""
        connector = aiohttp.TCPConnector(limit=self._settings.max_upstream_connections,
                                         keepalive_timeout=30.0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._settings.upstream_connect_timeout_s,
                                        sock_read=self._settings.upstream_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              headers=self._headers, auto_decompress=False)

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def _send(self, method: str, path: str, payload: Any, timeout: float | None
                    ) -> aiohttp.ClientResponse:
        kwargs: dict[str, Any] = {}
        if payload is not None:
            try:
                kwargs["data"] = dumps(payload)
            except ValueError as exc:
                raise invalid_request("the request nests too deeply") from exc
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        started = time.monotonic()
        try:
            response = await self.session.request(method, self.base_url + path, **kwargs)
        except _UPSTREAM_ERRORS as exc:
            if self._metrics is not None:
                self._metrics.observe_upstream(path, time.monotonic() - started, None)
            raise error_from_exception(exc) from exc
        if self._metrics is not None:
            self._metrics.observe_upstream(path, time.monotonic() - started, response.status)
        return response

    async def request_json(self, method: str, path: str, payload: Any = None, *,
                           timeout: float | None = None) -> Any:
        """One request with a JSON answer; non-2xx statuses raise the mapped ApiError."""
        response = await self._send(method, path, payload, timeout)
        try:
            body = await response.read()
        except _UPSTREAM_ERRORS as exc:
            raise error_from_exception(exc) from exc
        finally:
            response.release()
        if response.status >= 300:
            raise error_from_upstream(response.status, _loads_or_text(body), response.headers)
        try:
            return loads(body)
        except (ValueError, RecursionError) as exc:
            raise protocol_error(f"the model server answered {path} with something that is not JSON") from exc

    async def open_stream(self, path: str, payload: Any) -> UpstreamStream:
        """POST and return the open stream once the status is known to be 2xx."""
        response = await self._send("POST", path, payload, None)
        if response.status < 300:
            return UpstreamStream(response)
        try:
            body = await response.read()
        except _UPSTREAM_ERRORS:
            body = b""
        finally:
            response.release()
        raise error_from_upstream(response.status, _loads_or_text(body), response.headers)

    async def health(self) -> dict[str, Any]:
        """The upstream's ``/health``: ``{"status": "ok"|"loading"|"down", "http_status": n}``."""
        try:
            response = await self._send("GET", "/health", None, 3.0)
        except ApiError as exc:
            return {"status": "down", "error": exc.message}
        response.release()
        status = "ok" if response.status == 200 else "loading" if response.status == 503 else "error"
        return {"status": status, "http_status": response.status}
