"""Facts from the Proxmox API: which container is ours, its config, pending keys, state.

A no-op run costs four calls: version, resources, pending (current values and pending ones),
status.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..connectors.pve import PVE
from ..errors import ProxmoxError

MARKER_TAG = "provision"
MARKER_LINE = "managed-by: provision"


@dataclass(frozen=True)
class ContainerState:
    vmid: int
    config: dict[str, str]
    digest: str
    #: key -> pending value ("" with delete=True when a delete is pending)
    pending: dict[str, str] = field(default_factory=dict)
    pending_delete: frozenset[str] = frozenset()
    status: str = "stopped"
    node: str = ""
    #: the value in force now of each key with a pending change or delete (``/pending``'s "value")
    pending_was: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def ours(self) -> bool:
        return has_marker(self.config)


@dataclass(frozen=True)
class PveFacts:
    version: str  # "9.1" (major.minor)
    release: str  # "9.1.3"
    ct: ContainerState | None
    #: the vmid to create when ct is None (None = ask /cluster/nextid at create time)
    vmid: int | None
    #: every vmid in the cluster (to spot a foreign container on our vmid)
    used_vmids: frozenset[int] = frozenset()
    #: the node the API answers for (``proxmox.node``, or where ``auto`` put the container)
    node: str = ""


def has_marker(config: dict[str, Any]) -> bool:
    tags = str(config.get("tags", "")).replace(",", ";").split(";")
    return MARKER_TAG in tags and MARKER_LINE in str(config.get("description", ""))


def _short_version(release: str) -> str:
    parts = release.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else release


def find_ours(resources: list[dict[str, Any]], hostname: str, node: str) -> int | None:
    """A container we made earlier for this host file: our tag and the same hostname."""
    for r in resources:
        if r.get("type") != "lxc":
            continue
        tags = str(r.get("tags", "")).replace(",", ";").split(";")
        if MARKER_TAG in tags and r.get("name") == hostname and r.get("node", node) == node:
            return int(r["vmid"])
    return None


def gather_pve(pve: PVE, *, vmid: int | None, hostname: str) -> PveFacts:
    """Read what the API knows, in as few calls as possible."""
    info = pve.version()
    release = str(info.get("release") or info.get("version", ""))
    resources = pve.get("/cluster/resources", type="vm") or []
    used = frozenset(int(r["vmid"]) for r in resources if "vmid" in r)
    target = vmid if vmid is not None else find_ours(resources, hostname, pve.node)
    ct = None
    if target is not None and target in used:
        node = next((r.get("node") for r in resources if int(r.get("vmid", -1)) == target), pve.node)
        if node != pve.node:
            raise ProxmoxError(f"vmid {target} exists on node {node}, not on {pve.node}",
                               host=pve.endpoint.host, fix="use another container.vmid or proxmox.node")
        # One read for both: GET .../pending lists every key with its current ``value`` (the digest
        # too) and its ``pending`` value or ``delete`` flag (pve-guest-common src/PVE/GuestHelpers.pm:
        # 223-263 config_with_pending_array@4a8f6cb). GET config would not do: it already merges the
        # pending values in, so a diff against it shows nothing pending. The two reads run at once.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pve-facts") as pool:
            futures = [pool.submit(pve.get, pve.ct(target, sub)) for sub in ("pending", "status/current")]
            pending_list, status = (f.result() for f in futures)
        pending_list = pending_list or []
        config = {str(p["key"]): str(p["value"]) for p in pending_list if "value" in p}
        digest = config.pop("digest", "")
        pending = {p["key"]: str(p["pending"]) for p in pending_list if "pending" in p}
        deletes = frozenset(p["key"] for p in pending_list if p.get("delete"))
        was = {p["key"]: str(p["value"]) for p in pending_list
               if "value" in p and ("pending" in p or p.get("delete"))}
        ct = ContainerState(vmid=target, config=config, digest=digest, pending=pending,
                            pending_delete=deletes, status=str(status.get("status", "stopped")),
                            node=pve.node, pending_was=was)
    return PveFacts(version=_short_version(release), release=release, ct=ct,
                    vmid=target, used_vmids=used, node=pve.node)
