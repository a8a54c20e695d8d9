"""Client configs: rendered from the deployment's values, parsed back, written without clobbering."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import ProvisionError
from provisioner.operations.clients import (
    ClientInputs,
    max_output,
    parse_inputs,
    reachability_warnings,
    render_clients,
    write_clients,
)

from .helpers import config

INPUTS = ClientInputs(base_url="http://10.0.3.50:4000", openai_url="http://10.0.3.50:8080",
                      gateway_key="gw-key-123456", server_key="srv-key-abcdef", model_id="qwen-coder", n_ctx=32768)


def rendered(cfg, tmp_path: Path) -> dict[str, tuple[str, int]]:
    return {f.path: (f.content, f.mode) for f in render_clients(cfg, INPUTS, tmp_path)}


def test_every_client_file_parses_and_carries_the_live_values(tmp_path: Path) -> None:
    cfg = config({"clients": {"pi": True, "claude_code_router": True}, "model": {"alias": "qwen-coder"}})
    files = rendered(cfg, tmp_path)
    assert sorted(files) == ["bin/claude-local", "claude-code-router/config.json", "claude-code/settings.json",
                             "pi/models.json"]
    assert json.loads(files["claude-code/settings.json"][0]) == {"env": {
        "ANTHROPIC_BASE_URL": "http://10.0.3.50:4000", "ANTHROPIC_API_KEY": "gw-key-123456",
        "ANTHROPIC_MODEL": "qwen-coder", "ANTHROPIC_DEFAULT_OPUS_MODEL": "qwen-coder",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "qwen-coder", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "qwen-coder",
        "ANTHROPIC_SMALL_FAST_MODEL": "qwen-coder", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1"}}
    assert json.loads(files["pi/models.json"][0]) == {"providers": {"llama-local": {
        "baseUrl": "http://10.0.3.50:8080/v1", "api": "openai-completions", "apiKey": "srv-key-abcdef",
        "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
        "models": [{"id": "qwen-coder", "name": "qwen-coder (local llama.cpp)", "reasoning": True,
                    "input": ["text"], "contextWindow": 32768, "maxTokens": 8192,
                    "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}]}}}
    ccr = json.loads(files["claude-code-router/config.json"][0])
    assert ccr["Providers"] == [{"name": "llama-local", "api_base_url": "http://10.0.3.50:8080/v1/chat/completions",
                                 "api_key": "srv-key-abcdef", "models": ["qwen-coder"]}]
    assert ccr["Router"]["default"] == "llama-local,qwen-coder"
    assert {p: m for p, (_, m) in files.items()} == {"bin/claude-local": 0o755, "claude-code-router/config.json": 0o600,
                                                     "claude-code/settings.json": 0o600, "pi/models.json": 0o600}
    wrapper = files["bin/claude-local"][0]
    assert "gw-key" not in wrapper and "http://10.0.3.50:4000/health" in wrapper
    subprocess.run(["sh", "-n"], input=wrapper, text=True, check=True)  # valid shell


def test_claude_local_refuses_when_the_gateway_is_down(tmp_path: Path) -> None:
    cfg = config()
    files = render_clients(cfg, ClientInputs(**{**INPUTS.__dict__, "base_url": "http://127.0.0.1:9"}), tmp_path)
    write_clients(files, tmp_path)
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "claude").write_text("#!/bin/sh\necho CLAUDE-RAN\n")
    (fake_bin / "claude").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    proc = subprocess.run([str(tmp_path / "bin" / "claude-local")], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1 and "not healthy" in proc.stderr and "CLAUDE-RAN" not in proc.stdout


def test_write_never_clobbers_a_foreign_file(tmp_path: Path) -> None:
    cfg = config()
    files = render_clients(cfg, INPUTS, tmp_path)
    first = write_clients(files, tmp_path)
    assert [r for _, r in first] == ["written", "written"]
    settings = tmp_path / "claude-code" / "settings.json"
    assert settings.stat().st_mode & 0o777 == 0o600
    assert [r for _, r in write_clients(files, tmp_path)] == ["unchanged", "unchanged"]
    # new values, file untouched by the user: updated in place, no backup (the context sets the output
    # cap claude-local exports; the settings file does not carry it)
    newer = render_clients(cfg, ClientInputs(**{**INPUTS.__dict__, "n_ctx": 65536}), tmp_path)
    assert [r for _, r in write_clients(newer, tmp_path)] == ["unchanged", "updated"]
    # the user edited it: kept as a backup before writing ours
    settings.write_text('{"env": {"MINE": "1"}}\n')
    result = dict(write_clients(files, tmp_path))
    assert "kept as settings.json.bak-" in result[str(settings)]
    (backup,) = settings.parent.glob("settings.json.bak-*")
    assert json.loads(backup.read_text()) == {"env": {"MINE": "1"}}
    assert backup.stat().st_mode & 0o777 == 0o600


def test_parse_inputs_from_the_container() -> None:
    cfg = config({"server": {"host": "0.0.0.0"}})
    out = ('ip 10.0.3.77\ngateway_key gk-000000\nserver_key sk-111111\n'
           'props {"default_generation_settings": {"n_ctx": 40960, "params": {}}, "total_slots": 1}\n')
    got = parse_inputs(cfg, out)
    assert got == ClientInputs(base_url="http://10.0.3.77:4000", openai_url="http://10.0.3.77:8080",
                               gateway_key="gk-000000", server_key="sk-111111",
                               model_id="Qwen2.5-Coder-7B-Instruct-Q4_K_M", n_ctx=40960)
    base = parse_inputs(config({"clients": {"base_url": "https://llm.example:443/"}}), out)
    assert base.base_url == "https://llm.example:443"
    with pytest.raises(ProvisionError, match="did not answer /props"):
        parse_inputs(cfg, "ip 10.0.3.77\ngateway_key a\nserver_key b\nprops \n")
    assert max_output(32768) == 8192 and max_output(262144) == 32000 and max_output(512) == 256


def test_warns_when_openai_clients_cannot_reach_llama_server() -> None:
    assert reachability_warnings(config({"clients": {"pi": True}}))[0].startswith("server.host is 127.0.0.1")
    assert reachability_warnings(config({"clients": {"pi": True}, "server": {"host": "0.0.0.0"}})) == []


def test_the_output_cap_is_a_default_the_users_environment_overrides(tmp_path: Path) -> None:
    """Issue 20 point 13: settings.json pinned CLAUDE_CODE_MAX_OUTPUT_TOKENS: 8192 in its env, which beats the
    user's environment; a slow model then generated for 10 minutes. Now claude-local exports a default
    derived from the context and the measured speed, and the user's own value wins."""
    assert max_output(32768) == 8192 and max_output(32768, 4.0) == 1200 and max_output(32768, 500.0) == 8192
    slow = ClientInputs(**{**INPUTS.__dict__, "gen_tps": 4.0})
    files = {f.path: f.content for f in render_clients(config(), slow, tmp_path)}
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in json.loads(files["claude-code/settings.json"])["env"]
    write_clients(render_clients(config(), slow, tmp_path), tmp_path)
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    for name, body in (("claude", 'echo "cap=$CLAUDE_CODE_MAX_OUTPUT_TOKENS"'), ("curl", "exit 0")):
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    env.pop("CLAUDE_CODE_MAX_OUTPUT_TOKENS", None)
    run = lambda e: subprocess.run([str(tmp_path / "bin" / "claude-local")], capture_output=True, text=True, env=e,
                                   check=True).stdout.strip()
    assert run(env) == "cap=1200"
    assert run({**env, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "512"}) == "cap=512"
    assert "300 s at the 4.0 tokens/s llama-server measured" in files["bin/claude-local"]


def test_speed_comes_from_llama_servers_counters_once_there_are_enough() -> None:
    base = ("ip 10.0.3.50\ngateway_key g\nserver_key s\n"
            'props {"default_generation_settings": {"n_ctx": 32768}}\n')
    cfg = config()
    many = parse_inputs(cfg, base + "metrics llamacpp:tokens_predicted_total 600 "
                                    "llamacpp:tokens_predicted_seconds_total 120 \n")
    assert many.gen_tps == 5.0
    one = parse_inputs(cfg, base + "metrics llamacpp:tokens_predicted_total 1 "
                                   "llamacpp:tokens_predicted_seconds_total 0.2 \n")
    assert one.gen_tps is None  # verify's single token says nothing about speed


def test_several_models_fill_the_slots_and_every_model_list(tmp_path: Path) -> None:
    """Claude Code's settings carry the slot mapping as Claude Code reads it (ANTHROPIC_MODEL and the
    opus/sonnet names: main; ANTHROPIC_DEFAULT_HAIKU_MODEL and the older ANTHROPIC_SMALL_FAST_MODEL:
    small_fast); pi and claude-code-router list every model with its own context."""
    cfg = config({"clients": {"pi": True, "claude_code_router": True,
                              "claude_code": {"models": {"main": "coder", "small_fast": "small"}}},
                  "model": None,
                  "models": [{"repo": "org/coder", "file": "coder.gguf", "alias": "coder", "ctx_size": 65536},
                             {"repo": "org/small", "file": "small.gguf", "alias": "small", "reasoning": "off"}]})
    inputs = ClientInputs(**{**INPUTS.__dict__, "model_id": "coder", "n_ctx": 65536,
                             "contexts": (("coder", 65536), ("small", 32768))})
    files = {f.path: f.content for f in render_clients(cfg, inputs, tmp_path)}
    env = json.loads(files["claude-code/settings.json"])["env"]
    assert {k: v for k, v in env.items() if k.endswith("MODEL")} == {
        "ANTHROPIC_MODEL": "coder", "ANTHROPIC_DEFAULT_OPUS_MODEL": "coder", "ANTHROPIC_DEFAULT_SONNET_MODEL": "coder",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "small", "ANTHROPIC_SMALL_FAST_MODEL": "small"}
    pi = json.loads(files["pi/models.json"])["providers"]["llama-local"]["models"]
    assert [(m["id"], m["contextWindow"], m["reasoning"]) for m in pi] == [("coder", 65536, True),
                                                                          ("small", 32768, False)]
    ccr = json.loads(files["claude-code-router/config.json"])
    assert ccr["Providers"][0]["models"] == ["coder", "small"]
    assert (ccr["Router"]["default"], ccr["Router"]["background"], ccr["Router"]["longContext"]) == (
        "llama-local,coder", "llama-local,small", "llama-local,coder")


def test_router_contexts_from_props_or_the_host_file() -> None:
    cfg = config({"model": None, "server": {"ctx_size": 65536, "parallel": 2},
                  "models": [{"repo": "org/coder", "file": "coder.gguf", "alias": "coder"},
                             {"repo": "org/small", "file": "small.gguf", "alias": "small"}]})
    out = ("ip 10.0.3.50\ngateway_key gk\nserver_key sk\nprops {\"role\": \"router\"}\n"
           "props.coder {\"default_generation_settings\": {\"n_ctx\": 40000}}\n"
           "props.small {\"error\": {\"message\": \"model is not loaded\"}}\n")
    got = parse_inputs(cfg, out)
    assert got.contexts == (("coder", 40000), ("small", 32768)) and got.n_ctx == 40000
