"""Anthropic Messages gateway in front of llama-server (standalone aiohttp service).

Claude Code and the ``anthropic`` SDK talk to it as if it were the Anthropic API.
In ``translate`` mode (default) requests become OpenAI chat completions; in
``native`` mode they go to llama-server's own ``/v1/messages`` with its gaps fixed.

Layout: ``config`` (settings), ``translate_request`` / ``translate_stream`` /
``translate_response`` (the protocol mapping), ``upstream`` (+ ``upstream_errors``,
the one place upstream failures are mapped), ``stream_serve`` + ``sse_channel``
(streaming, pings, disconnects), ``app`` (routes, auth, errors, access log),
``__main__`` (the ``provision-gateway`` command).
"""

from provisioner.gateway.app import build_app
from provisioner.gateway.config import GatewaySettings, load_settings

__all__ = ["GatewaySettings", "build_app", "load_settings"]
