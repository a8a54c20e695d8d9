"""What every check sees: the config, the engine's facts, raw fact output, network probes, access."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import HostFile
from ..engine.context import PlanContext
from ..errors import ProvisionError
from ..facts.pve import ContainerState


@dataclass
class Access:
    """How connecting went: the API (auth) and SSH (host key, login)."""

    #: "password" (a ticket) or "token"
    auth_kind: str
    auth_user: str
    #: "api" (root@pam password) or "ssh" (pct set over SSH as root)
    root_path: str
    api_error: ProvisionError | None = None
    ssh_error: ProvisionError | None = None
    api_checked: bool = False
    ssh_checked: bool = False
    #: PVE release seen (when the API answered)
    pve_release: str | None = None
    #: GET /access/permissions of the API user/token (None: not read, e.g. root@pam)
    permissions: dict[str, dict[str, int]] | None = None

    @property
    def api_ok(self) -> bool:
        return self.api_checked and self.api_error is None

    @property
    def ssh_ok(self) -> bool:
        return self.ssh_checked and self.ssh_error is None


@dataclass
class Probe:
    """One HTTP request doctor made itself (gateway /health, a tiny end-to-end request)."""

    name: str
    url: str
    status: int = 0
    body: str = ""
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


@dataclass
class DoctorContext:
    cfg: HostFile
    access: Access
    #: the engine's view (None when the API could not be read)
    plan: PlanContext | None
    #: fact name -> (raw output, exit code) for evidence
    raw: dict[str, tuple[str, int]] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    #: the vmid doctor looks at (from --vmid, the host file, or the container found by tag)
    vmid: int | None = None
    #: the host's name for evidence commands (`ssh root@HOST ...`)
    host: str = ""

    def fact(self, name: str, default: Any = None) -> Any:
        if self.plan is None:
            return default
        return self.plan.facts.get(name, default)

    def raw_output(self, name: str) -> str:
        return self.raw.get(name, ("", 0))[0]

    @property
    def ct(self) -> ContainerState | None:
        return self.plan.pve.ct if self.plan is not None else None

    @property
    def ct_running(self) -> bool:
        return bool(self.ct and self.ct.running)

    @property
    def ct_facts(self) -> bool:
        """Container facts were gathered (the container runs and SSH worked)."""
        return self.ct_running and self.access.ssh_ok

    def on_host(self, command: str) -> str:
        """The command as a user would type it from their workstation."""
        return f"ssh root@{self.host} {command}" if self.host else command

    def in_ct(self, command: str) -> str:
        return self.on_host(f"pct exec {self.vmid} -- {command}")


def sharing(plan: PlanContext) -> PlanContext:
    """``plan`` with ``gpu.share: true`` (and notes of its own).

    Checks about a container's own GPUs (its devN entries, its driver userspace) look at the
    GPUs it selects whoever else holds them; a GPU another managed container holds too is
    the separate finding ``container.gpu_exclusive``.
    """
    cfg = plan.cfg.model_copy(update={"gpu": plan.cfg.gpu.model_copy(update={"share": True})})
    return dataclasses.replace(plan, cfg=cfg, notes=[])
