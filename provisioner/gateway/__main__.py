"""``provision-gateway``: run the Anthropic Messages gateway.

``provision-gateway --config /etc/provision/gateway.json`` is all a systemd unit
needs; flags override single keys of the file (see :mod:`provisioner.gateway.config`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, Sequence

from aiohttp import web

from provisioner.errors import ConfigError
from provisioner.gateway.app import build_app
from provisioner.gateway.config import GatewaySettings, load_settings, settings_from_mapping

FLAGS: dict[str, tuple[str, type]] = {
    "--host": ("listen_host", str), "--port": ("listen_port", int), "--upstream": ("upstream_url", str),
    "--mode": ("mode", str), "--api-key-file": ("api_key_file", str),
    "--upstream-api-key-file": ("upstream_api_key_file", str), "--model-id": ("local_model_id", str),
    "--ping-interval": ("ping_interval_s", float), "--upstream-timeout": ("upstream_timeout_s", float),
    "--max-request-bytes": ("max_request_bytes", int), "--log-level": ("log_level", str),
    "--event-loop": ("event_loop", str),
}


def parse_args(argv: Sequence[str] | None) -> tuple[str | None, dict[str, Any]]:
    """The config file path and the keys given as flags."""
    parser = argparse.ArgumentParser(
        prog="provision-gateway", description="Run the Anthropic Messages gateway in front of llama-server.",
        epilog="Every flag overrides the config-file key named in its help; see provisioner.gateway.config.")
    parser.add_argument("--config", metavar="FILE", help="JSON settings file")
    for flag, (key, kind) in FLAGS.items():
        parser.add_argument(flag, dest=key, type=kind, metavar=kind.__name__.upper(), help=f"key {key}")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=MODEL",
                        help="map a requested model name to an upstream model (repeatable)")
    args = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in args.items() if k not in ("config", "alias") and v is not None}
    if args["alias"]:
        pairs = [a.split("=", 1) for a in args["alias"]]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError("expected NAME=MODEL", key="--alias")
        overrides["model_aliases"] = dict(pairs)
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
