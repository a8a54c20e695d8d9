"""Settings file, flag overrides, and the provision-gateway process itself."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from local_http import free_port

from provisioner.errors import ConfigError
from provisioner.gateway.__main__ import settings_from_argv
from provisioner.gateway.config import GatewaySettings, load_settings
from provisioner.gateway.models import ModelTable


def write(tmp_path, data) -> str:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_load_settings_and_flag_overrides(tmp_path):
    path = write(tmp_path, {"listen_port": 9000, "upstream_url": "http://10.0.0.5:8080/",
                            "model_aliases": {"fast": "smollm2"}, "ping_interval_s": 2})
    settings = settings_from_argv(["--config", path, "--mode", "native", "--alias", "big=qwen",
                                   "--no-accept-claude-models", "--metrics-public"])
    assert settings == GatewaySettings(listen_port=9000, upstream_url="http://10.0.0.5:8080", mode="native",
                                       model_aliases={"big": "qwen"}, ping_interval_s=2.0,
                                       accept_claude_models=False, metrics_public=True)
    models = ModelTable.from_settings(dataclasses.replace(settings, accept_claude_models=True))
    assert models.resolve("claude-opus-4") == "local"  # until the upstream says its model's name
    assert models.resolve("big") == "qwen"
    assert models.resolve("gpt-4") is None


@pytest.mark.parametrize("data, message", [
    ({"listen_prot": 1}, "gw.json: listen_prot: unknown key 'listen_prot'"),
    ({"listen_port": "80"}, "gw.json: listen_port: expected a positive integer, found str '80'"),
    ({"mode": "proxy"}, "gw.json: mode: expected one of translate, native, found 'proxy'"),
    ({"upstream_url": "h:8080"}, "gw.json: upstream_url: expected an http:// or https:// URL, found 'h:8080'"),
    ({"local_model_id": ""}, "gw.json: local_model_id: expected a model id or null, found str ''"),
    ({"model_aliases": {"a": 1}}, 'gw.json: model_aliases: expected an object of non-empty strings '
                                  '{"requested name": "upstream model"}, found dict {\'a\': 1}'),
])
def test_config_errors_say_where(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert str(info.value).split("\n")[0] == f"{tmp_path}/{message}"



def test_provision_gateway_process_serves_and_stops_on_sigterm(tmp_path):
    key = tmp_path / "key"
    key.write_text("process-key-123456\n")
    port = free_port()
    path = write(tmp_path, {"listen_port": port, "upstream_url": f"http://127.0.0.1:{free_port()}",
                            "api_key_file": str(key)})
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", path],
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        for _ in range(100):
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert health.status_code == 503 and health.json()["upstream"]["status"] == "down"
        response = requests.post(f"http://127.0.0.1:{port}/v1/messages", headers={"x-api-key": "process-key-123456"},
                                 json={"model": "claude-x", "max_tokens": 5,
                                       "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 502
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    access = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(a["path"], a["status"]) for a in access] == [("/health", 503), ("/v1/messages", 502)]
    assert "process-key-123456" not in err


def test_bad_config_exits_2(tmp_path):
    path = write(tmp_path, {"api_key_file": str(tmp_path / "missing")})
    proc = subprocess.run([sys.executable, "-m", "provisioner.gateway", "--config", path],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "cannot read the key file" in proc.stderr and "Traceback" not in proc.stderr


def test_every_setting_is_described_by_help_and_has_a_flag():
    """Issue 19: `provision-gateway --help` describes every setting (the text declared on its field)."""
    proc = subprocess.run([sys.executable, "-m", "provisioner.gateway", "--help"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0
    for f in dataclasses.fields(GatewaySettings):
        assert f.metadata["help"] and f"[key {f.name}] {f.metadata['help']}" in proc.stdout, f.name
        flag = "--alias" if f.name == "model_aliases" else "--" + f.name.replace("_", "-")
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080/v1", "http://10.0.0.5:8080/v1/", "http://10.0.0.5:8080/"])
def test_upstream_url_accepts_the_v1_form(url):
    """Issue 19: every OpenAI client and peer is configured with .../v1; it used to be refused."""
    assert settings_from_argv(["--upstream", url]).upstream_url == "http://10.0.0.5:8080"
