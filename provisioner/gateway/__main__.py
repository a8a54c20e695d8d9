"""``provision-gateway``: run the Anthropic Messages gateway.

``provision-gateway --config /etc/provision/gateway.json`` is all a systemd unit
needs; flags override single keys of the file (see :mod:`provisioner.gateway.config`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from typing import Any, Sequence

from aiohttp import web

from provisioner.errors import ConfigError
from provisioner.gateway.app import build_app
from provisioner.gateway.config import (EVENT_LOOPS, LOG_LEVELS, MODES, GatewaySettings, load_settings,
                                       settings_from_mapping)

#: short flags kept from before every setting had its own (``--port`` for ``--listen-port``, ...)
SHORT_FLAGS = {"listen_host": "--host", "listen_port": "--port", "upstream_url": "--upstream",
               "local_model_id": "--model-id", "ping_interval_s": "--ping-interval",
               "upstream_timeout_s": "--upstream-timeout"}
_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def _metavar(key: str, kind: str) -> str:
    choices = {"mode": MODES, "log_level": LOG_LEVELS, "event_loop": EVENT_LOOPS}.get(key)
    if choices:
        return "{" + ",".join(choices) + "}"
    if key.endswith("_file"):
        return "FILE"
    if key.endswith("_url"):
        return "URL"
    return {"local_model_id": "ID", "listen_host": "ADDRESS"}.get(key, _TYPES[kind].__name__.upper())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provision-gateway", description="Run the Anthropic Messages gateway in front of llama-server.",
        epilog="Every setting is a key of the --config JSON file; a flag overrides its key.")
    parser.add_argument("--config", metavar="FILE", help="JSON settings file (keys as named below)")
    defaults = GatewaySettings()
    for f in dataclasses.fields(GatewaySettings):
        flags = ["--" + f.name.replace("_", "-")] + ([SHORT_FLAGS[f.name]] if f.name in SHORT_FLAGS else [])
        help_text = f"[key {f.name}] {f.metadata['help']}"
        default = getattr(defaults, f.name)
        if f.type == "bool":
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {str(default).lower()})")
        elif f.type == "Mapping[str, str]":
            extra = ["--alias"] if f.name == "model_aliases" else []  # the short form kept from before
            parser.add_argument(*extra, *flags, dest=f.name, action="append", default=None,
                                metavar="SLOT=NAME" if f.name == "claude_slots" else "NAME=MODEL",
                                help=f"{help_text}; repeatable")
        else:
            parser.add_argument(*flags, dest=f.name, type=_TYPES[f.type], default=None,
                                metavar=_metavar(f.name, f.type),
                                help=f"{help_text} (default: {'null' if default is None else default})")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[str | None, dict[str, Any]]:
    """The config file path and the keys given as flags."""
    args = vars(_parser().parse_args(argv))
    mappings = [f.name for f in dataclasses.fields(GatewaySettings) if f.type == "Mapping[str, str]"]
    overrides = {k: v for k, v in args.items() if k != "config" and k not in mappings and v is not None}
    for key in mappings:
        if args[key]:
            pairs = [a.split("=", 1) for a in args[key]]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError("expected NAME=VALUE", key="--" + key.replace("_", "-"))
            overrides[key] = dict(pairs)
    return args["config"], overrides


def settings_from_argv(argv: Sequence[str] | None) -> GatewaySettings:
    """Settings from ``--config`` plus flag overrides."""
    path, overrides = parse_args(argv)
    if path:
        return load_settings(path, overrides)
    return settings_from_mapping(overrides, source="command line")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("provisioner.gateway.access")
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _install_event_loop(choice: str) -> str:
    """Use uvloop when asked or available ("auto"); returns the loop in use."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError("uvloop is not installed", key="event_loop",
                              fix="pip install uvloop, or set event_loop to auto") from exc
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (2 for a configuration error)."""
    try:
        settings = settings_from_argv(argv)
        _setup_logging(settings.log_level)
        loop_name = _install_event_loop(settings.event_loop)
        app = build_app(settings)
    except ConfigError as exc:
        print(f"provision-gateway: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("provisioner.gateway").info(
        "listening on %s:%d, %s mode, upstream %s, %s event loop", settings.listen_host,
        settings.listen_port, settings.mode, settings.upstream_url, loop_name)
    web.run_app(app, host=settings.listen_host, port=settings.listen_port, access_log=None,
                print=None, handler_cancellation=True, shutdown_timeout=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
