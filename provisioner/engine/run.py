"""The runner: connect → gather facts → plan → apply → report.

``plan`` and ``up`` run the same step code. ``up`` applies one step at a time and
re-gathers facts only after a change that asked for it (the container was
created or started), so a converged host costs one facts round trip.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Loaded, read_secret
from ..config.schema import HostFile
from ..connectors.pve import PVE, Credentials, Endpoint
from ..connectors.ssh import SSH, SSHTarget
from ..errors import ProvisionError
from ..facts.base import Fact, gather
from ..facts.pve import gather_pve
from .context import ApplyContext, PlanContext
from . import placement, preflight, snapshot
from .plan import Change, Step
from .steps import all_steps


@dataclass
class Connections:
    pve: PVE
    ssh: SSH
    #: said while connecting (e.g. where proxmox.node: auto put the container); shown with the plan's notes
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.ssh.close()


def root_path(cfg: HostFile) -> str:
    """How root-only keys get set: the API as root@pam, else `pct set` over SSH as root."""
    auth = cfg.proxmox.auth
    if auth.kind == "password" and auth.user == "root@pam":
        return "api"
    return "ssh"


def authid(cfg: HostFile) -> str:
    """Who the API sees: the token id (``user@realm!name``) or the user."""
    auth = cfg.proxmox.auth
    return str(auth.token_id or auth.user or "")


def pve_validator(version: str, method: str, path: str, params: dict[str, Any]) -> dict[str, str]:
    """Validate a request against the official schema of the server's version."""
    from ..pveschema import UnknownEndpoint, validate

    if path == "/version":
        return {}
    try:
        return validate(version, method, path, params)
    except UnknownEndpoint:
        return {}


def connect(cfg: HostFile) -> Connections:
    p = cfg.proxmox
    auth = p.auth
    if auth.kind == "token":
        assert auth.token_secret is not None
        creds = Credentials(token_id=auth.token_id,
                            token_secret=read_secret(auth.token_secret, "proxmox.auth.token_secret"))
    else:
        assert auth.password is not None
        creds = Credentials(user=auth.user, password=read_secret(auth.password, "proxmox.auth.password"))
    pve = PVE(Endpoint(host=p.host, port=p.port, node=p.node, ca_file=str(Path(p.ca_file).expanduser()) if p.ca_file else None, fingerprint=p.fingerprint,
                       insecure=p.insecure, timeout=p.timeout), creds,
              validator=pve_validator)
    if p.node == placement.AUTO:  # a cluster: the node of our container, or one placement picks
        conn = Connections(pve=pve, ssh=SSH(SSHTarget(host=p.host)))
        placement.resolve(cfg, conn)
        return conn
    return Connections(pve=pve, ssh=placement.ssh_for_node(cfg, p.node))


def select_steps(cfg: HostFile, only: list[str] | None) -> list[Step]:
    """The steps of `up`, or only those named (``gpu`` selects ``gpu.host`` and friends)."""
    steps = all_steps(cfg)
    if not only:
        return steps
    known = {s.name for s in steps} | {s.name.split(".")[0] for s in steps}
    unknown = [n for n in only if n not in known]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown step(s): {', '.join(unknown)}", key="--only",
                          fix=f"choose from: {', '.join(s.name for s in steps)}")
    return [s for s in steps if s.name in only or s.name.split(".")[0] in only]


def step_facts(steps: list[Step]) -> list[Fact[Any]]:
    seen: dict[str, Fact[Any]] = {}
    for step in steps:
        for fact in getattr(step, "facts", ()):
            seen.setdefault(fact.name, fact)
    return list(seen.values())


def gather_facts(cfg: HostFile, conn: Connections, steps: list[Step], *, allow_restart: bool = False,
                 vmid_hint: int | None = None, prune: bool = False, refresh_models: bool = False) -> PlanContext:
    vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else vmid_hint
    pfacts = gather_pve(conn.pve, vmid=vmid, hostname=cfg.container.hostname)
    conn.pve.schema_version = pfacts.version if pfacts.version in ("8.4", "9.1") else _nearest(pfacts.version)
    running = bool(pfacts.ct and pfacts.ct.running)
    facts = gather(conn.ssh, step_facts(steps), vmid=pfacts.ct.vmid if pfacts.ct else None, ct_running=running)
    if refresh_models:  # the hub's answer for each unpinned model is a fact too (operations/model_refresh.py)
        from ..operations.model_refresh import upstream_revisions

        facts["model.upstream"] = upstream_revisions(cfg)
    return PlanContext(cfg=cfg, pve=pfacts, facts=facts, root_path=root_path(cfg), allow_restart=allow_restart,
                       notes=list(conn.notes), prune=prune)


def _nearest(version: str) -> str:
    """Schema to validate against for versions we have no schema of."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return "9.1"
    return "8.4" if major <= 8 else "9.1"


def _refresh(cfg: HostFile, conn: Connections, steps: list[Step], ctx: PlanContext, allow_restart: bool,
             state: dict[str, Any]) -> PlanContext:
    """Facts again after a change that asked for it; notes carry over."""
    fresh = gather_facts(cfg, conn, steps, allow_restart=allow_restart, vmid_hint=state.get("vmid") or ctx.vmid,
                         prune=ctx.prune)
    fresh.notes = ctx.notes
    return fresh


@dataclass
class Report:
    applied: list[Change] = field(default_factory=list)
    planned: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    api_calls: int = 0
    ssh_round_trips: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    #: the process's whole wall time when the CLI ran it (start-up and the lock included), else None
    wall: float | None = None

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": [c.as_dict() for c in self.applied], "planned": [c.as_dict() for c in self.planned],
                "notes": self.notes, "seconds": round(self.seconds, 3), "api_calls": self.api_calls,
                "ssh_round_trips": self.ssh_round_trips,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                **({"wall_seconds": round(self.wall, 3)} if self.wall is not None else {})}


def _after_start(ctx: PlanContext, step: Step) -> bool:
    """A step that needs the container's own facts, while an existing container is stopped: what it
    would plan from no facts (a reinstall of everything) is not what `up` does after starting it."""
    if ctx.pve.ct is None or ctx.ct_running or step.name == "container":
        return False
    return any(f.where == "ct" for f in getattr(step, "facts", ()))


def prepare(loaded: Loaded, conn: Connections, only: list[str] | None = None) -> None:
    """Work a run needs that may happen before the run lock is held (the CLI does it while the lock is
    being taken): import the steps' code, open the API's TLS connection and ask the version."""
    select_steps(loaded.config, only)
    conn.pve.version()


def plan(loaded: Loaded, conn: Connections, *, allow_restart: bool = False,
         only: list[str] | None = None, prune: bool = False, refresh_models: bool = False) -> Report:
    """Every change `up` would make now, without making any."""
    t0 = time.monotonic()
    cfg = loaded.config
    steps = select_steps(cfg, only)
    ctx = gather_facts(cfg, conn, steps, allow_restart=allow_restart, prune=prune, refresh_models=refresh_models)
    report = Report()
    try:
        preflight.check(conn.pve, ctx, authid(cfg))
    except preflight.MissingPrivileges as exc:
        ctx.notes.append(f"`up` would stop here: {exc.message}\n  fix: {exc.fix}")
    later: list[str] = []
    for step in steps:
        if _after_start(ctx, step):
            later.append(step.name)
            continue
        report.planned += step.plan(ctx)
    if later:
        ctx.notes.append(f"CT {ctx.vmid} is stopped: {', '.join(later)} read their facts inside it, so `up` "
                         "plans them once it has started it (nothing is listed for them here)")
    report.notes = list(dict.fromkeys(ctx.notes))
    report.seconds = time.monotonic() - t0
    report.api_calls, report.ssh_round_trips = conn.pve.calls, conn.ssh.round_trips
    return report


def up(loaded: Loaded, conn: Connections, *, allow_restart: bool = False,
       status: Callable[[str], None] = lambda m: None, log: Callable[[str], None] = lambda ln: None,
       on_change: Callable[[Change, float], None] = lambda c, s: None,
       only: list[str] | None = None, lock: Any = None, prune: bool = False,
       refresh_models: bool = False) -> Report:
    """Converge: plan each step with fresh-enough facts and apply its changes.

    ``lock`` is the container's run lock (engine/lock.py ``ContainerLock``), held by the caller;
    the create step claims the new container's vmid with it.
    """
    t0 = time.monotonic()
    cfg = loaded.config
    steps = select_steps(cfg, only)
    report = Report()
    ctx = gather_facts(cfg, conn, steps, allow_restart=allow_restart, prune=prune, refresh_models=refresh_models)
    preflight.check(conn.pve, ctx, authid(cfg))  # before any change: every privilege this run needs
    state: dict[str, Any] = {"lock": lock} if lock is not None else {}
    for step in steps:
        status(f"{step.name}: planning")
        step_t0 = time.monotonic()
        changes = step.plan(ctx)
        risky = next((c for c in changes if snapshot.kind_of(c)), None)
        if risky is not None and not state.get("snapshot_checked"):
            # A safety net before the first change that can break an existing CT (engine/snapshot.py).
            # Taking a snapshot rewrites the CT config (new digest), so this step is planned again.
            state["snapshot_checked"] = True
            actx = ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx, status=status, log=log, state=state)
            if snapshot.before_first_change(actx, risky):
                ctx = _refresh(cfg, conn, steps, ctx, allow_restart, state)
                changes = step.plan(ctx)
        for change in changes:
            actx = ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx, status=status, log=log, state=state)
            status(f"{change.step}: {change.summary}")
            c0 = time.monotonic()
            try:
                change.apply(actx)
            except ProvisionError as exc:
                exc.step = exc.step or change.step
                raise
            report.applied.append(change)
            if change.step == "container" and change.action == "create":
                state["created"] = True  # a new CT has nothing to protect: no snapshot in this run
            on_change(change, time.monotonic() - c0)
            if change.refresh:
                ctx = _refresh(cfg, conn, steps, ctx, allow_restart, state)
        if changes:
            report.timings[step.name] = time.monotonic() - step_t0
    if report.applied:
        snapshot.note_without_snapshot(ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx, state=state))
    report.notes = list(dict.fromkeys(ctx.notes))
    report.seconds = time.monotonic() - t0
    report.api_calls, report.ssh_round_trips = conn.pve.calls, conn.ssh.round_trips
    return report
