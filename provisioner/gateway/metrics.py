"""The gateway's metrics, in Prometheus' text exposition format (``GET /metrics``).

Written here rather than with ``prometheus_client``: that library keeps one process-wide
registry (each gateway app in a process, as in the tests, needs its own), and what we
need — a dozen families of counters, gauges and fixed-bucket histograms — is the simple
part of a text format that is stable and documented (version 0.0.4). One dependency
fewer in the container's offline virtualenv, and nothing else on the request path.

Everything is recorded from the finished :class:`AccessRecord` in one place
(:meth:`Metrics.observe`), plus the upstream's latency and the open streams.
``provision_gateway_recent_requests`` counts the last 60 seconds by status class, so
``provision doctor`` can tell the recent error rate from one scrape.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Iterable

from provisioner.gateway.access_log import AccessRecord

PREFIX = "provision_gateway_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds: from a cached prompt's first token to a long prefill on a small GPU
TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ADDED_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WINDOW_S = 60
CLASSES = ("2xx", "4xx", "5xx")

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


class _Histogram:
    __slots__ = ("buckets", "counts", "total", "n")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1


class Metrics:
    """All of one gateway's metrics."""

    def __init__(self) -> None:
        self.requests: dict[Labels, int] = defaultdict(int)
        self.errors: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.ttft: dict[Labels, _Histogram] = {}
        self.duration: dict[Labels, _Histogram] = {}
        self.upstream: dict[Labels, _Histogram] = {}
        self.added: dict[Labels, _Histogram] = {}
        self.upstream_errors: dict[Labels, int] = defaultdict(int)
        self.open_streams = 0
        self.in_flight = 0
        # per-second buckets of the last WINDOW_S seconds: second -> class -> count
        self._recent: dict[int, dict[str, int]] = {}

    # --- recording ---------------------------------------------------------------------------
    @staticmethod
    def _hist(table: dict[Labels, _Histogram], labels: Labels, buckets: tuple[float, ...]) -> _Histogram:
        hist = table.get(labels)
        if hist is None:
            hist = table[labels] = _Histogram(buckets)
        return hist

    def observe(self, record: AccessRecord, route: str, now: float) -> None:
        """Count one finished request."""
        status = str(record.status)
        self.requests[(("route", route), ("status", status))] += 1
        if record.error:
            self.errors[(("route", route), ("type", record.error), ("status", status))] += 1
        model = record.upstream_model or ""
        if record.first_token_at is not None:
            stream = "true" if record.stream else "false"
            self._hist(self.ttft, (("model", model), ("stream", stream)), TIME_BUCKETS).observe(
                record.first_token_at - record.started)
        added = record.gateway_added()
        if added is not None:
            self._hist(self.added, (("stream", "true" if record.stream else "false"),), ADDED_BUCKETS).observe(added)
        self._hist(self.duration, (("route", route),), TIME_BUCKETS).observe(now - record.started)
        for kind, value in (("input", record.input_tokens), ("output", record.output_tokens),
                            ("cache_read", record.cache_read_input_tokens)):
            if value:
                self.tokens[(("model", model), ("kind", kind))] += value
        second = int(time.monotonic())
        slot = self._recent.setdefault(second, {})
        cls = "5xx" if record.status >= 500 else "4xx" if record.status >= 400 else "2xx"
        slot[cls] = slot.get(cls, 0) + 1
        if len(self._recent) > WINDOW_S * 2:
            self._prune(second)

    def observe_upstream(self, path: str, seconds: float, status: int | None) -> None:
        """Time from sending an upstream request to its response headers (``status`` None: it failed)."""
        self._hist(self.upstream, (("path", path),), UPSTREAM_BUCKETS).observe(seconds)
        if status is None or status >= 500:
            self.upstream_errors[(("path", path), ("status", str(status or "none")))] += 1

    def _prune(self, second: int) -> None:
        for old in [s for s in self._recent if s <= second - WINDOW_S]:
            del self._recent[old]

    def recent(self) -> dict[str, int]:
        """Requests finished in the last 60 seconds, by status class."""
        now = int(time.monotonic())
        self._prune(now)
        out = dict.fromkeys(CLASSES, 0)
        for slot in self._recent.values():
            for cls, n in slot.items():
                out[cls] += n
        return out

    # --- exposition --------------------------------------------------------------------------
    def render(self, info: dict[str, str]) -> bytes:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")

        def samples(name: str, table: dict[Labels, int]) -> None:
            for labels, value in sorted(table.items()):
                lines.append(f"{PREFIX}{name}{_labels(labels)} {_number(value)}")

        def histograms(name: str, table: dict[Labels, _Histogram]) -> None:
            for labels, hist in sorted(table.items()):
                for bound, count in [*zip(hist.buckets, hist.counts), (math.inf, hist.n)]:
                    le = 'le="' + _number(bound) + '"'
                    lines.append(f"{PREFIX}{name}_bucket{_labels(labels, le)} {count}")
                lines.append(f"{PREFIX}{name}_sum{_labels(labels)} {_number(round(hist.total, 6))}")
                lines.append(f"{PREFIX}{name}_count{_labels(labels)} {hist.n}")

        family("info", "gauge", "The gateway's version and mode (always 1).")
        lines.append(f"{PREFIX}info{_labels(tuple(sorted(info.items())))} 1")
        family("requests_total", "counter", "Requests answered, by route and HTTP status (499: the client left).")
        samples("requests_total", self.requests)
        family("errors_total", "counter", "Requests that ended in an error, by route, Anthropic error type and status.")
        samples("errors_total", self.errors)
        family("tokens_total", "counter", "Tokens by upstream model and kind: input (processed), cache_read "
                                          "(reused from the prompt cache), output.")
        samples("tokens_total", self.tokens)
        family("time_to_first_token_seconds", "histogram", "From the request to its first generated token.")
        histograms("time_to_first_token_seconds", self.ttft)
        family("gateway_added_seconds", "histogram", "Of the time to first token, what the gateway itself took: "
                                                      "until the request went upstream, and from the upstream's "
                                                      "first token to its own.")
        histograms("gateway_added_seconds", self.added)
        family("request_duration_seconds", "histogram", "From the request to the end of its answer.")
        histograms("request_duration_seconds", self.duration)
        family("upstream_latency_seconds", "histogram", "From sending a request upstream to its response "
                                                         "headers (for a stream llama-server sends them at once; "
                                                         "a non-streamed answer comes whole).")
        histograms("upstream_latency_seconds", self.upstream)
        family("upstream_errors_total", "counter", "Upstream requests that failed (status none: no answer) or "
                                                   "answered 5xx.")
        samples("upstream_errors_total", self.upstream_errors)
        family("open_streams", "gauge", "Streamed answers in progress.")
        lines.append(f"{PREFIX}open_streams {self.open_streams}")
        family("requests_in_flight", "gauge", "Requests being served.")
        lines.append(f"{PREFIX}requests_in_flight {self.in_flight}")
        family("recent_requests", "gauge", f"Requests finished in the last {WINDOW_S} s, by status class.")
        for cls, n in self.recent().items():
            lines.append(f'{PREFIX}recent_requests{{class="{cls}",window="{WINDOW_S}s"}} {n}')
        return ("\n".join(lines) + "\n").encode()


def parse(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for each sample line of a text exposition (for doctor and the tests)."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for part in _split_labels(rest.rstrip("}")):
            key, _, raw = part.partition("=")
            labels[key] = raw[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        yield name, labels, float(value)


def _split_labels(text: str) -> list[str]:
    parts, current, quoted, escaped = [], "", False, False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            current += ch
            escaped = True
        elif ch == '"':
            current += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts
