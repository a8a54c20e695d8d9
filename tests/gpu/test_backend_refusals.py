"""Backends provision cannot build honestly are refused before anything runs, with the reason and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from provisioner.backends import refusal
from provisioner.config import load_text
from provisioner.errors import ConfigError
from provisioner.facts.llama import LlamaBuild
from provisioner.operations.llama import build_spec

from . import planctx
from .planctx import ctx, host_facts

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


def test_vulkan_on_the_debian_12_template_is_a_config_error() -> None:
    text = err(BASE + "llama_cpp:\n  backend: vulkan\n")  # container.template defaults to debian-12-standard
    assert text.startswith("host.yaml:8: llama_cpp.backend: the Vulkan backend does not compile on Debian 12: "
                           "its Vulkan headers are 1.3.239")
    assert "VK_EXT_layer_settings (vk::LayerSettingEXT, ggml-vulkan.cpp:5214)" in text
    assert "fix: use a Debian 13 template (container.template: debian-13-standard" in text


def test_vulkan_on_a_debian_13_template_loads() -> None:
    cfg = load_text(BASE + "container:\n  template: debian-13-standard\nllama_cpp:\n  backend: vulkan\n",
                    "host.yaml").config
    assert cfg.llama_cpp.backend == "vulkan"


def test_rocm_is_refused_with_what_is_missing() -> None:
    text = err(BASE + "container:\n  template: debian-13-standard\nllama_cpp:\n  backend: rocm\n"
                      "  rocm_targets: [gfx1100]\n")
    assert text.startswith("host.yaml:10: llama_cpp.backend: llama.cpp (b11312) needs ROCm/HIP 6.1 or newer")
    assert "Debian 12 has HIP 5.2 and no hipBLAS/rocBLAS" in text and "Debian 13 has HIP 5.7" in text
    assert "fix: use llama_cpp.backend: cpu" in text and "AMD's repository" in text


def test_vulkan_in_a_container_that_runs_debian_12_is_refused_at_plan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(planctx, "HOST", planctx.HOST.replace("{vmid: 120}", "{vmid: 120, template: debian-13-standard}"))
    # the template says 13, the container itself (made earlier, from another template) says 12
    tar = tmp_path / "src.tar.gz"
    tar.write_bytes(b"tree")
    c = ctx({**host_facts(), "ct.llama": LlamaBuild(os_release="debian 12")},
            extra=f"llama_cpp:\n  backend: vulkan\n  source: {{tarball: {tar}}}\n")
    with pytest.raises(ConfigError, match=r"does not compile on Debian 12.*\(this container runs debian 12\)"):
        build_spec(c)
    c.facts["ct.llama"] = LlamaBuild(os_release="debian 13")
    assert build_spec(c).backend == "vulkan"


def test_rules() -> None:
    assert refusal("cpu", "debian 12") is None and refusal("cuda", "debian 12") is None
    assert refusal("vulkan", "debian 13") is None and refusal("vulkan", None) is None
    assert refusal("vulkan", "debian 12") is not None and refusal("rocm", "debian 13") is not None
