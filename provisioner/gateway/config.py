"""Gateway settings: one immutable record, loaded from a JSON file plus flags.

``provision-gateway --config gw.json`` reads a JSON object whose keys are the fields
of :class:`GatewaySettings` (all optional; unknown keys are an error so typos do not
pass silently). Each field carries its help text, declared once here: that text is what
``provision-gateway --help`` prints, next to the flag that overrides the key.

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


def _setting(default: Any, help_text: str) -> Any:
    """A field with its help text (a dict default becomes a fresh dict per instance)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class GatewaySettings:
    """Validated gateway configuration; each field's ``metadata["help"]`` documents it."""

    listen_host: str = _setting("127.0.0.1", "address the gateway listens on")
    listen_port: int = _setting(8082, "port the gateway listens on")
    upstream_url: str = _setting("http://127.0.0.1:8080", "llama-server's base URL; the /v1 form "
                                 "(http://host:8080/v1) is accepted too")
    mode: str = _setting("translate", "translate: Anthropic -> OpenAI chat completions; native: the "
                         "upstream's own /v1/messages, its gaps fixed")
    api_key_file: str | None = _setting(None, "file with the key clients must send (x-api-key or "
                                        "Authorization: Bearer); null: no authentication")
    upstream_api_key_file: str | None = _setting(None, "file with the key sent to the upstream (Bearer)")
    local_model_id: str | None = _setting(None, "the upstream's model id (provision writes the host file's "
                                          "model alias); null: ask the upstream's /v1/models")
    models: Mapping[str, str] = _setting({}, "several models: served name -> upstream model id (empty: just "
                                         "local_model_id); see gateway/models.py")
    claude_slots: Mapping[str, str] = _setting({}, "Claude Code's slots -> served name: {\"main\": ..., "
                                               "\"small_fast\": ...} (default: the first model for both)")
    model_aliases: Mapping[str, str] = _setting({}, "requested model name -> upstream model id")
    accept_claude_models: bool = _setting(True, "opus/sonnet/haiku and claude-* names map to the main slot "
                                          "(haiku: the small_fast slot)")
    max_request_bytes: int = _setting(32 * 1024 * 1024, "larger bodies get 413 request_too_large (also the "
                                      "largest PDF fetched for a document URL)")
    fetch_document_urls: bool = _setting(True, "fetch PDFs given as document URLs (false: such documents "
                                         "get a 400 asking for base64)")
    metrics_public: bool = _setting(False, "serve /metrics without the client key (for a Prometheus "
                                    "scraper on a trusted network)")
    ping_interval_s: float = _setting(5.0, "SSE ping after this many idle seconds")
    upstream_timeout_s: float = _setting(600.0, "longest silence from the upstream, prefill included")
    upstream_connect_timeout_s: float = _setting(10.0, "TCP connect timeout to the upstream")
    header_wait_s: float = _setting(0.25, "how long a stream waits for the upstream's status before "
                                    "committing to HTTP 200 (so a quick 503 still becomes a 529 the "
                                    "client retries; a slow upstream gets message_start and pings meanwhile)")
    max_upstream_connections: int = _setting(64, "size of the upstream connection pool")
    log_level: str = _setting("info", "debug | info | warning | error (stderr)")
    event_loop: str = _setting("auto", "auto: uvloop when installed, else asyncio; uvloop (required) | asyncio")

    def resolve_model(self, requested: str) -> str | None:
        """The upstream model id for a requested name, or None if it is not served."""
        from provisioner.gateway.models import ModelTable

        return ModelTable.from_settings(self).resolve(requested)


def setting_help() -> dict[str, str]:
    """Key -> help text, in declaration order."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(GatewaySettings)}


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
            raise fail("a model id or null" if key == "local_model_id" else "a file path or null")
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
        # every OpenAI client (and every peer gateway) is configured with the /v1 form; the
        # gateway adds the paths itself (/v1/chat/completions, /apply-template, /health)
        value = value.rstrip("/").removesuffix("/v1").rstrip("/")
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
