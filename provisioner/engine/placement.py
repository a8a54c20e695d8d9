"""Clusters: which node the container lives on, and SSH to that node.

``proxmox.node`` names a node, or is ``auto``:

1. the container already exists somewhere in the cluster (``container.vmid``, or our
   ownership tag + hostname in ``/cluster/resources``): its node, never re-placed;
2. else every online node that has an ``ssh.nodes`` entry is asked, one SSH round
   trip each, for its GPUs and the GPUs its managed containers hold (the same facts
   as a normal run: ``nvidia.gpus``, ``pve.gpu_claims``), and the node with the most
   free GPUs matching ``proxmox.placement`` wins (ties: node name order).

The API endpoint stays the one in ``proxmox.endpoint``: any node of a PVE cluster
answers for all of them (it proxies ``/nodes/<other>/...``). vmids are cluster-wide
(``/cluster/nextid``), which the container step already uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.schema import HostFile, Placement
from ..connectors.ssh import SSH, SSHTarget
from ..errors import ConfigError, ProvisionError
from ..facts.base import gather
from ..facts.gpu_claims import CLAIMS, GpuClaim
from ..facts.nvidia import DRIVER, GPUS, DriverVersion, GpuInfo
from ..facts.pve import find_ours
from ..operations.gpu_exclusive import minor_of

if TYPE_CHECKING:
    from .run import Connections

AUTO = "auto"


@dataclass(frozen=True)
class NodeGpus:
    """What placement knows of one node."""

    node: str
    gpus: list[GpuInfo] = field(default_factory=list)
    claims: list[GpuClaim] = field(default_factory=list)
    driver_loaded: bool = True


def ssh_for_node(cfg: HostFile, node: str) -> SSH:
    """SSH to ``node``: its ``ssh.nodes`` address, else ``ssh.host`` (the stand-alone case)."""
    s = cfg.ssh
    entry = s.nodes.get(node)
    if entry is None and s.nodes and cfg.proxmox.node == AUTO:
        raise ConfigError(f"the container is on node {node}, which ssh.nodes does not list", key="ssh.nodes",
                          fix=f"add ssh.nodes.{node}: {{host: ..., port: 22}}")
    host = entry.host if entry else (s.host or cfg.proxmox.host)
    port = entry.port if entry else s.port
    return SSH(SSHTarget(host=host, port=port, user=s.user, key_file=s.key_file, use_agent=s.use_agent,
                         known_hosts=s.known_hosts, trust_on_first_use=s.trust_on_first_use, timeout=s.timeout))


def matches(gpu: GpuInfo, p: Placement | None) -> bool:
    if p is None:
        return True
    if p.gpu and p.gpu.lower() not in gpu.name.lower():
        return False
    if p.compute_capability:
        want = tuple(int(x) for x in p.compute_capability.split("."))
        have = tuple(int(x) for x in (gpu.compute_cap or "0.0").split("."))
        if have < want:
            return False
    if p.min_vram_gb and (gpu.memory_mib or 0) < p.min_vram_gb * 1024 * 0.97:  # "24 GB" cards show 24564 MiB
        return False
    return True


def free_matching(n: NodeGpus, p: Placement | None, share: bool) -> list[GpuInfo]:
    """GPUs of ``n`` that match ``p`` and no managed container holds (all matching when ``share``)."""
    if not n.driver_loaded:
        return []
    taken = set() if share else {c.minor for c in n.claims if c.managed}
    return [g for g in n.gpus if matches(g, p) and minor_of(g) not in taken]


def _want(p: Placement | None) -> str:
    if p is None:
        return "a free GPU"
    parts = [f"model containing {p.gpu!r}" if p.gpu else "",
             f"compute capability >= {p.compute_capability}" if p.compute_capability else "",
             f">= {p.min_vram_gb:g} GB VRAM" if p.min_vram_gb else ""]
    what = ", ".join(x for x in parts if x) or "any model"
    return f"{p.gpus} free GPU(s) with {what}"


def choose_node(nodes: list[NodeGpus], p: Placement | None, *, share: bool = False,
                need_gpu: bool = True) -> tuple[str, str]:
    """(node, why) for a new container; ConfigError naming every node's GPUs when none fits."""
    if not nodes:
        raise ConfigError("no online cluster node has an ssh.nodes entry", key="ssh.nodes",
                          fix="add the SSH address of the nodes the container may go to")
    ordered = sorted(nodes, key=lambda n: n.node)
    if not need_gpu:
        return ordered[0].node, "gpu.enabled is false: the first node by name"
    need = p.gpus if p else 1
    scored = [(len(free_matching(n, p, share)), n) for n in ordered]
    best_count, best = max(scored, key=lambda t: t[0])  # max keeps the first of equals: name order
    if best_count >= need:
        return best.node, f"{best_count} free GPU(s) matching proxmox.placement ({_want(p)})"
    seen = []
    for n in ordered:
        held = {c.minor: c for c in n.claims if c.managed}
        gpus = ", ".join(f"{g.name}" + (f" (held by CT {held[minor_of(g)].vmid})" if minor_of(g) in held else "")
                         for g in n.gpus) or "no GPU"
        seen.append(f"{n.node}: {gpus}")
    raise ConfigError(f"no cluster node has {_want(p)} ({'; '.join(seen)})", key="proxmox.placement",
                      fix="relax proxmox.placement, free a GPU, name a node in proxmox.node, "
                          "or set gpu.share: true")


def existing_node(cfg: HostFile, resources: list[dict[str, Any]]) -> str | None:
    """The node our container is already on (by vmid, else by marker + hostname), anywhere in the cluster."""
    vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else None
    for r in resources:
        if vmid is not None and r.get("type") == "lxc" and int(r.get("vmid", -1)) == vmid:
            return str(r.get("node"))
    if vmid is None:
        for r in resources:
            if r.get("type") == "lxc" and find_ours([r], cfg.container.hostname, str(r.get("node"))) is not None:
                return str(r.get("node"))
    return None


def node_gpus(node: str, ssh: SSH) -> NodeGpus:
    """One round trip: the node's driver, GPUs and the GPUs its containers hold."""
    facts = gather(ssh, [DRIVER, GPUS, CLAIMS], vmid=None, ct_running=False)
    driver: DriverVersion | None = facts.get(DRIVER.name)
    return NodeGpus(node, facts.get(GPUS.name) or [], facts.get(CLAIMS.name) or [],
                    bool(driver and driver.loaded))


def resolve(cfg: HostFile, conn: Connections) -> None:
    """Point ``conn`` (API node + SSH) at the node of ``proxmox.node: auto`` (see the module doc)."""
    pve = conn.pve
    resources = pve.get("/cluster/resources", type="vm") or []
    node = existing_node(cfg, resources)
    if node is not None:
        conn.notes.append(f"proxmox.node: auto: the container is on node {node}")
        _use(conn, node, ssh_for_node(cfg, node))
        return
    online = [str(n["node"]) for n in pve.get("/nodes") or [] if n.get("status") == "online"]
    candidates = [n for n in online if n in cfg.ssh.nodes]
    if not cfg.gpu.enabled:
        chosen, why = choose_node([NodeGpus(n) for n in candidates], cfg.proxmox.placement, need_gpu=False)
        _use(conn, chosen, ssh_for_node(cfg, chosen))
        conn.notes.append(f"proxmox.node: auto placed the container on node {chosen}: {why}")
        return
    sshs = {n: ssh_for_node(cfg, n) for n in candidates}
    try:
        seen = [node_gpus(n, sshs[n]) for n in candidates]
        chosen, why = choose_node(seen, cfg.proxmox.placement, share=cfg.gpu.share)
    except ProvisionError:
        for s in sshs.values():
            s.close()
        raise
    for n, s in sshs.items():
        if n != chosen:
            s.close()
    _use(conn, chosen, sshs[chosen])
    conn.notes.append(f"proxmox.node: auto placed the container on node {chosen}: {why}")


def _use(conn: Connections, node: str, ssh: SSH) -> None:
    conn.pve.node = node
    conn.ssh.close()
    conn.ssh = ssh
