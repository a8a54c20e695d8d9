"""llama-server's command line and the unit/config files, compared whole."""

from __future__ import annotations

import json
import subprocess

from provisioner.gateway.config import settings_from_mapping
from provisioner.operations.scripts import systemd_quote
from provisioner.operations.units import (
    Sandbox,
    desired_units,
    exec_start,
    gateway_config,
    llama_args,
    llama_unit,
)

from .helpers import config

BIN = "/opt/provision/llama.cpp/current/bin/llama-server"


def test_default_command_line_names_every_flag() -> None:
    assert llama_args(config()) == [
        BIN, "-m", "/srv/models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf",
        "--alias", "Qwen2.5-Coder-7B-Instruct-Q4_K_M", "--host", "127.0.0.1", "--port", "8080",
        "-c", "36864", "--parallel", "2", "--kv-unified", "--kv-unified-per-slot", "32768",
        "-fa", "auto", "-ctk", "q8_0", "-ctv", "q8_0",
        "--fit", "on", "-ngl", "auto", "--api-key-file", "/etc/provision/llama-server.key",
        "--reasoning", "auto", "--metrics"]


def test_background_slot_off_or_not_applicable_is_one_slot_as_configured() -> None:
    """Issue 20 point 13: one slot meant Claude Code's background requests queued behind the main one."""
    from provisioner.operations.units import slot_layout

    assert slot_layout(config({"server": {"background_slot": 0}})) == (["-c", "32768", "--parallel", "1"], 32768)
    assert slot_layout(config({"server": {"parallel": 4, "ctx_size": 131072}})) == \
        (["-c", "131072", "--parallel", "4"], 32768)
    assert slot_layout(config({"server": {"ctx_size": 0}, "clients": {"claude_code": False}}))[0] == \
        ["-c", "0", "--parallel", "1"]  # the model's own context: no size to add a slot to


def test_full_command_line_with_draft_and_every_option() -> None:
    cfg = config({
        "model": {"name": "qwen-coder", "dir": "/srv/my models",
                  "draft": {"repo": "bartowski/Qwen2.5-0.5B-GGUF", "file": "q05.gguf"}},
        "server": {"host": "0.0.0.0", "port": 8081, "ctx_size": 65536, "parallel": 2, "flash_attn": "on",
                   "cache_type_k": "q4_0", "cache_type_v": "q4_0", "ngl": 99, "fit": False, "metrics": False,
                   "reasoning": "off", "reasoning_budget": 0, "threads": 6,
                   "override_kv": ["llama.context_length=int:65536", "tokenizer.ggml.add_bos_token=bool:false"],
                   "extra_args": ["--no-webui", "-b", "512"]},
    })
    assert llama_args(cfg) == [
        BIN, "-m", "/srv/my models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", "--alias", "qwen-coder",
        "--host", "0.0.0.0", "--port", "8081", "-c", "65536", "--parallel", "2", "-fa", "on",
        "-ctk", "q4_0", "-ctv", "q4_0", "--fit", "off", "-ngl", "99",
        "--api-key-file", "/etc/provision/llama-server.key", "--reasoning", "off", "--reasoning-budget", "0",
        "--spec-draft-model", "/srv/my models/q05.gguf", "--spec-draft-ngl", "99", "--spec-type", "draft-simple",
        # one comma-separated --override-kv (repeating it is deprecated in b11312)
        "--threads", "6", "--override-kv", "llama.context_length=int:65536,tokenizer.ggml.add_bos_token=bool:false",
        "--no-webui", "-b", "512"]
    unit = llama_unit(cfg, Sandbox(mounts=True, restart_steps=False))
    assert '-m "/srv/my models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"' in unit
    assert "ConditionPathExists=/srv/my models/q05.gguf" in unit
    assert "ReadOnlyPaths=/srv/my models" in unit


def test_systemd_quoting() -> None:
    assert systemd_quote("/a/b") == "/a/b"
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote('say "hi" 100%') == '"say \\"hi\\" 100%%"'
    assert systemd_quote("$HOME") == '"$$HOME"'
    assert exec_start(["/bin/x", "-m", "/m", "--metrics", "-c", "1"]) == "/bin/x \\\n    -m /m \\\n    --metrics \\\n    -c 1"


def test_sandbox_follows_nesting_and_systemd_version() -> None:
    cfg = config({"container": {"features": {"nesting": False}}})
    old = desired_units(cfg, 252)["/etc/systemd/system/llama-server.service"]
    assert "ProtectSystem=strict" not in old and "RestartSteps" not in old.replace("# RestartSteps", "")
    new = desired_units(config(), 256)["/etc/systemd/system/llama-server.service"]
    assert "ProtectSystem=strict" in new and "RestartSteps=8" in new and "RestartMaxDelaySec=5min" in new
    for line in ("MemoryDenyWriteExecute", "PrivateDevices"):
        assert f"\n{line}=" not in new  # only mentioned in comments: would break GPU runtimes / hide /dev/nvidia*


def test_gateway_config_is_valid_for_the_gateway() -> None:
    cfg = config({"server": {"host": "0.0.0.0", "port": 8090}, "gateway": {"port": 4001, "mode": "native",
                                                                           "model_aliases": {"big": "x"}}})
    data = json.loads(gateway_config(cfg))
    settings = settings_from_mapping(data, source="gateway.json")
    assert (settings.upstream_url, settings.listen_port, settings.mode) == ("http://127.0.0.1:8090", 4001, "native")
    assert settings.local_model_id == "Qwen2.5-Coder-7B-Instruct-Q4_K_M"
    assert settings.api_key_file == "/etc/provision/gateway.key"
    assert settings.upstream_api_key_file == "/etc/provision/llama-server.key"
    assert dict(settings.model_aliases) == {"big": "x"}


def test_no_gateway_files_when_disabled() -> None:
    assert list(desired_units(config({"gateway": {"enabled": False}}), 252)) == [
        "/etc/systemd/system/llama-server.service", "/usr/local/bin/provision-llama-gpu-check"]


def test_units_pass_systemd_analyze_verify(tmp_path) -> None:
    """systemd itself parses the units (unknown keys, bad quoting show up as warnings)."""
    files = desired_units(config({"model": {"dir": "/srv/my models"}}), 252)
    paths = []
    for path, content in files.items():
        if path.endswith(".service"):
            p = tmp_path / path.rsplit("/", 1)[-1]
            p.write_text(content)
            paths.append(str(p))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True, check=False)
    # missing binaries/users on this machine are expected; syntax problems are not
    bad = [ln for ln in proc.stderr.splitlines()
           if any(w in ln for w in ("Unknown key", "Invalid", "Failed to parse", "Missing '='", "unbalanced"))]
    assert bad == [], proc.stderr
