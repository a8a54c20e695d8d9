"""What steps see: the config and the facts (planning), plus connections (applying)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..config.schema import HostFile
from ..connectors.pct import CT
from ..connectors.pve import PVE
from ..connectors.ssh import SSH
from ..facts.pve import PveFacts


@dataclass
class PlanContext:
    cfg: HostFile
    pve: PveFacts
    #: host and container facts by name (absent when they could not be gathered yet)
    facts: dict[str, Any]
    #: the root-only path: "api" (root@pam password) or "ssh" (pct set as root)
    root_path: str
    notes: list[str] = field(default_factory=list)
    #: set by `up --restart`: allowed to restart the container to apply pending keys
    allow_restart: bool = False
    #: set by `up --prune`: delete model files we downloaded that no model lists any more
    prune: bool = False

    @property
    def vmid(self) -> int | None:
        return self.pve.ct.vmid if self.pve.ct else self.pve.vmid

    @property
    def ct_running(self) -> bool:
        return bool(self.pve.ct and self.pve.ct.running)

    def fact(self, name: str, default: Any = None) -> Any:
        return self.facts.get(name, default)


@dataclass
class ApplyContext:
    cfg: HostFile
    pve: PVE
    ssh: SSH
    plan: PlanContext
    #: progress reporting: (message) for a long step's status line
    status: Callable[[str], None] = lambda msg: None
    #: log lines of long operations (build output, task logs)
    log: Callable[[str], None] = lambda line: None
    #: values discovered while applying (e.g. the vmid given by /cluster/nextid)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def vmid(self) -> int:
        vmid = self.state.get("vmid") or self.plan.vmid
        assert vmid is not None, "no vmid yet: the container step runs first"
        return int(vmid)

    def ct(self) -> CT:
        return CT(self.ssh, self.vmid)
