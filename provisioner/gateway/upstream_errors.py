"""The one place where upstream failures become Anthropic errors.

Mapping (what Claude Code then does in brackets):

- upstream 429                                     → 429 rate_limit_error, its ``Retry-After`` and
                                                     ``retry-after-ms`` kept (retries after that long)
- upstream 503, "busy", "loading", full queue      → 529 overloaded_error (retries)
- connection refused / reset                       → 502 api_error (retries)
- silence longer than ``upstream_timeout_s``       → 504 api_error (retries)
- context exceeded                                 → 400 "prompt is too long: N tokens > M maximum"
                                                     (Claude Code compacts on this text)
- "not supported" (images on a text-only model)    → 400 invalid_request_error (not retried)
- "JSON schema conversion failed" / "... error"     → 400 naming the schemas it can come from
- other 4xx                                        → 400 invalid_request_error
- 401/403                                          → 500 api_error; the gateway's upstream key is
                                                     wrong, which the client can do nothing about
- anything else                                    → 500 api_error

Messages from the upstream are passed through :func:`provisioner.redact.redact`
and cut short, so a key echoed by a backend never reaches a client.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import aiohttp

from provisioner import redact
from provisioner.gateway.api_errors import ApiError, invalid_request, overloaded, rate_limited

_BUSY_WORDS = ("busy", "queue", "loading", "unavailable", "overload", "no slot")


def _message_of(body: Any) -> tuple[str, dict]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or ""), error
    if isinstance(error, str):
        return error, {}
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"], {}
    if isinstance(body, str):
        return body, {}
    return "", {}


#: the headers that say when to retry (the Anthropic SDKs read both: ``retry-after-ms`` first)
RETRY_HEADERS = ("retry-after", "retry-after-ms")


def error_from_upstream(status: int, body: Any, headers: Mapping[str, str] | None = None) -> ApiError:
    """Map an upstream error status, body (JSON or text) and headers to an Anthropic error."""
    raw, detail = _message_of(body)
    if isinstance(detail.get("code"), int) and status in (200, 500):
        status = detail["code"]  # errors sent inside a stream carry their own code
    message = redact.redact(raw)[:400] or f"HTTP {status}"
    lower = message.lower() + " " + str(detail.get("type", "")).lower()
    if status == 429:
        retry = {name: value for name in RETRY_HEADERS
                 if (value := (headers or {}).get(name)) and len(value) <= 32}
        return rate_limited(f"the model server is rate limiting: {message}", retry)
    if status == 503 or any(word in lower for word in _BUSY_WORDS):
        return overloaded(f"the model server is busy: {message}")
    if status in (401, 403):
        return ApiError(500, "api_error", "the model server rejected the gateway's credentials; "
                                          "check upstream_api_key_file")
    if "context" in lower and ("exceed" in lower or "too long" in lower or "too large" in lower):
        n_prompt, n_ctx = detail.get("n_prompt_tokens"), detail.get("n_ctx")
        if isinstance(n_prompt, int) and isinstance(n_ctx, int):
            return invalid_request(f"prompt is too long: {n_prompt} tokens > {n_ctx} maximum")
        return invalid_request(f"prompt is too long: {message}")
    if "json schema conversion failed" in lower or "json schema error" in lower:
        # common/json-schema-to-grammar.cpp:977 and :1004 (an unresolved $ref, an invalid pattern, ...);
        # with a chat template's own parser, common/json-schema.cpp:23 via common/chat.cpp:1364
        return invalid_request("the model server cannot express a JSON schema of this request as a grammar "
                               f"(output_config.format.schema, or a tool's input_schema): {message}")
    if "not supported" in lower or "unsupported" in lower:
        # e.g. llama-server's 500 "image input is not supported" on a text-only model: the request
        # cannot succeed, so it must not be retried like a server failure
        return invalid_request(f"the model server cannot serve this request: {message}")
    if status == 404:
        return ApiError(502, "api_error", f"the model server has no such endpoint: {message}")
    if 400 <= status < 500:
        return invalid_request(f"the model server rejected the request: {message}")
    return ApiError(500, "api_error", f"the model server failed: {message}")


def error_from_exception(exc: BaseException) -> ApiError:
    """Map a client-side failure talking to the upstream."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ApiError(504, "api_error", "the model server did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ApiError(502, "api_error", "cannot connect to the model server")
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                        aiohttp.ClientOSError, ConnectionError)):
        return ApiError(502, "api_error", "the model server closed the connection")
    if isinstance(exc, aiohttp.ClientError):
        return ApiError(502, "api_error", f"talking to the model server failed: {type(exc).__name__}")
    raise TypeError(f"not an upstream failure: {exc!r}") from exc


def protocol_error(message: str) -> ApiError:
    """The upstream answered something that is not the protocol it promised."""
    return ApiError(502, "api_error", message)
