"""Doctor contexts built from recorded fact output (no simulator, no network).

``recorded/sim-healthy.json`` is the raw output of every fact doctor gathers, recorded on the
simulated node (see its ``source``). Tests replace individual outputs to state a fault; the
outputs go through each fact's real ``process`` function, so parsing is exercised too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provisioner.config.schema import HostFile
from provisioner.doctor.context import Access, DoctorContext, Probe
from provisioner.doctor.findings import Finding
from provisioner.doctor.runner import all_facts
from provisioner.engine.context import PlanContext
from provisioner.facts.pve import ContainerState, PveFacts
from provisioner.sim import assets

REC = json.loads((Path(__file__).parent / "recorded" / "sim-healthy.json").read_text())
VMID = REC["ct"]["vmid"]
MODEL = str(assets.CACHE / assets.MODEL_FILE)  # only a path in the recorded config: never read


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


BASE_CFG: dict[str, Any] = {
    "proxmox": {"endpoint": "https://pve.example:8006", "node": "pve",
                "auth": {"token_id": "root@pam!provision", "token_secret": {"env": "PVE_TOKEN"}}},
    "ssh": {"host": "pve.example"},
    "container": {"vmid": VMID, "hostname": f"llm-{VMID}", "nameserver": "10.0.3.1"},
    "driver": {"repo_url": "http://10.0.3.1:8080/compute/cuda/repos"},
    "llama_cpp": {"backend": "cpu"},
    "model": {"path": MODEL, "location": "container"},
    "server": {"ctx_size": 32768, "override_kv": ["llama.context_length=int:32768"]},
}


def config(**extra: Any) -> HostFile:
    return HostFile.model_validate(merge(BASE_CFG, extra))


def context(*, cfg: HostFile | None = None, raw: dict[str, str] | None = None, config_keys: dict[str, str] | None = None,
            drop_keys: tuple[str, ...] = (), pending: dict[str, str] | None = None,
            pending_delete: frozenset[str] = frozenset(), status: str = "running", ct: bool = True,
            access: Access | None = None, probes: dict[str, Probe] | None = None) -> DoctorContext:
    cfg = cfg or config()
    outputs = {k: (v["output"], v["code"]) for k, v in REC["raw"].items()}
    for k, v in (raw or {}).items():
        outputs[k] = (v, 0)
    facts: dict[str, Any] = {}
    kept: dict[str, tuple[str, int]] = {}
    for fact in all_facts(cfg, deep=True):  # a fact without recorded output is absent
        if fact.name in outputs and (status == "running" or fact.where == "host"):
            out, code = outputs[fact.name]
            facts[fact.name] = fact.process(out, code)
            kept[fact.name] = (out, code)
    state = None
    if ct:
        conf = {k: v for k, v in REC["ct"]["config"].items() if k not in drop_keys}
        conf.update(config_keys or {})
        state = ContainerState(vmid=VMID, config=conf, digest=conf.get("digest", ""), pending=pending or {},
                               pending_delete=pending_delete, status=status, node="pve")
    pve = PveFacts(version=REC["pve"]["version"], release=REC["pve"]["release"], ct=state, vmid=VMID)
    acc = access or Access(auth_kind=cfg.proxmox.auth.kind, auth_user=cfg.proxmox.auth.token_id or "root@pam",
                           root_path="ssh", api_checked=True, ssh_checked=True, pve_release=REC["pve"]["release"])
    plan = PlanContext(cfg=cfg, pve=pve, facts=facts, root_path=acc.root_path)
    return DoctorContext(cfg=cfg, access=acc, plan=plan, raw=kept, probes=probes or {}, vmid=VMID, host="pve.example")


def raw(name: str) -> str:
    return REC["raw"][name]["output"]


def one(findings: list[Finding], fid: str) -> Finding:
    found = [f for f in findings if f.id == fid]
    assert len(found) == 1, [(f.id, f.status, f.title) for f in findings]
    return found[0]
