"""Gateway settings: one immutable record, loaded from a JSON file plus flags.

``provision-gateway --config gw.json`` reads a JSON object with these keys
(all optional; unknown keys are an error so typos do not pass silently)::

    listen_host                "127.0.0.1"   address the gateway listens on
    listen_port                8082          port the gateway listens on
    upstream_url               "http://127.0.0.1:8080"
                                             llama-server base URL (no /v1)
    mode                       "translate"   translate: Anthropic -> OpenAI chat completions;
                                             native: the upstream's own /v1/messages, gaps fixed
    api_key_file               null          file with the key clients must send (x-api-key or
                                             Authorization: Bearer); null = no authentication
    upstream_api_key_file      null          file with the key sent to the upstream (Bearer)
    local_model_id             "local"       the model id the upstream serves
    models                     {}            several models: served name -> upstream model id
                                             (empty: just local_model_id); see gateway/models.py
    claude_slots               {}            Claude Code's slots -> served name: {"main": ...,
                                             "small_fast": ...} (default: the first model for both)
    model_aliases              {}            requested name -> upstream model id
    accept_claude_models       true          opus/sonnet/haiku and claude-* names map to the
                                             main slot (haiku: the small_fast slot)
    max_request_bytes          33554432      larger bodies get 413 request_too_large
    ping_interval_s            5.0           SSE ping after this many idle seconds
    upstream_timeout_s         600.0         longest silence from the upstream, prefill included
    upstream_connect_timeout_s 10.0          TCP connect timeout to the upstream
    header_wait_s              0.25          how long a stream waits for the upstream's status
                                             before committing to HTTP 200 (so a quick 503 still
                                             becomes an HTTP 529 the client retries; llama-server
                                             sends no headers until prefill is done)
    max_upstream_connections   64            size of the upstream connection pool
    log_level                  "info"        debug | info | warning | error (stderr)
    event_loop                 "auto"        auto: uvloop when installed, else asyncio;
                                             uvloop (required) | asyncio

Example (what a systemd unit's ``provision-gateway --config /etc/provision/gateway.json`` reads)::

    {"listen_host": "0.0.0.0", "listen_port": 8082, "upstream_url": "http://127.0.0.1:8080",
     "api_key_file": "/etc/provision/gateway.key", "local_model_id": "smollm2",
     "model_aliases": {"smollm2-fast": "smollm2"}}

Key files hold the key on their first line; they are read at start-up and the
keys are registered with :mod:`provisioner.redact` so they never reach a log.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from provisioner import redact
from provisioner.errors import ConfigError

MODES = ("translate", "native")
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@dataclass(frozen=True)
class GatewaySettings:
    """Validated gateway configuration (see the module docstring for the keys)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8082
    upstream_url: str = "http://127.0.0.1:8080"
    mode: str = "translate"
    api_key_file: str | None = None
    upstream_api_key_file: str | None = None
    local_model_id: str = "local"
    models: Mapping[str, str] = field(default_factory=dict)
    claude_slots: Mapping[str, str] = field(default_factory=dict)
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    accept_claude_models: bool = True
    max_request_bytes: int = 32 * 1024 * 1024
    ping_interval_s: float = 5.0
    upstream_timeout_s: float = 600.0
    upstream_connect_timeout_s: float = 10.0
    header_wait_s: float = 0.25
    max_upstream_connections: int = 64
    log_level: str = "info"
    event_loop: str = "auto"

    def resolve_model(self, requested: str) -> str | None:
        """The upstream model id for a requested name, or None if it is not served."""
        from provisioner.gateway.models import ModelTable

        return ModelTable.from_settings(self).resolve(requested)


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(GatewaySettings)}


def _check(key: str, value: Any, source: str) -> Any:
    """Type-check one key; returns the normalised value or raises ConfigError."""
    kind = _field_types()[key]

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"expected {expected}, found {type(value).__name__} {value!r}",
                           file=source, key=key)

    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise fail("a positive integer")
        if key == "listen_port" and value > 65535:
            raise fail("a port number 1-65535")
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise fail("a positive number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind == "str | None":
        if value is not None and (not isinstance(value, str) or not value):
            raise fail("a file path or null")
        return value
    if kind == "Mapping[str, str]":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
            raise fail('an object of non-empty strings {"requested name": "upstream model"}')
        return dict(value)
    if not isinstance(value, str) or not value:
        raise fail("a non-empty string")
    if key == "mode" and value not in MODES:
        raise ConfigError(f"expected one of {', '.join(MODES)}, found {value!r}", file=source, key=key)
    if key == "log_level" and value not in LOG_LEVELS:
        raise ConfigError(f"expected one of {', '.join(LOG_LEVELS)}, found {value!r}",
                          file=source, key=key)
    if key == "event_loop" and value not in EVENT_LOOPS:
        raise ConfigError(f"expected one of {', '.join(EVENT_LOOPS)}, found {value!r}",
                          file=source, key=key)
    if key == "upstream_url":
        if not value.startswith(("http://", "https://")):
            raise ConfigError(f"expected an http:// or https:// URL, found {value!r}",
                              file=source, key=key)
        value = value.rstrip("/")
        if value.endswith("/v1"):
            raise ConfigError("the upstream URL must not end in /v1", file=source, key=key,
                              fix=f"use {value[:-3]!r}")
    return value


def settings_from_mapping(data: Mapping[str, Any], *, source: str = "<config>",
                          base: GatewaySettings | None = None) -> GatewaySettings:
    """Validate ``data`` (config-file keys) on top of ``base`` (default: the defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a JSON object, found {type(data).__name__}", file=source)
    known = _field_types()
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r}", file=source, key=key,
                              fix="known keys: " + ", ".join(sorted(known)))
        values[key] = _check(key, value, source)
    return dataclasses.replace(base or GatewaySettings(), **values)


def load_settings(path: str | Path, overrides: Mapping[str, Any] | None = None) -> GatewaySettings:
    """Read a JSON config file, then apply ``overrides`` (from command-line flags)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", file=source) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}", file=source) from exc
    settings = settings_from_mapping(data, source=source)
    if overrides:
        settings = settings_from_mapping(overrides, source="command line", base=settings)
    return settings


def read_key_file(path: str, *, key: str) -> str:
    """Read a key from its file (first line, stripped) and register it for redaction."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}", key=key) from exc
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"the key file {path} is empty", key=key)
    return redact.register(secret)
