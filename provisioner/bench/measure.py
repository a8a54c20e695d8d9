"""The measurement itself: runs where llama-server is reachable (in the container), stdlib only.

``provision bench`` ships this file's source to the container and runs it with the
gateway venv's Python (or the system ``python3``), so it imports nothing from the
package and nothing outside the standard library. Input: a JSON file of parameters
(``argv[1]``; no secrets in it, only the paths of the key files, read here so a key
never travels or lands on a command line). Output on stdout: ``status <text>`` lines
while it works, then one ``result <json>`` line; on failure ``error <text>`` and exit 1.

Per run it sends the same coding-agent prompt (with its own nonce at the very start,
so no request reuses another's prompt cache) once directly to llama-server
(``/v1/chat/completions``, streaming, the body the gateway itself would send upstream;
the server's ``timings`` block gives prompt and generation speed) and once through the gateway
(``/v1/messages``, streaming; time to first token and generation speed from the
event timestamps and ``usage``). The order alternates between runs so a drift in
clock or temperature does not always favour one path. Run 0 is a warm-up, reported
apart and left out of the statistics.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any
import urllib.parse
from urllib.parse import urlsplit


class BenchError(Exception):
    pass


def read_key(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip() or None
    except OSError as exc:
        raise BenchError(f"cannot read the key file {path}: {exc.strerror}") from None


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout), parts.path.rstrip("/")


def get_json(url: str, path: str, headers: dict[str, str], timeout: float = 30) -> Any:
    conn, base = _connect(url, timeout)
    try:
        conn.request("GET", base + path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        return json.loads(body)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def sse_post(url: str, path: str, headers: dict[str, str], body: dict[str, Any], timeout: float):
    """POST and yield ``(monotonic time, event data as dict)`` for each SSE ``data:`` line."""
    conn, base = _connect(url, timeout)
    try:
        conn.request("POST", base + path, body=json.dumps(body).encode(),
                     headers={**headers, "content-type": "application/json", "accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(600).decode("utf-8", "replace").strip()
            raise BenchError(f"POST {path} answered HTTP {resp.status}: {text}")
        while True:
            line = resp.readline()
            if not line:
                return
            now = time.monotonic()
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                yield now, json.loads(data)
            except ValueError:
                continue
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"POST {url}{path} failed: {exc}") from None
    finally:
        conn.close()


def nonce_system(system: str) -> str:
    """The system prompt behind a fresh nonce: the first tokens differ, so no cached prefix is reused."""
    return f"Session {secrets.token_hex(8)}.\n{system}"


def tg_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Tokens per second after the first token (its time is the prefill's), client-side."""
    if tokens < 2 or first is None or last is None or last <= first:
        return None
    return (tokens - 1) / (last - first)


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t.get("input_schema", {"type": "object"})}}
            for t in tools]


def run_direct(p: dict[str, Any], key: str | None) -> dict[str, Any]:
    prompt = p["prompt"]
    body: dict[str, Any] = {
        "model": p.get("model_id") or "local",
        "messages": [{"role": "system", "content": nonce_system(prompt["system"])},
                     {"role": "user", "content": prompt["user"]}],
        "max_tokens": p["gen_tokens"], "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }
    if prompt.get("tools"):
        # what the gateway sends upstream for the same Anthropic request, so the two paths differ
        # by the gateway only (no cache_prompt/ignore_eos: the gateway cannot send them either)
        body["tools"] = openai_tools(prompt["tools"])
        body["parallel_tool_calls"] = True
    headers = {"authorization": f"Bearer {key}"} if key else {}
    t0 = time.monotonic()
    first = last = None
    timings: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    for now, ev in sse_post(p["llama_url"], "/v1/chat/completions", headers, body, p["timeout"]):
        for choice in ev.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                first = first if first is not None else now
                last = now
        timings = ev.get("timings") or timings
        usage = ev.get("usage") or usage
    t_end = time.monotonic()
    if not timings:
        raise BenchError("llama-server sent no `timings` block (is it llama.cpp's llama-server?)")
    out_n = int(timings.get("predicted_n") or usage.get("completion_tokens") or 0)
    return {
        "ttft_s": None if first is None else first - t0,
        "wall_s": t_end - t0,
        "prompt_tokens": int(usage.get("prompt_tokens") or timings.get("prompt_n") or 0),
        "prompt_n": int(timings.get("prompt_n") or 0),
        "cache_n": int(timings.get("cache_n") or 0),
        "prompt_ms": float(timings.get("prompt_ms") or 0.0),
        "pp_tps": float(timings.get("prompt_per_second") or 0.0),
        "output_tokens": out_n,
        "predicted_ms": float(timings.get("predicted_ms") or 0.0),
        "tg_tps": float(timings.get("predicted_per_second") or 0.0),
        "tg_tps_client": tg_rate(out_n, first, last),
    }


def run_gateway(p: dict[str, Any], key: str | None) -> dict[str, Any]:
    prompt = p["prompt"]
    body: dict[str, Any] = {
        "model": p.get("model_id") or "local", "max_tokens": p["gen_tokens"], "temperature": 0, "stream": True,
        "system": nonce_system(prompt["system"]), "messages": [{"role": "user", "content": prompt["user"]}],
    }
    if prompt.get("tools"):
        body["tools"] = prompt["tools"]
    headers = {"anthropic-version": "2023-06-01"}
    if key:
        headers["x-api-key"] = key
    t0 = time.monotonic()
    first = last = None
    usage: dict[str, Any] = {}
    stop = None
    for now, ev in sse_post(p["gateway_url"], "/v1/messages", headers, body, p["timeout"]):
        kind = ev.get("type")
        if kind == "message_start":
            usage.update((ev.get("message") or {}).get("usage") or {})
        elif kind == "content_block_delta":
            first = first if first is not None else now
            last = now
        elif kind == "message_delta":
            usage.update(ev.get("usage") or {})
            stop = (ev.get("delta") or {}).get("stop_reason") or stop
        elif kind == "error":
            raise BenchError(f"the gateway's stream ended in an error: {json.dumps(ev.get('error'))[:400]}")
    t_end = time.monotonic()
    ttft = None if first is None else first - t0
    inp = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cache_read_input_tokens") or 0)
    out_n = int(usage.get("output_tokens") or 0)
    return {
        "ttft_s": ttft,
        "wall_s": t_end - t0,
        "prompt_tokens": inp + cached,
        "cache_n": cached,
        # as a client sees it: every prompt token over the time to the first token
        "pp_tps": (inp + cached) / ttft if ttft else None,
        "output_tokens": out_n,
        "tg_tps_client": tg_rate(out_n, first, last),
        "stop_reason": stop,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def one_run(p: dict[str, Any], index: int, keys: dict[str, str | None]) -> dict[str, Any]:
    paths = ["direct", "gateway"] if p.get("gateway_url") else ["direct"]
    if index % 2 == 1:
        paths.reverse()
    row: dict[str, Any] = {"run": index, "order": paths}
    for path in paths:
        row[path] = run_direct(p, keys["llama"]) if path == "direct" else run_gateway(p, keys["gateway"])
    if "gateway" in row:
        d, g = row["direct"], row["gateway"]
        row["overhead"] = {"ttft_ratio": ratio(g["ttft_s"], d["ttft_s"]),
                           # the whole request, when both generated as many tokens (else None)
                           "wall_ratio": ratio(g["wall_s"], d["wall_s"])
                           if g["output_tokens"] == d["output_tokens"] else None,
                           "tg_ratio": ratio(g["tg_tps_client"], d["tg_tps_client"]),
                           "ttft_added_s": None if g["ttft_s"] is None or d["ttft_s"] is None
                           else g["ttft_s"] - d["ttft_s"]}
    return row


def _run_cmd(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def environment(p: dict[str, Any], key: str | None) -> dict[str, Any]:
    """What was measured: llama-server's build and settings, the model, the GPU(s), the unit's flags."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    # router mode (several models): /props answers for the model named in ?model=
    # (tools/server/server-models.cpp get_router_props), /v1/models lists them all
    model = p.get("model_id") or ""
    router = bool(p.get("router"))
    props = get_json(p["llama_url"], "/props" + (f"?model={urllib.parse.quote(model)}" if router else ""),
                     headers) or {}
    models = get_json(p["llama_url"], "/v1/models", headers) or {}
    listed = [m for m in models.get("data") or [] if isinstance(m, dict)]
    entry = next((m for m in listed if m.get("id") == model), None) if router else None
    meta = ((entry or (listed[0] if listed else {})) or {}).get("meta") or {}
    env: dict[str, Any] = {
        "llama_build_info": props.get("build_info"),
        "model_path": props.get("model_path"),
        "model_alias": props.get("model_alias"),
        "n_ctx": (props.get("default_generation_settings") or {}).get("n_ctx"),
        "total_slots": props.get("total_slots"),
        "model_params": meta.get("n_params"),
        "model_size_bytes": meta.get("size"),
        "model_ftype": props.get("model_ftype"),
        "gpus": [],
    }
    smi = _run_cmd(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader,nounits"])
    for line in (smi or "").splitlines():
        name, _, rest = line.partition(",")
        mem, _, driver = rest.partition(",")
        if name.strip():
            env["gpus"].append({"name": name.strip(), "memory_mib": int(mem) if mem.strip().isdigit() else None,
                                "driver": driver.strip() or None})
    stamp = p.get("build_stamp")
    if stamp and os.path.exists(stamp):
        try:
            with open(stamp, encoding="utf-8") as fh:
                env["llama_build"] = json.load(fh)
        except (OSError, ValueError):
            pass
    unit = p.get("unit_file")
    if unit and os.path.exists(unit):
        with open(unit, encoding="utf-8") as fh:
            text = fh.read().replace("\\\n", " ")  # systemd's line continuations
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                env["server_command"] = mask_flags(line[len("ExecStart="):].strip())
    return env


SECRET_FLAGS = ("--api-key", "--hf-token", "-hft")


def mask_flags(command: str) -> str:
    """The command line with the values of secret flags replaced, before it leaves this process."""
    words = command.split()
    for i, word in enumerate(words):
        flag, eq, _ = word.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                words[i] = f"{flag}=********"
            elif i + 1 < len(words):
                words[i + 1] = "********"
    return " ".join(words)


def status(text: str) -> None:
    print(f"status {text}", flush=True)


def main(p: dict[str, Any]) -> dict[str, Any]:
    keys = {"llama": read_key(p.get("llama_key_file")), "gateway": read_key(p.get("gateway_key_file"))}
    env = environment(p, keys["llama"])
    if not env.get("n_ctx") and get_json(p["llama_url"], "/health", {}) is None:
        raise BenchError(f"llama-server does not answer at {p['llama_url']}")
    runs = []
    total = p["runs"] + p["warmup"]
    for i in range(total):
        label = "warm-up" if i < p["warmup"] else f"run {i - p['warmup'] + 1}/{p['runs']}"
        status(f"{label}: prompt ~{p['prompt'].get('approx_tokens', '?')} tokens, {p['gen_tokens']} to generate")
        row = one_run(p, i, keys)
        row["warmup"] = i < p["warmup"]
        runs.append(row)
    return {"environment": env, "runs": runs}


def _cli(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as fh:
        params = json.load(fh)
    try:
        result = main(params)
    except BenchError as exc:
        print(f"error {exc}", flush=True)
        return 1
    print("result " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv))
