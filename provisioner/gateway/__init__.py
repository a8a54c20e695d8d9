"""Anthropic Messages gateway in front of llama-server (standalone aiohttp service).

Claude Code and the ``anthropic`` SDK talk to it as if it were the Anthropic API.
In ``translate`` mode (default) requests become OpenAI chat completions; in
``native`` mode they go to llama-server's own ``/v1/messages`` with its gaps fixed.

Layout: ``config`` (settings, each with its help text), ``models`` (which model names
map to which upstream model: the one place), ``translate_request`` + ``translate_tools``
+ ``translate_options`` + ``request_fields`` (Anthropic request → OpenAI, validated),
``translate_stream`` + ``stop_matcher`` (OpenAI SSE → Anthropic SSE),
``translate_response`` (non-streaming), ``upstream`` + ``upstream_errors`` (the
upstream client; the one place its failures are mapped), ``stream_serve`` +
``sse_channel`` (streaming, pings, disconnects), ``messages_translate`` /
``messages_native`` (the two modes), ``models`` (which upstream model a name reaches: aliases,
Claude Code's slots, ``/v1/models``), ``app`` (routes, auth, errors), ``access_log``,
``metrics`` (``/metrics``, Prometheus text format),
``sanitize`` (billing header, fields backends reject), ``documents`` + ``pdf_text``
(document blocks → text, before either mode), ``__main__`` (the ``provision-gateway``
command).
"""

from provisioner.gateway.app import build_app
from provisioner.gateway.config import GatewaySettings, load_settings

__all__ = ["GatewaySettings", "build_app", "load_settings"]
