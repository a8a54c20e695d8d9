"""Every config error names file, line, key, what is wrong and the fix — compared whole."""

from __future__ import annotations

import textwrap

import pytest

from provisioner.config import load, load_text
from provisioner.errors import ConfigError, ConfigErrors

BASE = textwrap.dedent("""\
    proxmox:
      endpoint: https://pve.lan:8006
      node: pve
      auth:
        token_id: root@pam!provision
        token_secret: {env: PVE_TOKEN}
    """)


def err(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text, "host.yaml")
    return str(info.value)


CASES = [
    ("unknown top-level key", BASE + "contaner:\n  cores: 4\n",
     "host.yaml:7: contaner: unknown key 'contaner'\n  fix: did you mean 'container'?"),
    ("unknown nested key", BASE + "container:\n  cors: 4\n",
     "host.yaml:8: container.cors: unknown key 'cors'\n  fix: did you mean 'cores'?"),
    ("unknown key, nothing close", BASE + "gpu:\n  zzz: 1\n",
     "host.yaml:8: gpu.zzz: unknown key 'zzz'\n  fix: remove it; known keys here: boot_fix, caps, enabled, "
     "modeset, select, share"),
    ("wrong type", BASE + "container:\n  cores: abc\n",
     "host.yaml:8: container.cores: Input should be a valid integer, unable to parse string as an integer\n"
     "  fix: use a whole number"),
    ("context too small for Claude Code", BASE + "server:\n  ctx_size: 8192\n",
     "host.yaml:8: server.ctx_size: context is 8192 tokens but Claude Code is configured "
     "(clients.claude_code): its system prompt alone is ~24K tokens, so it fails at once\n"
     "  fix: set server.ctx_size: 32768 or more (0 = the model's own), or clients.claude_code: false"),
    ("flash attention off with the default q8_0 V cache", BASE + "server:\n  flash_attn: \"off\"\n",
     "host.yaml:8: server.flash_attn: flash attention is off but the V cache is quantized (cache_type_v: q8_0): "
     "llama-server refuses to create the context ('quantized V cache requires flash_attn to be enabled')\n"
     "  fix: set server.flash_attn: auto or on, or server.cache_type_v: f16 (or bf16, f32)"),
    ("bad enum", BASE + "llama_cpp:\n  backend: metal\n",
     "host.yaml:8: llama_cpp.backend: 'metal' is not allowed: expected 'auto', 'cuda', 'vulkan', 'rocm' or "
     "'cpu'\n  fix: use one of the allowed values"),
    ("ip without prefix", BASE + "container:\n  network:\n    ip: 10.0.0.5\n",
     "host.yaml:9: container.network.ip: needs a prefix length, e.g. 192.168.1.50/24\n  fix: correct the value"),
    ("path traversal in a mount", BASE + "container:\n  mounts:\n    - host: /a/../b\n      path: /x\n",
     "host.yaml:9: container.mounts[0].host: '/a/../b' (read as /b) climbs with '..': through a symlinked "
     "parent it can lead anywhere, and PVE refuses '..' in mount points\n"
     "  fix: write the path without '..', e.g. /b"),
    ("half a model", BASE + "model:\n  repo: a/b\n",
     "host.yaml:7: model: a Hugging Face model needs both repo and file\n  fix: correct the value"),
    ("union: vmid", BASE + "container:\n  vmid: 5\n",
     "host.yaml:8: container.vmid: Input should be greater than or equal to 100; or: 5 is not allowed: "
     "expected 'auto'\n  fix: use a value that satisfies one of these"),
    ("inline secret without consent",
     BASE.replace("{env: PVE_TOKEN}", "{value: abcdef}"),
     "host.yaml:6: proxmox.auth.token_secret: an inline secret needs 'allow_inline: true'; prefer 'env: NAME' "
     "or 'file: /path' so the secret stays out of the file\n  fix: correct the value"),
    ("missing required key", "proxmox:\n  endpoint: https://pve.lan:8006\n  auth:\n    user: root@pam\n"
     "    password: {env: P}\n",
     "host.yaml:1: proxmox.node: required key is missing\n  fix: add 'node:' under 'proxmox'"),
    ("plain http endpoint", BASE.replace("https://pve.lan:8006", "http://pve.lan:8006"),
     "host.yaml:2: proxmox.endpoint: 'http://pve.lan:8006' is not of the expected form "
     "(^https://[^/\\s]+(:\\d+)?/?$)\n  fix: use a value of the expected form"),
    ("duplicate key", BASE + "container:\n  cores: 2\n  cores: 4\n",
     "host.yaml:9: container.cores: duplicate key 'cores'\n  fix: remove one of the two entries"),
    ("broken yaml", "proxmox: [\n",
     "host.yaml:2: not valid YAML: expected the node content, but found '<stream end>'\n"
     "  fix: check indentation and quoting around this line"),
    ("empty file", "", "host.yaml: the file is empty\n  fix: start from an example in inventories/"),
    ("not a mapping", "- a\n- b\n",
     "host.yaml:1: the top level must be a mapping of sections\n  fix: start from an example in inventories/"),
    ("insecure and pinned", BASE + "  insecure: true\n  fingerprint: " + ":".join(["AB"] * 32) + "\n",
     "host.yaml:1: proxmox: insecure: true cannot be combined with ca_file or fingerprint\n"
     "  fix: correct the value"),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_error_text(name: str, text: str, expected: str) -> None:
    assert err(text) == expected


def test_several_errors_reported_at_once() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_text(BASE + "container:\n  cors: 4\n  memry: 5\n", "host.yaml")
    assert [str(e) for e in info.value.errors] == [
        "host.yaml:8: container.cors: unknown key 'cors'\n  fix: did you mean 'cores'?",
        "host.yaml:9: container.memry: unknown key 'memry'\n  fix: did you mean 'memory_mb'?",
    ]


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file\n  fix: check the path"


def test_minimal_file_gets_defaults() -> None:
    cfg = load_text(BASE, "host.yaml").config
    assert cfg.proxmox.port == 8006 and cfg.proxmox.host == "pve.lan"
    assert cfg.container.vmid == "auto" and cfg.server.ctx_size >= 32768
    assert cfg.server.parallel == 1 and cfg.gateway.mode == "translate"


def test_insecure_warns() -> None:
    loaded = load_text(BASE + "  insecure: true\n", "host.yaml")
    assert any("TLS is NOT verified" in w for w in loaded.warnings)


def test_inline_secret_allowed_with_consent_warns() -> None:
    text = BASE.replace("{env: PVE_TOKEN}", "{value: abcdef, allow_inline: true}")
    loaded = load_text(text, "host.yaml")
    assert loaded.warnings == ("proxmox.auth.token_secret is written inline in the host file; prefer env: or file:",)


def test_every_inventory_example_loads() -> None:
    from pathlib import Path

    files = sorted((Path(__file__).parents[2] / "inventories").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        load(f)
