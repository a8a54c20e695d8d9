"""Structured access log: one JSON line per request, on the ``provisioner.gateway.access`` logger.

Fields: ts, request_id, method, path, status, model, upstream_model, stream, input_tokens,
output_tokens, cache_read_input_tokens, stop_reason, ttft_ms, duration_ms, error.
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
    error: str | None = None

    def mark_first_token(self) -> None:
        """Remember when the first generated token went out (once)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

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
        data["duration_ms"] = round((now - self.started) * 1000, 1)
        return dumps(data).decode()


_LOGGED = tuple(f.name for f in fields(AccessRecord) if f.name not in ("started", "first_token_at"))


def write(record: AccessRecord) -> None:
    """Emit the record if the access logger is enabled."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(record.line(time.monotonic()))
