"""Placement on a cluster, decided from facts (no node needed)."""

from __future__ import annotations

import textwrap

import pytest

from provisioner.config import load_text
from provisioner.config.schema import Placement
from provisioner.engine.placement import NodeGpus, choose_node, existing_node, matches
from provisioner.errors import ConfigError
from provisioner.facts.gpu_claims import GpuClaim
from provisioner.facts.nvidia import GpuInfo

A4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24564, "00000000:01:00.0", 0)
B4090 = GpuInfo(1, "NVIDIA GeForce RTX 4090", "8.9", 24564, "00000000:02:00.0", 1)
A3090 = GpuInfo(0, "NVIDIA GeForce RTX 3090", "8.6", 24576, "00000000:01:00.0", 0)
A5090 = GpuInfo(0, "NVIDIA GeForce RTX 5090", "12.0", 32607, "00000000:01:00.0", 0)
T4 = GpuInfo(0, "Tesla T4", "7.5", 15360, "00000000:01:00.0", 0)

CLUSTER = [NodeGpus("pve1", [A3090]), NodeGpus("pve2", [A5090]), NodeGpus("pve3", [T4])]


def test_matches_model_cc_and_vram() -> None:
    assert matches(A4090, Placement(gpu="4090")) and not matches(A3090, Placement(gpu="4090"))
    assert matches(A5090, Placement(compute_capability="8.9")) and not matches(A3090, Placement(compute_capability="8.9"))
    assert matches(A3090, Placement(min_vram_gb=24)) and matches(A4090, Placement(min_vram_gb=24))
    assert not matches(T4, Placement(min_vram_gb=24))
    assert matches(T4, None)


def test_placed_by_model_and_by_capability() -> None:
    assert choose_node(CLUSTER, Placement(gpu="5090"))[0] == "pve2"
    assert choose_node(CLUSTER, Placement(gpu="T4"))[0] == "pve3"
    assert choose_node(CLUSTER, Placement(compute_capability="8.0", min_vram_gb=24))[0] == "pve1"  # name order


def test_taken_gpus_do_not_count_unless_shared() -> None:
    nodes = [NodeGpus("pve1", [A4090], [GpuClaim(200, "a", 0, True)]), NodeGpus("pve2", [A4090, B4090])]
    assert choose_node(nodes, Placement(gpu="4090"))[0] == "pve2"
    busy = [NodeGpus("pve1", [A4090], [GpuClaim(200, "a", 0, True)])]
    with pytest.raises(ConfigError) as err:
        choose_node(busy, Placement(gpu="4090"))
    assert "pve1: NVIDIA GeForce RTX 4090 (held by CT 200)" in str(err.value)
    assert choose_node(busy, Placement(gpu="4090"), share=True)[0] == "pve1"
    # a foreign (unmanaged) container's GPU does not count as taken
    assert choose_node([NodeGpus("pve1", [A4090], [GpuClaim(300, "x", 0, False)])], None)[0] == "pve1"


def test_most_free_gpus_wins_and_count_is_required() -> None:
    nodes = [NodeGpus("pve1", [A4090]), NodeGpus("pve2", [A4090, B4090])]
    assert choose_node(nodes, Placement(gpu="4090"))[0] == "pve2"
    with pytest.raises(ConfigError, match="3 free GPU"):
        choose_node(nodes, Placement(gpu="4090", gpus=3))


def test_node_without_driver_has_no_free_gpu_and_no_gpu_needed_takes_first() -> None:
    nodes = [NodeGpus("pve1", [A5090], driver_loaded=False), NodeGpus("pve2", [A5090])]
    assert choose_node(nodes, Placement(gpu="5090"))[0] == "pve2"
    assert choose_node([NodeGpus("pve2"), NodeGpus("pve1")], None, need_gpu=False)[0] == "pve1"
    with pytest.raises(ConfigError, match="ssh.nodes"):
        choose_node([], None)


HOST = """\
proxmox: {endpoint: https://a:8006, node: auto, auth: {token_id: root@pam!p, token_secret: {env: T}}}
ssh: {nodes: {pve1: {host: a}, pve2: {host: b, port: 2200}}}
"""


def _cfg(extra: str = ""):
    return load_text(HOST + textwrap.dedent(extra), "h.yaml").config


def test_existing_container_is_found_on_any_node() -> None:
    res = [{"type": "lxc", "vmid": 300, "node": "pve1", "name": "llm", "tags": "provision"},
           {"type": "lxc", "vmid": 301, "node": "pve2", "name": "llm-b", "tags": "provision"}]
    assert existing_node(_cfg("container: {vmid: 301}\n"), res) == "pve2"
    assert existing_node(_cfg("container: {hostname: llm-b}\n"), res) == "pve2"
    assert existing_node(_cfg("container: {hostname: other}\n"), res) is None


def test_schema_rules_for_auto() -> None:
    with pytest.raises(ConfigError, match="needs ssh.nodes"):
        load_text("proxmox: {endpoint: https://a:8006, node: auto, auth: {token_id: root@pam!p, "
                  "token_secret: {env: T}}}\n", "h.yaml")
    with pytest.raises(ConfigError, match="placement needs proxmox.node: auto"):
        load_text("proxmox: {endpoint: https://a:8006, node: pve1, placement: {gpu: '4090'}, "
                  "auth: {token_id: root@pam!p, token_secret: {env: T}}}\n", "h.yaml")
    assert _cfg().ssh.nodes["pve2"].port == 2200
