"""The aiohttp application: routes, authentication, errors, access log.

Routes (``?beta=true`` and other query strings are ignored):

- ``POST /v1/messages``                 streaming and not; translate or native mode
- ``POST /v1/messages/count_tokens``    the backend's tokenizer on the templated prompt
- ``GET  /v1/models``, ``/v1/models/{id}``  Anthropic and OpenAI list shapes (gateway/models.py)
- ``GET  /health``                      gateway and upstream health, no key needed
- ``GET  /metrics``                     Prometheus text format (no key with ``metrics_public``)
- ``GET|HEAD /``                        liveness, no key needed
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

import provisioner
from provisioner.gateway import access_log, messages_native, messages_translate
from provisioner.gateway.access_log import AccessRecord
from provisioner.gateway.api_errors import ApiError, invalid_request, not_found
from provisioner.gateway.config import GatewaySettings, read_key_file
from provisioner.gateway.documents import DocumentReader
from provisioner.gateway.ids import new_id
from provisioner.gateway.jsonfast import dumps, loads
from provisioner.gateway.metrics import CONTENT_TYPE, Metrics
from provisioner.gateway.models import ModelTable
from provisioner.gateway.state import RECORD, STATE, GatewayState, record_of, state_of
from provisioner.gateway.translate_request import translate_request
from provisioner.gateway.upstream import Upstream

log = logging.getLogger("provisioner.gateway")
OPEN_PATHS = frozenset({"/", "/health"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200, request_id: str | None = None,
          extra_headers: dict[str, str] | None = None) -> web.Response:
    headers = {"request-id": request_id} if request_id else {}
    headers.update(extra_headers or {})
    if status >= 400:  # the header Anthropic's SDKs obey before their own status rules
        headers["x-should-retry"] = "true" if status >= 500 or status == 429 else "false"
    return web.Response(body=dumps(data), status=status, content_type="application/json", headers=headers)


def _authorised(request: web.Request, key: bytes) -> bool:
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, authentication, Anthropic-shaped errors and the access log."""
    record = AccessRecord(request_id=new_id("req_"), method=request.method, path=request.path,
                          started=time.monotonic())
    request[RECORD] = record
    state = state_of(request)
    state.metrics.in_flight += 1
    try:
        key = state.api_key
        if key is not None and request.path not in state.open_paths and not _authorised(request, key):
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        response = await handler(request)
        record.status = record.status or response.status
        return response
    except ApiError as exc:
        record.status, record.error = exc.status, exc.error_type
        return _json(exc.body(record.request_id), exc.status, record.request_id, exc.headers)
    except web.HTTPException as exc:
        error = (not_found(f"{request.method} {request.path} does not exist") if exc.status == 404
                 else ApiError(exc.status, "invalid_request_error", exc.reason))
        record.status, record.error = error.status, error.error_type
        return _json(error.body(record.request_id), error.status, record.request_id)
    except Exception:
        log.exception("unexpected error in %s %s (request %s)", request.method, request.path,
                      record.request_id)
        record.status, record.error = 500, "api_error"
        error = ApiError(500, "api_error", "internal gateway error")
        return _json(error.body(record.request_id), 500, record.request_id)
    finally:
        if not record.status:
            record.status = 499  # the client went away before an answer
        state.metrics.in_flight -= 1
        state.metrics.observe(record, _route(request), time.monotonic())
        access_log.write(record)


def _route(request: web.Request) -> str:
    """The route's pattern (a bounded label set; an unknown path is "other")."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


async def _read_body(request: web.Request) -> object:
    limit = state_of(request).settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "request_too_large", f"request body exceeds {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "request_too_large", f"request body exceeds {limit} bytes") from exc
    try:
        return loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid_request("request body is not valid JSON") from exc


def _resolve_model(request: web.Request, body: object) -> str:
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        raise invalid_request("model: field required" if model is None else "model: expected a string")
    table = state_of(request).models
    upstream_model = table.resolve(model)
    if upstream_model is None:
        raise table.not_found(model)
    record_of(request).model = model
    record_of(request).upstream_model = upstream_model
    return upstream_model


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    body = await state_of(request).documents.inline(await _read_body(request))
    upstream_model = _resolve_model(request, body)
    translated = translate_request(body, upstream_model=upstream_model)
    record_of(request).stream = translated.stream
    if state_of(request).settings.mode == "native":
        assert isinstance(body, dict)  # translate_request accepted it
        return await messages_native.handle(request, body, translated, upstream_model)
    return await messages_translate.handle(request, translated)


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens`` via the upstream's ``/apply-template`` and ``/tokenize``."""
    body = await state_of(request).documents.inline(await _read_body(request))
    upstream_model = _resolve_model(request, body)
    payload = translate_request(body, upstream_model=upstream_model, count_only=True).payload
    # "model" routes both calls in router mode (tools/server/server.cpp:230-232 proxy them by it);
    # a single-model server ignores it
    template_input = {k: payload[k] for k in ("model", "messages", "tools", "tool_choice", "chat_template_kwargs")
                      if k in payload}
    upstream = state_of(request).upstream
    templated = await upstream.request_json("POST", "/apply-template", template_input)
    prompt = templated.get("prompt") if isinstance(templated, dict) else None
    if not isinstance(prompt, str):
        raise ApiError(502, "api_error", "the model server's /apply-template returned no prompt")
    tokens = await upstream.request_json("POST", "/tokenize", {"model": upstream_model, "content": prompt,
                                                               "add_special": True})
    if not isinstance(tokens, dict) or not isinstance(tokens.get("tokens"), list):
        raise ApiError(502, "api_error", "the model server's /tokenize returned no tokens")
    record_of(request).input_tokens = len(tokens["tokens"])
    return _json({"input_tokens": len(tokens["tokens"])}, request_id=record_of(request).request_id)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every served name, in Anthropic's and OpenAI's shape at once."""
    state = state_of(request)
    return _json(state.models.page(state.created_at))


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: any name the gateway serves."""
    state = state_of(request)
    name = request.match_info["model_id"]
    if state.models.resolve(name) is None:
        raise state.models.not_found(name)
    return _json({"type": "model", "id": name, "display_name": name, "created_at": state.created_at,
                  "object": "model", "owned_by": "provision"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 when the upstream is ready, 503 otherwise."""
    state = state_of(request)
    upstream = await state.upstream.health()
    ok = upstream["status"] == "ok"
    return _json({"status": "ok" if ok else "degraded", "mode": state.settings.mode,
                  "upstream": upstream}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format (see :mod:`provisioner.gateway.metrics`)."""
    state = state_of(request)
    body = state.metrics.render({"version": provisioner.__version__, "mode": state.settings.mode})
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def root(request: web.Request) -> web.Response:
    """``GET|HEAD /``: the gateway is alive."""
    return web.Response(text="ok")


def build_app(settings: GatewaySettings) -> web.Application:
    """The application; keys are read here so a bad key file fails at start-up."""
    api_key = read_key_file(settings.api_key_file, key="api_key_file") if settings.api_key_file else None
    upstream_key = (read_key_file(settings.upstream_api_key_file, key="upstream_api_key_file")
                    if settings.upstream_api_key_file else None)
    if api_key is None:
        log.warning("no api_key_file configured: the gateway accepts requests without a key")
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    gauges = Metrics()
    state = GatewayState(settings=settings, upstream=Upstream(settings, api_key=upstream_key, metrics=gauges),
                         api_key=api_key.encode() if api_key else None, metrics=gauges,
                         models=ModelTable.from_settings(settings),
                         open_paths=OPEN_PATHS | ({"/metrics"} if settings.metrics_public else set()),
                         created_at=created.isoformat().replace("+00:00", "Z"),
                         documents=DocumentReader(fetch_urls=settings.fetch_document_urls,
                                                  max_bytes=settings.max_request_bytes))
    app = web.Application(middlewares=[gateway_middleware], client_max_size=settings.max_request_bytes)
    app[STATE] = state

    async def lifecycle(app: web.Application):
        await state.upstream.start()
        discovery = asyncio.create_task(state.models.discover(
            lambda: state.upstream.request_json("GET", "/v1/models", timeout=10.0)))
        yield
        discovery.cancel()
        await state.upstream.close()
        await state.documents.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", root)  # GET routes answer HEAD too
    return app
