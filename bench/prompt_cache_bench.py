"""Prompt-cache benchmark: a Claude-Code-shaped session through the gateway vs. direct to llama-server.

Not a test (tests/bench/test_prompt_cache_real.py asserts the cache-hit ratio). Processes on
127.0.0.1: the cached static CPU llama-server with SmolLM2-135M (tests/services/llama_bin.py,
``provisioner.sim.assets``), the real gateway (``python -m provisioner.gateway``), and this client.

Per run, two sessions of the same turns (bench/claude_code_session.py), each with its own nonce
so they share no cached prefix, each in its own llama-server slot (``--parallel 2``; llama-server
gives a request the slot whose prompt it shares most of: tools/server/server-context.cpp:1541-1590):

- **gateway**: the Anthropic body to ``/v1/messages``; TTFT = the first ``content_block_start``;
- **direct**: the very body the gateway sends upstream for it (``translate_request``) to
  llama-server's ``/v1/chat/completions``; TTFT = the first chunk with generated content.

Turns are interleaved, the order alternating by turn and by run, so background load on a
shared machine hits both alike. The figures: per turn llama-server's ``cache_n`` / ``prompt_n``
(direct: its ``timings``; gateway: the usage the gateway reports, which is the same count) and
the median TTFT ratio gateway/direct. ``--header-kept`` adds a third session sent direct with
Claude Code's billing header left in the system prompt, as a proxy that does not strip it would
send it: the cache then misses on every turn.

    python bench/prompt_cache_bench.py [--runs 3] [--turns 8] [--max-tokens 8] [--header-kept]

Prints a table and writes ``bench/results/prompt-cache-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from claude_code_session import MAX_TURNS, session  # noqa: E402
from local_http import free_port, wait_http  # noqa: E402
from services.llama_bin import llama_server  # noqa: E402

from provisioner.gateway.translate_request import translate_request  # noqa: E402
from provisioner.sim import assets  # noqa: E402

KEY = "prompt-cache-bench-key"
MODEL = "smollm2"


def stream(port: int, path: str, body: dict, headers: dict[str, str]) -> tuple[float, list[dict]]:
    """POST, read the SSE body; (seconds to the first generated token, every data payload)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{path}: HTTP {resp.status}: {resp.read()[:500]!r}")
    first: float | None = None
    events = []
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        events.append(event)
        if first is None and _is_first_token(event):
            first = time.monotonic() - started
    conn.close()
    return (first if first is not None else time.monotonic() - started), events


def _is_first_token(event: dict) -> bool:
    if event.get("type") == "content_block_start":  # the gateway opens a block at its first token
        return True
    choices = event.get("choices") or []
    delta = choices[0].get("delta", {}) if choices else {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))


def gateway_turn(port: int, body: dict) -> dict[str, Any]:
    ttft, events = stream(port, "/v1/messages", body, {"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    usage = next(e["usage"] for e in events if e.get("type") == "message_delta")
    return {"ttft_s": ttft, "cache_n": usage["cache_read_input_tokens"], "prompt_n": usage["input_tokens"]}


def direct_turn(port: int, body: dict, *, keep_header: bool = False) -> dict[str, Any]:
    payload = translate_request(body, upstream_model=MODEL).payload
    if keep_header:  # as a proxy that forwards Claude Code's system prompt untouched would send it
        system = payload["messages"][0]
        system["content"] = body["system"][0]["text"] + "\n\n" + system["content"]
    ttft, events = stream(port, "/v1/chat/completions", payload, {"Authorization": f"Bearer {KEY}"})
    timings = next(e["timings"] for e in reversed(events) if "timings" in e)
    return {"ttft_s": ttft, "cache_n": timings["cache_n"], "prompt_n": timings["prompt_n"]}


def run(args: argparse.Namespace, llama_port: int, gateway_port: int) -> list[dict[str, Any]]:
    rows = []
    for r in range(args.runs):
        sessions = {"gateway": session(args.turns, nonce=f"gw{r}{os.getpid()}", max_tokens=args.max_tokens),
                    "direct": session(args.turns, nonce=f"dx{r}{os.getpid()}", max_tokens=args.max_tokens)}
        if args.header_kept:
            sessions["header_kept"] = session(args.turns, nonce=f"hk{r}{os.getpid()}", max_tokens=args.max_tokens)
        for t in range(args.turns):
            order = ["gateway", "direct"] if (t + r) % 2 == 0 else ["direct", "gateway"]
            if args.header_kept:
                order.append("header_kept")
            for path in order:
                body = sessions[path][t]
                result = (gateway_turn(gateway_port, body) if path == "gateway"
                          else direct_turn(llama_port, body, keep_header=path == "header_kept"))
                rows.append({"run": r, "turn": t + 1, "path": path, **result})
                print(f"run {r} turn {t + 1} {path:11} ttft {result['ttft_s']:6.2f} s  cache_n {result['cache_n']:5}"
                      f"  prompt_n {result['prompt_n']:5}", flush=True)
    return rows


def gateway_overhead(port: int) -> dict[str, float]:
    """From the gateway's own /metrics (``gateway_added_seconds``): of each TTFT, the time spent in the
    gateway rather than waiting for llama-server, measured inside the same requests, so the load of a
    shared machine, which swamps the TTFT ratio there, does not enter it."""
    from provisioner.gateway.metrics import parse

    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"x-api-key": KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        samples = {(n, tuple(sorted(labels.items()))): v for n, labels, v in parse(resp.read().decode())}
    p, stream = "provision_gateway_", (("stream", "true"),)
    added = [samples[(f"{p}gateway_added_seconds_{k}", stream)] for k in ("sum", "count")]
    ttft = [samples[(f"{p}time_to_first_token_seconds_{k}", (("model", MODEL), *stream))] for k in ("sum", "count")]
    return {"requests": added[1], "mean_added_ms": added[0] / added[1] * 1000, "mean_ttft_s": ttft[0] / ttft[1],
            "added_share": added[0] / ttft[0]}


def summarise(rows: list[dict[str, Any]], turns: int) -> dict[str, Any]:
    def cell(path: str, turn: int, key: str) -> list[float]:
        return [r[key] for r in rows if r["path"] == path and r["turn"] == turn]

    table = []
    for turn in range(1, turns + 1):
        gw, dx = cell("gateway", turn, "ttft_s"), cell("direct", turn, "ttft_s")
        ratios = [g / d for g, d in zip(gw, dx)]
        entry = {"turn": turn, "gateway_ttft_s": statistics.median(gw), "direct_ttft_s": statistics.median(dx),
                 "ttft_ratio": statistics.median(ratios),
                 "prompt_tokens": cell("direct", turn, "cache_n")[0] + cell("direct", turn, "prompt_n")[0],
                 "gateway_cache_n": cell("gateway", turn, "cache_n")[0],
                 "direct_cache_n": cell("direct", turn, "cache_n")[0]}
        if any(r["path"] == "header_kept" for r in rows):
            entry["header_kept_ttft_s"] = statistics.median(cell("header_kept", turn, "ttft_s"))
            entry["header_kept_cache_n"] = cell("header_kept", turn, "cache_n")[0]
        table.append(entry)
    later = [r for r in table if r["turn"] > 1]
    totals = {r["turn"]: r["cache_n"] + r["prompt_n"] for r in rows if r["path"] == "gateway" and r["run"] == 0}
    reuse = [cur["gateway_cache_n"] / totals[prev["turn"]] for prev, cur in zip(table, table[1:])]
    return {"turns": table,
            "ttft_ratio_median_all": statistics.median(r["ttft_ratio"] for r in table),
            "ttft_ratio_median_turn2_on": statistics.median(r["ttft_ratio"] for r in later) if later else None,
            "min_reuse_of_previous_prompt": min(reuse) if reuse else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--turns", type=int, default=MAX_TURNS, choices=range(2, MAX_TURNS + 1))
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--header-kept", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prompt-cache-bench-"))
    (tmp / "key").write_text(KEY + "\n")
    llama_port, gateway_port = free_port(), free_port()
    slots = 3 if args.header_kept else 2
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(llama_server()), "-m", str(assets.smollm2_model()), "--alias", MODEL, "--host", "127.0.0.1",
             "--port", str(llama_port), "-c", str(8192 * slots), "--parallel", str(slots), "--no-kv-unified",
             # no host-RAM prompt cache: saving a slot there would cost one path time the other does not pay
             "--cache-ram", "0", "--threads", "2", "--api-key-file", str(tmp / "key")],
            stdout=open(tmp / "llama.log", "w"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{llama_port}/health", procs[-1], 120)
        (tmp / "gw.json").write_text(json.dumps({
            "listen_port": gateway_port, "upstream_url": f"http://127.0.0.1:{llama_port}/v1",
            "api_key_file": str(tmp / "key"), "upstream_api_key_file": str(tmp / "key"), "local_model_id": MODEL}))
        procs.append(subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", str(tmp / "gw.json")],
                                      stdout=open(tmp / "gateway.log", "w"), stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}))
        wait_http(f"http://127.0.0.1:{gateway_port}/health", procs[-1], 60)
        rows = run(args, llama_port, gateway_port)
        inside = gateway_overhead(gateway_port)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
    summary = summarise(rows, args.turns)
    summary["gateway_inside"] = inside
    print("\nturn  prompt  gateway cache_n  direct cache_n  gateway TTFT  direct TTFT  ratio"
          + ("  header-kept cache_n / TTFT" if args.header_kept else ""))
    for t in summary["turns"]:
        extra = (f"  {t['header_kept_cache_n']:7} / {t['header_kept_ttft_s']:6.2f} s" if args.header_kept else "")
        print(f"{t['turn']:4}  {t['prompt_tokens']:6}  {t['gateway_cache_n']:15}  {t['direct_cache_n']:14}"
              f"  {t['gateway_ttft_s']:10.2f} s  {t['direct_ttft_s']:9.2f} s  {t['ttft_ratio']:.3f}{extra}")
    print(f"median TTFT ratio gateway/direct: all turns {summary['ttft_ratio_median_all']:.3f}, "
          f"turn 2 on {summary['ttft_ratio_median_turn2_on']:.3f}; "
          f"least reuse of the previous prompt {summary['min_reuse_of_previous_prompt']:.1%}")
    print(f"inside the gateway ({inside['requests']:.0f} requests): {inside['mean_added_ms']:.2f} ms of a mean TTFT of "
          f"{inside['mean_ttft_s']:.2f} s ({inside['added_share']:.4%})")
    out = ROOT / "bench" / "results" / f"prompt-cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "load_average": os.getloadavg(), "rows": rows,
                               "summary": summary}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
