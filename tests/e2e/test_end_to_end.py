"""The whole mission on the simulated node, the way a user runs it (issue 8).

`provision sim start`, then `provision up inventories/sim.yaml`: a real LXC container,
the simulated GPU passed through, the driver userspace pinned from the simulated NVIDIA
repository, a real CPU build of llama-server from the llama.cpp tree of the
llama-cpp-python 0.3.36 sdist, two models behind one endpoint (SmolLM2-135M for Claude Code's
main slot, Gemma 3 270M for its background slot: llama-server's router mode), both units
started. Then real clients against the live services: the anthropic SDK (streaming and a
tool-use round trip) through the gateway, the openai SDK straight to llama-server, Claude
Code's CLI through the gateway with the settings `provision clients` wrote (its main slot and
its haiku name each reach their model); a second `up` that
changes nothing; a host driver upgrade that the container follows; a clean doctor.

The tests of this module run in order and share one node; phase times are written to
bench/results/e2e_phases.json and printed (the CI log shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from provision_cli import last_json, provision_cli

# the first test carries the first `up` (a llama.cpp build: ~5 min idle, longer on a busy machine)
pytestmark = [pytest.mark.sim, pytest.mark.e2e, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "sim.yaml"
SIM_ROOT = Path("/var/lib/provision-sim/pve")
VMID = 200
CT_IP = "10.0.3.200"
PHASES: dict[str, float] = {}


def provision(*args: str, env: dict | None = None, timeout: float = 3000, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    return provision_cli(*args, check=check, timeout=timeout, env=env)


def host(cmd: str) -> str:
    """A command on the simulated host, over its real SSH."""
    proc = subprocess.run(["ssh", "-i", str(SIM_ROOT / "ssh/id_ed25519"), "-o",
                           f"UserKnownHostsFile={SIM_ROOT / 'ssh/known_hosts'}", "-o", "BatchMode=yes",
                           "-p", "2222", "root@127.0.0.1", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def node():
    from provisioner.sim import assets

    t0 = time.monotonic()
    provision("sim", "stop", check=False)
    provision("sim", "start")
    assets.llama_source()
    assets.smollm2_model()
    assets.gemma3_model()
    PHASES["sim node + assets"] = time.monotonic() - t0
    yield SIM_ROOT
    out = ROOT / "bench" / "results" / "e2e_phases.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({k: round(v, 1) for k, v in PHASES.items()}, indent=2))
    print("\nend-to-end phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in PHASES.items()))
    provision("sim", "stop", check=False)


@pytest.fixture(scope="module")
def deployed(node) -> dict:
    t0 = time.monotonic()
    report = last_json(provision("--json", "up", str(INVENTORY), "--yes"))
    PHASES["first up (total)"] = time.monotonic() - t0
    for step, seconds in report["timings"].items():
        PHASES[f"first up: {step}"] = seconds
    return report


@pytest.fixture(scope="module")
def keys(deployed) -> dict[str, str]:
    return {"gateway": host(f"pct exec {VMID} -- cat /etc/provision/gateway.key").strip(),
            "server": host(f"pct exec {VMID} -- cat /etc/provision/llama-server.key").strip()}


def test_first_up_built_everything(deployed: dict) -> None:
    steps = {c["step"] for c in deployed["applied"]}
    # (the gpu.host step may have nothing to do: the host's boot unit can already be in place)
    assert {"container", "driver", "llama", "model", "services", "verify"} <= steps, steps
    assert host(f"pct exec {VMID} -- systemctl is-active llama-server provision-gateway").split() == \
        ["active", "active"]
    conf = host(f"cat /etc/pve/lxc/{VMID}.conf")
    assert "/dev/nvidia0" in conf and "/dev/nvidia-uvm" in conf
    version = host(f"pct exec {VMID} -- /opt/provision/llama.cpp/current/bin/llama-server --version 2>&1")
    assert "b11312" in version or "version" in version


def test_driver_userspace_is_the_host_version(deployed: dict) -> None:
    smi = host(f"pct exec {VMID} -- nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert smi.strip() == "580.95.05"
    held = host(f"pct exec {VMID} -- apt-mark showhold")
    assert "libcuda1" in held


def test_anthropic_sdk_streams_through_the_gateway(keys: dict) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=f"http://{CT_IP}:4000", api_key=keys["gateway"], max_retries=0,
                                 timeout=300)
    t0 = time.monotonic()
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=24,
                                messages=[{"role": "user", "content": "Say hello in one short sentence."}]) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    PHASES["anthropic stream"] = time.monotonic() - t0
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.content and final.content[0].type == "text" and final.content[0].text.strip()
    assert final.usage.output_tokens > 0


def test_tool_use_round_trip(keys: dict) -> None:
    """tools → tool_use → tool_result → final answer, at the protocol level, against the real backend.

    SmolLM2's chat template has no tool support, so llama-server does not constrain a forced
    tool call and the tiny model answers in text: the gateway answers that forced request with an
    Anthropic invalid_request_error naming the template (issue 20 point 11; it used to pass the text
    on), and the round trip replays the assistant's tool_use turn as a client would. (The gateway's
    translation of model-emitted tool calls, fragments, interleaving and stop reasons is proven
    against the scripted upstream in tests/gateway.)
    """
    import anthropic

    client = anthropic.Anthropic(base_url=f"http://{CT_IP}:4000", api_key=keys["gateway"], max_retries=0,
                                 timeout=300)
    tools = [{"name": "get_weather", "description": "Get the weather for a city.",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}]
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    try:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, tools=tools, messages=messages,
                                    tool_choice={"type": "tool", "name": "get_weather"}) as s:
            forced = s.get_final_message()
    except anthropic.APIStatusError as exc:  # the template ignored the forced choice: said, not text
        assert "chat template cannot honour a forced tool choice" in str(exc), exc
    else:  # the model happened to emit the call itself
        assert forced.stop_reason == "tool_use" and any(b.type == "tool_use" for b in forced.content), forced
    messages += [{"role": "assistant", "content": [
                     {"type": "text", "text": "Let me check."},
                     {"type": "tool_use", "id": "toolu_e2e_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": "toolu_e2e_1", "content": "Sunny, 21 °C"},
                     {"type": "text", "text": "Now answer in one sentence."}]}]
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=32, tools=tools, messages=messages) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert final.content and final.usage.output_tokens > 0


def test_openai_sdk_directly_against_llama_server(keys: dict) -> None:
    import openai

    client = openai.OpenAI(base_url=f"http://{CT_IP}:8080/v1", api_key=keys["server"], max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="smollm2-135m", max_tokens=16,
                                           messages=[{"role": "user", "content": "Say hi."}])
    assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://{CT_IP}:8080/v1", api_key="wrong", max_retries=0).models.list()


def _claude_binary() -> str:
    from provisioner.sim import assets

    return os.environ.get("PROVISION_TEST_CLAUDE") or str(assets.claude_code())


def _gateway_models(since: float) -> list[str]:
    """The models requested of the gateway's /v1/messages since ``since`` (its access log in the journal)."""
    out = host(f"pct exec {VMID} -- journalctl -u provision-gateway -o cat --no-pager --since @{int(since) - 1}")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # ts is when a request ended: a request of an earlier run ended before ``since``
    return [r["model"] for r in records if r.get("path") == "/v1/messages" and r.get("ts", 0) >= since]


def _claude(home: Path, cwd: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    proc = subprocess.run([_claude_binary(), "-p", "Reply with the single word: pong", *extra, "--output-format",
                           "stream-json", "--verbose"], capture_output=True, text=True, timeout=900, cwd=cwd,
                          env={"PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "16",
                               "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    texts = [block.get("text", "") for e in events if e.get("type") == "assistant"
             for block in e["message"].get("content", []) if block.get("type") == "text"]
    answers = [t for t in texts if t.strip() and not t.startswith("API Error")]
    errors = [t for t in texts if t.startswith("API Error")]
    # The model's own words reached Claude Code through the gateway, streamed and well-formed.
    assert answers, proc.stderr[-3000:] + proc.stdout[-3000:]
    # A tiny model on a CPU may not finish within 16 tokens: Claude Code then asks it to resume a few
    # times and gives up with its output-limit error. That is the only failure accepted here.
    if proc.returncode != 0 or errors:
        assert errors and all("output token maximum" in e for e in errors), errors or proc.stderr[-3000:]
    return proc, answers, errors


def test_claude_code_answers_through_the_gateway(deployed: dict, tmp_path: Path) -> None:
    """Claude Code with the settings `provision clients` wrote: its main slot reaches SmolLM2, and its
    haiku name (what it uses for background work: ANTHROPIC_DEFAULT_HAIKU_MODEL) reaches Gemma 3."""
    home = tmp_path / "home"
    home.mkdir()
    written = provision("clients", str(INVENTORY), "--write", env={"HOME": str(home)})
    settings_path = home / ".config/provision/clients/claude-code/settings.json"
    assert settings_path.exists(), written.stderr
    settings = json.loads(settings_path.read_text())
    env = settings["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://{CT_IP}:4000"
    # The settings do not pin the output cap (a settings env beats the user's own, issue 20 point 13):
    # claude-local exports a default from the context and the measured speed unless one is set.
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in env
    wrapper = (home / ".config/provision/clients/bin/claude-local").read_text()
    assert ': "${CLAUDE_CODE_MAX_OUTPUT_TOKENS:=' in wrapper
    # the slot mapping of inventories/sim.yaml, written as Claude Code reads it
    assert (env["ANTHROPIC_MODEL"], env["ANTHROPIC_DEFAULT_SONNET_MODEL"], env["ANTHROPIC_DEFAULT_OPUS_MODEL"]) == \
        ("smollm2-135m",) * 3
    assert (env["ANTHROPIC_DEFAULT_HAIKU_MODEL"], env["ANTHROPIC_SMALL_FAST_MODEL"]) == ("gemma3-270m",) * 2
    # The written settings, plus a 16-token budget: a tiny model on a CPU may ramble for minutes.
    env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = "16"
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_text(json.dumps(settings))
    t0 = time.time()
    proc, answers, _ = _claude(home, tmp_path)
    PHASES["claude -p"] = time.time() - t0
    main = _gateway_models(t0)
    assert main and set(main) == {"smollm2-135m"}, main
    print(f"claude -p: exit {proc.returncode}, {len(answers)} answer(s) from smollm2-135m, first: {answers[0]!r}")
    t1 = time.time()
    proc, answers, _ = _claude(home, tmp_path, "--model", "haiku")
    PHASES["claude -p --model haiku"] = time.time() - t1
    small = _gateway_models(t1)
    assert small and set(small) == {"gemma3-270m"}, small
    print(f"claude -p --model haiku: exit {proc.returncode}, {len(answers)} answer(s) from gemma3-270m, "
          f"first: {answers[0]!r}")


def test_second_up_changes_nothing_within_seconds(deployed: dict) -> None:
    t0 = time.monotonic()
    report = last_json(provision("--json", "up", str(INVENTORY), "--yes"))
    PHASES["second up"] = time.monotonic() - t0
    assert report["applied"] == [], [c["summary"] for c in report["applied"]]
    assert report["ssh_round_trips"] <= 3 and report["api_calls"] <= 10
    assert PHASES["second up"] < 30


def test_host_driver_upgrade_moves_the_container(deployed: dict) -> None:
    provision("sim", "fault", "upgrade-driver", "595.71.05")
    plan = provision("plan", str(INVENTORY), "--exit-code", check=False)
    assert plan.returncode == 2, plan.stderr
    t0 = time.monotonic()
    provision("up", str(INVENTORY), "--yes")
    PHASES["driver upgrade up"] = time.monotonic() - t0
    smi = host(f"pct exec {VMID} -- nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert smi.strip() == "595.71.05"
    libs = host(f"pct exec {VMID} -- sh -c 'ls /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.*'")
    assert "libnvidia-ml.so.595.71.05" in libs and "580.95.05" not in libs
    assert last_json(provision("--json", "up", str(INVENTORY), "--yes"))["applied"] == []


def test_doctor_is_clean_at_the_end(deployed: dict) -> None:
    proc = provision("--json", "doctor", str(INVENTORY), check=False)
    data = json.loads(proc.stdout)
    bad = [f for f in data["findings"] if f["status"] == "fail"]
    assert proc.returncode == 0 and not bad, json.dumps(bad, indent=1)
