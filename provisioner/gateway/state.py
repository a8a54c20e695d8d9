"""What every handler shares: settings, the upstream client, the client key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from provisioner.gateway.access_log import AccessRecord
from provisioner.gateway.config import GatewaySettings
from provisioner.gateway.documents import DocumentReader
from provisioner.gateway.metrics import Metrics
from provisioner.gateway.models import ModelTable
from provisioner.gateway.upstream import Upstream


@dataclass
class GatewayState:
    """Per-application state (one per running gateway)."""

    settings: GatewaySettings
    upstream: Upstream
    api_key: bytes | None
    created_at: str
    documents: DocumentReader
    #: which upstream model serves a requested name (gateway/models.py)
    models: ModelTable
    metrics: Metrics
    #: paths answered without the client key
    open_paths: frozenset[str]


STATE = web.AppKey("gateway_state", GatewayState)
RECORD = web.RequestKey("gateway_access_record", AccessRecord)


def state_of(request: web.Request) -> GatewayState:
    """The gateway state of the application serving ``request``."""
    return request.app[STATE]


def record_of(request: web.Request) -> AccessRecord:
    """The access-log record of ``request`` (created by the middleware)."""
    return request[RECORD]
