"""Check the gateway against a real llama-server, with the official anthropic SDK.

Not collected by pytest (it needs a running llama-server); run it by hand:

    llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf --host 127.0.0.1 --port 18080 -c 4096 -np 2 --jinja &
    python tests/gateway/real_llama_check.py http://127.0.0.1:18080

It starts ``provision-gateway`` in translate and in native mode against that
server and checks streaming, prompt-cache accounting, non-streaming, stop
sequences, max_tokens, count_tokens (equal to the input tokens of a real run),
a tool round trip in OpenAI order, and the "prompt is too long" mapping. Exit
status 0 when every check passed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import requests

SYSTEM = "You are terse."
QUESTION = [{"role": "user", "content": "Say hello in three words."}]
TOOLS = [{"name": "get_weather", "description": "Get the weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(mode: str, client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude-sonnet-x", max_tokens=40, system=SYSTEM, messages=QUESTION) as s:
        first = s.get_final_message()
    assert first.model == "claude-sonnet-x" and first.stop_reason in ("end_turn", "max_tokens"), first
    assert first.content and first.content[0].type == "text"
    with client.messages.stream(model="claude-sonnet-x", max_tokens=40, system=SYSTEM, messages=QUESTION) as s:
        again = s.get_final_message()
    assert again.usage.cache_read_input_tokens > 0, "the prompt cache was not reported"
    total = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    counted = client.messages.count_tokens(model="claude-x", system=SYSTEM, messages=QUESTION).input_tokens
    assert counted == total, (counted, total)
    short = client.messages.create(model="claude-x", max_tokens=5,
                                   messages=[{"role": "user", "content": "Tell me a long story."}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 5, short
    stopped = client.messages.create(model="claude-x", max_tokens=60, stop_sequences=["e"],
                                     messages=[{"role": "user", "content": "Write a sentence about trees."}])
    if stopped.stop_reason == "stop_sequence":
        assert stopped.stop_sequence == "e" and "e" not in stopped.content[0].text, stopped
    answer = client.messages.create(model="claude-x", max_tokens=30, tools=TOOLS, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny, 21C"},
                                     {"type": "text", "text": "Answer briefly."}]}])
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use"), answer
    try:
        client.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "word " * 5000}])
    except anthropic.BadRequestError as exc:
        assert exc.body["error"]["message"].startswith("prompt is too long: "), exc.body
    else:
        raise AssertionError("an over-long prompt was accepted")
    print(f"{mode}: ok (stream {first.usage.output_tokens} tokens, cache read {again.usage.cache_read_input_tokens}, "
          f"count_tokens {counted}, stop {stopped.stop_reason})")


def main() -> int:
    upstream = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18080"
    failures = 0
    for mode in ("translate", "native"):
        port = free_port()
        config = Path(tempfile.mkdtemp()) / "gw.json"
        config.write_text(json.dumps({"listen_port": port, "upstream_url": upstream, "mode": mode,
                                      "local_model_id": "local"}))
        proc = subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", str(config)],
                                stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            check(mode, anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0))
        except AssertionError as exc:
            failures += 1
            print(f"{mode}: FAILED {exc}")
        finally:
            proc.terminate()
            proc.wait(10)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
