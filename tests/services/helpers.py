"""Host files and facts for the services tests (data in, changes out)."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from provisioner.config import load_text
from provisioner.config.schema import HostFile
from provisioner.engine.context import PlanContext
from provisioner.facts.pve import ContainerState, PveFacts

BASE = textwrap.dedent("""\
    proxmox:
      endpoint: https://pve.lan:8006
      node: pve
      auth: {token_id: root@pam!p, token_secret: {env: T}}
    container:
      vmid: 120
      hostname: llm
    gpu: {enabled: false}
    model:
      repo: bartowski/Qwen2.5-Coder-7B-Instruct-GGUF
      file: Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf
    """)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(extra: dict[str, Any] | None = None, base: str = BASE) -> HostFile:
    data = merge(yaml.safe_load(base), extra or {})
    return load_text(yaml.safe_dump(data), "h.yaml").config


def ctx(cfg: HostFile, facts: dict[str, Any] | None = None, running: bool = True) -> PlanContext:
    ct = ContainerState(vmid=120, config={"hostname": "llm"}, digest="d",
                        status="running" if running else "stopped")
    return PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=ct, vmid=120),
                       facts=facts or {}, root_path="ssh")
