"""Structured access log: one JSON line per request, on the ``provisioner.gateway.access`` logger.

Fields: ts, request_id, method, path, status, model, upstream_model, stream, input_tokens,
output_tokens, cache_read_input_tokens, stop_reason, ttft_ms, gateway_ms (what the gateway itself
added before the first token: until the request went upstream, plus from the upstream's first
token to its own), duration_ms, error.
Never prompt contents, never keys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields

from provisioner.gateway.jsonfast import dumps

logger = logging.getLogger("provisioner.gateway.access")


@dataclass(slots=True)
class AccessRecord:
    """What one request did; filled in by the handlers, written by the middleware."""

    request_id: str
    method: str
    path: str
    started: float
    status: int = 0
    model: str | None = None
    upstream_model: str | None = None
    stream: bool | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    stop_reason: str | None = None
    first_token_at: float | None = None
    #: when the request went upstream, and when the upstream's first token (or whole answer) arrived
    upstream_sent_at: float | None = None
    upstream_token_at: float | None = None
    error: str | None = None

    def mark_first_token(self, upstream_at: float | None = None) -> None:
        """Remember when the first generated token went out (once), and when it came from upstream."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.upstream_token_at = upstream_at

    def gateway_added(self) -> float | None:
        """Seconds of the time to first token spent in the gateway, not waiting for the upstream."""
        if None in (self.first_token_at, self.upstream_sent_at, self.upstream_token_at):
            return None
        assert self.first_token_at is not None and self.upstream_sent_at is not None
        assert self.upstream_token_at is not None
        return (self.upstream_sent_at - self.started) + (self.first_token_at - self.upstream_token_at)

    def set_usage(self, usage: dict | None) -> None:
        """Copy token counts from an Anthropic usage object."""
        if usage:
            self.input_tokens = usage.get("input_tokens")
            self.output_tokens = usage.get("output_tokens")
            self.cache_read_input_tokens = usage.get("cache_read_input_tokens")

    def line(self, now: float) -> str:
        """The JSON line for this record."""
        # not dataclasses.asdict: it deep-copies, and this runs once per request
        data = {name: value for name in _LOGGED if (value := getattr(self, name)) is not None}
        data["ts"] = round(time.time(), 3)
        if self.first_token_at is not None:
            data["ttft_ms"] = round((self.first_token_at - self.started) * 1000, 1)
        added = self.gateway_added()
        if added is not None:
            data["gateway_ms"] = round(added * 1000, 2)
        data["duration_ms"] = round((now - self.started) * 1000, 1)
        return dumps(data).decode()


_LOGGED = tuple(f.name for f in fields(AccessRecord)
                if f.name not in ("started", "first_token_at", "upstream_sent_at", "upstream_token_at"))


def write(record: AccessRecord) -> None:
    """Emit the record if the access logger is enabled."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(record.line(time.monotonic()))
