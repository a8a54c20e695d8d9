"""Build PlanContexts from facts for the GPU steps' plan tests (facts in, changes out)."""

from __future__ import annotations

import textwrap
from typing import Any

from provisioner.config import load_text
from provisioner.engine.context import PlanContext
from provisioner.facts.nvidia import BootSetup, DeviceNodes, DriverVersion, GpuInfo
from provisioner.facts.pve import MARKER_LINE, ContainerState, PveFacts

HOST = textwrap.dedent("""\
    proxmox:
      endpoint: https://pve.lan:8006
      node: pve
      auth: {token_id: root@pam!p, token_secret: {env: T}}
    container: {vmid: 120}
    """)

RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24564, "00000000:01:00.0", 0)
RTX5090 = GpuInfo(1, "NVIDIA GeForce RTX 5090", "12.0", 32607, "00000000:02:00.0", 1)


def nodes(n_gpus: int = 1, uvm: bool = True) -> DeviceNodes:
    d = {f"/dev/nvidia{i}": (195, i) for i in range(n_gpus)}
    d["/dev/nvidiactl"] = (195, 255)
    d["/dev/nvidia-modeset"] = (195, 254)
    d["/dev/nvidia-caps/nvidia-cap1"] = (235, 1)
    if uvm:
        d["/dev/nvidia-uvm"] = (510, 0)
        d["/dev/nvidia-uvm-tools"] = (510, 1)
    return DeviceNodes(d, {"nvidia-frontend": 195, "nvidia-uvm": 510, "nvidia-caps": 235})


def host_facts(version: str = "580.95.05", gpus: list[GpuInfo] | None = None, *, uvm: bool = True,
               boot: BootSetup | None = None) -> dict[str, Any]:
    gpus = [RTX4090] if gpus is None else gpus
    return {"nvidia.driver": DriverVersion(version, "sys", "open"), "nvidia.gpus": gpus,
            "nvidia.devices": nodes(len(gpus), uvm),
            "nvidia.boot": boot or BootSetup(True, False, False, None, None, False, "/usr/bin/nvidia-modprobe")}


def ctx(facts: dict[str, Any], *, extra: str = "", config: dict[str, str] | None = None) -> PlanContext:
    cfg = load_text(HOST + textwrap.dedent(extra), "h.yaml").config
    base = {"hostname": "llm", "tags": "provision", "description": f"{MARKER_LINE} (do not remove this line)\n"}
    ct = ContainerState(vmid=120, config={**base, **(config or {})}, digest="d", status="running")
    return PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=ct, vmid=120), facts=facts,
                       root_path="ssh")
