"""Bounded load: 64 concurrent streams for ~10 s, then upstream down and back.

Checks: no errors, every stream complete, no leaked sockets/fds, stable memory,
and the mapped errors (502 while down, 529 while busy) followed by recovery.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from gw_harness import API_KEY
from gw_scripted_upstream import text_script

CONCURRENCY = 64
SECONDS = float(os.environ.get("GATEWAY_LOAD_SECONDS", "10"))
BODY = {"model": "claude-x", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "go"}]}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def one_stream(session: aiohttp.ClientSession, url: str) -> tuple[int, bool, int]:
    async with session.post(url + "/v1/messages", json=BODY, headers=HEADERS) as response:
        body = await response.read()
    return response.status, body.rstrip().endswith(b'{"type":"message_stop"}'), body.count(b"text_delta")


async def run_load(url: str, seconds: float) -> dict:
    results = {"ok": 0, "bad": []}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                status, complete, deltas = await one_stream(session, url)
                if status == 200 and complete and deltas == 20:
                    results["ok"] += 1
                else:
                    results["bad"].append((status, complete, deltas))
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


async def statuses(url: str, n: int) -> list[int]:
    async with aiohttp.ClientSession() as session:
        async def one() -> int:
            async with session.post(url + "/v1/messages", json=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status
        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_64_concurrent_streams_no_errors_no_leaks(make_gw):
    gw = make_gw(max_upstream_connections=CONCURRENCY)
    script = text_script([f"tok{i} " for i in range(20)])
    for _ in range(100_000):
        gw.upstream.scripts.append(script)
    warm = asyncio.run(run_load(gw.url, 1.0))
    assert warm["bad"] == []
    fds_before, rss_before = open_fds(), rss_mb()
    result = asyncio.run(run_load(gw.url, SECONDS))
    time.sleep(0.5)
    fds_after, rss_after = open_fds(), rss_mb()
    print(f"\nload: {result['ok']} streams in {SECONDS:.0f} s at concurrency {CONCURRENCY}; "
          f"fds {fds_before}->{fds_after}; RSS {rss_before:.1f}->{rss_after:.1f} MiB")
    assert result["bad"] == [] and result["ok"] >= CONCURRENCY
    assert fds_after <= fds_before + 4, "sockets leaked"
    assert rss_after - rss_before < 10, "memory grew under load"
    assert gw.upstream.disconnects == 0

    gw.upstream.scripts.clear()
    port = gw.upstream.port
    gw.loop.call(gw.upstream.stop())
    assert set(asyncio.run(statuses(gw.url, 16))) == {502}
    gw.loop.call(gw.upstream.start(port))
    for _ in range(16):
        gw.upstream.scripts.append([("status", 503, {"error": {"code": 503, "message": "server busy"}})])
    assert set(asyncio.run(statuses(gw.url, 16))) == {529}
    assert set(asyncio.run(statuses(gw.url, 16))) == {200}
    assert open_fds() <= fds_after + 4
