"""Gateway benchmark: added latency, streaming throughput, memory per open stream.

Not a test. Three processes on 127.0.0.1: a fast synthetic OpenAI upstream, the
real gateway (``python -m provisioner.gateway``), and this client. Every figure
for the gateway is measured in the same run as the same figure for a direct
connection to the upstream.

    python bench/gateway_bench.py [--quick]

Prints a table and writes ``bench/results/gateway-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 200  # content chunks per streamed answer
HELD = "hold-the-stream"


# --- the synthetic upstream (runs in its own process) -----------------------------------------
def _chunk(delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


STREAM_HEAD = _chunk({"role": "assistant", "content": ""})
STREAM_TOKENS = [_chunk({"content": f" tok{i}"}) for i in range(TOKENS)]
STREAM_TAIL = (_chunk({}, "stop") + b'data: {"id":"chatcmpl-b","object":"chat.completion.chunk","choices":[],'
               b'"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}}\n\n'
               b"data: [DONE]\n\n")
ANSWER = json.dumps({"id": "chatcmpl-b", "object": "chat.completion", "model": "bench", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello world"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}).encode()


async def _upstream_handler(request: web.Request) -> web.StreamResponse:
    body = json.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=ANSWER, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(STREAM_HEAD)
    if body["messages"][-1]["content"] == HELD:
        await asyncio.sleep(3600)
    last = body["messages"][-1]["content"]
    pace = float(last[5:]) if last.startswith("pace:") else 0.0  # seconds between tokens
    for token in STREAM_TOKENS:
        await response.write(token)
        if pace:
            await asyncio.sleep(pace)
    await response.write(STREAM_TAIL)
    return response


def run_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _upstream_handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handler_cancellation=True)


# --- helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url) as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Target:
    """Direct (OpenAI chat completions) or through the gateway (Anthropic messages)."""

    def __init__(self, name: str, url: str, path: str, body: dict, headers: dict) -> None:
        self.name, self.url, self.body, self.headers = name, url + path, body, headers
        self.raw = json.dumps(body).encode()
        self.stream_raw = json.dumps({**body, "stream": True}).encode()


async def latency(session: aiohttp.ClientSession, targets: list[Target], n: int) -> dict[str, list[float]]:
    """Sequential non-streaming requests, the targets interleaved so drift hits both alike."""
    times: dict[str, list[float]] = {t.name: [] for t in targets}
    for i in range(n + 50):
        for target in targets:
            start = time.perf_counter()
            async with session.post(target.url, data=target.raw, headers=target.headers) as response:
                await response.read()
                assert response.status == 200, response.status
            if i >= 50:  # warm-up
                times[target.name].append((time.perf_counter() - start) * 1000)
    return times


async def read_stream(session: aiohttp.ClientSession, target: Target, pace: float) -> int:
    """One streamed answer, parsed the way a client parses SSE; returns content events seen."""
    events = 0
    body = target.stream_raw.replace(b'"content": "hi"', f'"content": "pace:{pace}"'.encode())
    async with session.post(target.url, data=body, headers=target.headers) as response:
        assert response.status == 200, response.status
        rest = b""
        async for chunk in response.content.iter_any():
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    if event.get("type") == "content_block_delta" or (
                            event.get("choices") and event["choices"][0]["delta"].get("content")):
                        events += 1
    return events


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(session: aiohttp.ClientSession, target: Target, concurrency: int, seconds: float,
                     pace: float, counter: dict | None = None) -> float:
    """Content events per second received over ``seconds`` by ``concurrency`` looping clients."""
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    total = 0

    async def worker() -> None:
        nonlocal total
        while time.perf_counter() < deadline:
            events = await read_stream(session, target, pace)  # not `total += await`: that loses updates
            total += events

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if counter is not None:
        counter["events"] = total
    return total / (time.perf_counter() - start)


async def memory_per_stream(session: aiohttp.ClientSession, gateway: Target, pid: int, n: int) -> float:
    """Gateway RSS growth per held-open stream (MiB/stream → reported in KiB)."""
    body = json.dumps({**gateway.body, "stream": True,
                       "messages": [{"role": "user", "content": HELD}]}).encode()
    before = rss_mib(pid)
    responses = []
    for _ in range(n):
        response = await session.post(gateway.url, data=body, headers=gateway.headers)
        await response.content.readuntil(b"\n\n")  # message_start arrived: the stream is open
        responses.append(response)
    await asyncio.sleep(0.5)
    during = rss_mib(pid)
    for response in responses:
        response.close()
    return (during - before) * 1024 / n


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


async def measure(upstream_url: str, gateway_url: str, gateway_pid: int, quick: bool) -> dict:
    direct = Target("direct", upstream_url, "/v1/chat/completions",
                    {"model": "bench", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]},
                    {"Content-Type": "application/json"})
    gateway = Target("gateway", gateway_url, "/v1/messages",
                     {"model": "claude-bench", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]},
                     {"Content-Type": "application/json", "x-api-key": "bench-key-0123456789",
                      "anthropic-version": "2023-06-01"})
    n, seconds, rounds = (300, 2.0, 2) if quick else (2000, 6.0, 3)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu0 = cpu_seconds(gateway_pid)
        times = await latency(session, [direct, gateway], n)
        gateway_cpu_per_request = (cpu_seconds(gateway_pid) - cpu0) / (n + 50) * 1e6
        result: dict = {"latency_ms": {}}
        for name, values in times.items():
            result["latency_ms"][name] = {"p50": statistics.median(values), "p99": pct(values, 99)}
        result["added_latency_ms"] = {
            q: result["latency_ms"]["gateway"][q] - result["latency_ms"]["direct"][q] for q in ("p50", "p99")}
        result["gateway_cpu_us_per_request"] = gateway_cpu_per_request
        result["throughput_events_per_s"] = {}
        for pace, label in ((0.0, "unpaced"), (0.005, "paced_200_tok_s")):
            for concurrency in (1, 16):
                # Short alternating slices, so background load on a shared machine hits both alike.
                events = {"direct": 0, "gateway": 0}
                elapsed = {"direct": 0.0, "gateway": 0.0}
                gateway_cpu = 0.0
                for _ in range(rounds):
                    for target in (direct, gateway):
                        counter: dict = {}
                        cpu0, start = cpu_seconds(gateway_pid), time.perf_counter()
                        await throughput(session, target, concurrency, seconds / rounds, pace, counter)
                        elapsed[target.name] += time.perf_counter() - start
                        events[target.name] += counter["events"]
                        if target is gateway:
                            gateway_cpu += cpu_seconds(gateway_pid) - cpu0
                row = {name: events[name] / elapsed[name] for name in events}
                row["ratio"] = row["gateway"] / row["direct"]
                row["gateway_cpu_us_per_event"] = gateway_cpu / events["gateway"] * 1e6
                result["throughput_events_per_s"][f"{label}_c{concurrency}"] = row
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        result["memory_kib_per_open_stream"] = await memory_per_stream(session, gateway, gateway_pid,
                                                                       50 if quick else 200)
    return result


def print_table(result: dict) -> None:
    lat = result["latency_ms"]
    print(f"{'non-streaming latency (ms)':36} {'direct':>10} {'gateway':>10} {'added':>10}")
    for q in ("p50", "p99"):
        print(f"  {q:34} {lat['direct'][q]:10.3f} {lat['gateway'][q]:10.3f} {result['added_latency_ms'][q]:10.3f}")
    print(f"  gateway CPU per request: {result['gateway_cpu_us_per_request']:.0f} us")
    print(f"{'streaming content events/s':36} {'direct':>10} {'gateway':>10} {'ratio':>10} {'gw us/ev':>9}")
    for name, row in result["throughput_events_per_s"].items():
        print(f"  {name:34} {row['direct']:10.0f} {row['gateway']:10.0f} {row['ratio']:10.1%} "
              f"{row['gateway_cpu_us_per_event']:9.1f}")
    print(f"memory per open stream: {result['memory_kib_per_open_stream']:.1f} KiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                        help="the gateway's event loop (default: uvloop when installed)")
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    up_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    (tmp / "key").write_text("bench-key-0123456789\n")
    (tmp / "gw.json").write_text(json.dumps({
        "listen_port": gw_port, "upstream_url": f"http://127.0.0.1:{up_port}", "api_key_file": str(tmp / "key"),
        "local_model_id": "bench", "log_level": "warning", "max_upstream_connections": 256,
        "event_loop": args.event_loop}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = subprocess.Popen([sys.executable, __file__, "--role", "upstream", "--port", str(up_port)], env=env)
    gateway = subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", str(tmp / "gw.json")],
                               env=env, stderr=subprocess.DEVNULL)  # access log on, as in production
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{gw_port}/"))
        asyncio.run(wait_up(f"http://127.0.0.1:{up_port}/"))
        result = asyncio.run(measure(f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}",
                                     gateway.pid, args.quick))
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(10)
    result["environment"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "machine": platform.machine(), "quick": args.quick,
                             "gateway_event_loop": args.event_loop, "load_average": os.getloadavg(),
                             "tokens_per_stream": TOKENS, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print_table(result)
    out = ROOT / "bench" / "results" / f"gateway-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
