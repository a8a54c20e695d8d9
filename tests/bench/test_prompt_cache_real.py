"""Issue 19: prompt-cache reuse proven on real turns, with the real llama-server and model.

A Claude-Code-shaped session (bench/claude_code_session.py: the billing header changing on
every request, a growing history of tool calls and results, the cache_control breakpoint
moving) goes through the real gateway (``python -m provisioner.gateway``, as systemd runs it)
to the cached static CPU llama-server with SmolLM2-135M. Between the two sits a recording
proxy that reads llama-server's *own* ``timings`` off each streamed answer, so the figures are
the server's, not the gateway's: from turn 2 on at least 95 % of the previous turn's prompt
must come from the cache (``cache_n``), and what the gateway reports as usage must equal them.

The gateway is configured with the ``/v1`` form of the upstream URL and no model id (so it
learns llama-server's ``--alias``): both issue-19 configuration points, on the real server.
The TTFT comparison is a benchmark (bench/prompt_cache_bench.py), not a timed test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import pytest
from aiohttp import ClientSession, web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from claude_code_session import session  # noqa: E402
from local_http import free_port, wait_http
from services.llama_bin import llama_server  # noqa: E402

from provisioner.sim import assets  # noqa: E402

TURNS = 5  # grows to ~3,400 tokens: about 80 s of CPU prefill on the 2-core machine
LLAMA_KEY = "cache-llama-key-30d9a1"
GATEWAY_KEY = "cache-gateway-key-8c21f0"




class TimingsProxy:
    """Forwards everything to llama-server; keeps each chat completion's body and its ``timings``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[tuple[dict, dict | None]] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/octet-stream")})
            await response.prepare(request)
            timings, rest = None, b""
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.startswith(b"data: {") and b'"timings"' in line:
                        timings = json.loads(line[6:])["timings"]
            if request.path == "/v1/chat/completions":
                self.seen.append((json.loads(body), timings))
            return response

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def cache_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache-stack")
    (tmp / "llama.key").write_text(LLAMA_KEY + "\n")
    (tmp / "gateway.key").write_text(GATEWAY_KEY + "\n")
    llama_port, gateway_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    proxy = None
    try:
        llog = tmp / "llama.log"
        with open(llog, "w") as fh:
            procs.append(subprocess.Popen(
                [str(llama_server()), "-m", str(assets.smollm2_model()), "--alias", "smollm2", "--host", "127.0.0.1",
                 "--port", str(llama_port), "-c", "8192", "--parallel", "1", "--threads", "2",
                 "--api-key-file", str(tmp / "llama.key")], stdout=fh, stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{llama_port}/health", procs[-1], 120, llog)
        proxy = TimingsProxy(f"http://127.0.0.1:{llama_port}")
        conf = tmp / "gateway.json"
        conf.write_text(json.dumps({"listen_port": gateway_port, "upstream_url": f"http://127.0.0.1:{proxy.port}/v1",
                                    "api_key_file": str(tmp / "gateway.key"),
                                    "upstream_api_key_file": str(tmp / "llama.key")}))
        glog = tmp / "gateway.log"
        with open(glog, "w") as fh:
            procs.append(subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", str(conf)],
                                          stdout=fh, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)}))
        wait_http(f"http://127.0.0.1:{gateway_port}/health", procs[-1], 60, glog)
        yield f"http://127.0.0.1:{gateway_port}", proxy
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        if proxy is not None:
            proxy.close()


def test_each_turn_reuses_the_previous_turns_prompt_from_llama_servers_cache(cache_stack):
    url, proxy = cache_stack
    client = anthropic.Anthropic(base_url=url, api_key=GATEWAY_KEY, max_retries=0, timeout=300)
    deadline = time.monotonic() + 10
    while client.models.list().data[0].id != "smollm2":  # learnt from llama-server's /v1/models
        assert time.monotonic() < deadline, "the gateway did not learn the upstream's model id"
        time.sleep(0.2)
    usages = []
    for body in session(TURNS, nonce="t19cache", max_tokens=4):
        kwargs = {k: v for k, v in body.items() if k != "stream"}
        started = time.monotonic()
        with client.messages.stream(**kwargs) as stream:
            usages.append(stream.get_final_message().usage)
        print(f"turn {len(usages)}: {time.monotonic() - started:.1f} s")
    assert len(proxy.seen) == TURNS and all(t is not None for _, t in proxy.seen)
    rows = []
    for turn, ((sent, timings), usage) in enumerate(zip(proxy.seen, usages), 1):
        total = timings["cache_n"] + timings["prompt_n"]
        rows.append((turn, total, timings["cache_n"], timings["prompt_n"]))
        # what the gateway tells the client is llama-server's own count
        assert (usage.cache_read_input_tokens, usage.input_tokens) == (timings["cache_n"], timings["prompt_n"])
        assert sent["model"] == "smollm2"
        system = sent["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You are Claude Code")
    print("\nturn  prompt  cache_n  prompt_n  reused-of-previous")
    for (turn, total, cached, processed), prev in zip(rows, [None, *rows]):
        share = f"{cached / prev[1]:.1%}" if prev else "-"
        print(f"{turn:4}  {total:6}  {cached:7}  {processed:8}  {share}")
    assert rows[-1][1] > 3000, "the session should grow to a few thousand tokens"
    for prev, cur in zip(rows, rows[1:]):
        assert cur[2] >= 0.95 * prev[1], f"turn {cur[0]}: {cur[2]} of the previous {prev[1]} tokens from the cache"


def test_structured_output_on_the_real_server(cache_stack):
    """Issue 19.4 on llama-server itself: the schema constrains the answer; one it cannot express is a 400."""
    url, _ = cache_stack
    client = anthropic.Anthropic(base_url=url, api_key=GATEWAY_KEY, max_retries=0, timeout=300)
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Bern", "Paris"]},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    message = client.messages.create(model="claude-x", max_tokens=40, output_config={
        "format": {"type": "json_schema", "schema": schema}},
        messages=[{"role": "user", "content": "Is it sunny in Paris? Answer in JSON."}])
    answer = json.loads(message.content[0].text)
    assert set(answer) == {"city", "sunny"} and answer["city"] in ("Bern", "Paris")
    assert isinstance(answer["sunny"], bool)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-x", max_tokens=8, output_config={
            "format": {"type": "json_schema", "schema": {"$ref": "#/$defs/missing"}}},
            messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["message"].startswith(
        "the model server cannot express a JSON schema of this request as a grammar")
