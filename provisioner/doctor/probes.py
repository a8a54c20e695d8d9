"""HTTP requests doctor makes itself, in parallel: gateway /health, a tiny end-to-end request and the
gateway's /metrics (for the last minute's error rate)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..config import read_secret
from ..config.schema import HostFile
from ..redact import redact
from .context import Probe

TIMEOUT = 30.0


def _request(name: str, url: str, *, data: dict | None = None, headers: dict[str, str] | None = None,
             timeout: float = TIMEOUT) -> Probe:
    t0 = time.monotonic()
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})},
                                 method="POST" if body is not None else "GET")
    probe = Probe(name, url)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            probe.status = resp.status
            probe.body = resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        probe.status = exc.code
        probe.body = exc.read(2048).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        probe.error = redact(str(reason))
    probe.seconds = time.monotonic() - t0
    return probe


def gateway_url(cfg: HostFile, ct_ip: str | None) -> str | None:
    """How clients reach the gateway: clients.base_url, else http://<ct ip>:<gateway.port>."""
    if cfg.clients.base_url:
        return cfg.clients.base_url.rstrip("/")
    if ct_ip:
        return f"http://{ct_ip}:{cfg.gateway.port}"
    return None


def ct_ip_from_config(net0: str | None) -> str | None:
    """The static address in ``net0`` (``ip=10.0.3.20/24``), None for dhcp/manual."""
    for part in (net0 or "").split(","):
        if part.startswith("ip=") and "/" in part:
            return part[3:].split("/", 1)[0]
    return None


def gateway_key(cfg: HostFile, from_ct: str | None) -> str | None:
    if cfg.gateway.api_key is not None:
        return read_secret(cfg.gateway.api_key, "gateway.api_key")
    return from_ct


def run_probes(cfg: HostFile, base_url: str, key: str | None) -> dict[str, Probe]:
    """/metrics first (so the last minute's error rate is the clients', not doctor's own request), then
    /health and one tiny Messages request, concurrently."""
    model = cfg.model.model_id if cfg.model else "default"
    headers = {"anthropic-version": "2023-06-01"}
    if key:
        headers["x-api-key"] = key
    message = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say OK."}]}
    metrics = _request("gateway.metrics", f"{base_url}/metrics", headers=headers, timeout=5)
    with ThreadPoolExecutor(max_workers=2) as pool:
        health = pool.submit(_request, "gateway.health", f"{base_url}/health", timeout=10)
        e2e = pool.submit(_request, "gateway.e2e", f"{base_url}/v1/messages", data=message, headers=headers,
                          timeout=120)
        return {"gateway.health": health.result(), "gateway.e2e": e2e.result(), "gateway.metrics": metrics}
