"""Run doctor: connect, gather every fact in one SSH round trip (as the engine does), probe the
gateway in parallel, run every check, and (``--fix``) apply the safe fixes.

A healthy host costs: the API reads of ``gather_pve`` (≤ 5 calls), one SSH round trip for all
host and container facts, and two HTTP requests to the gateway made concurrently.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..config.schema import HostFile
from ..engine.context import PlanContext
from ..engine.run import Connections, root_path, step_facts
from ..engine.steps import all_steps
from ..errors import ProvisionError
from ..facts.base import OFFLINE_FAILED, Fact, gather
from ..facts.pve import PveFacts, gather_pve
from ..facts.services import RESOLV_FACT, model_facts, services_facts
from . import (
    checks_access,
    checks_container,
    checks_cuda,
    checks_dns,
    checks_driver,
    checks_guard,
    checks_host,
    checks_services,
)
from .context import Access, DoctorContext, Probe
from .facts import ServerProbe, doctor_facts
from .findings import DoctorReport, Finding, Skipped
from .probes import ct_ip_from_config, gateway_key, gateway_url, run_probes

#: every check, in the order a human reads them: can we get in, the host, the container, inside it
CHECKS: list[Callable[[DoctorContext], list[Finding]]] = [
    *checks_access.CHECKS, *checks_host.CHECKS, *checks_container.CHECKS, *checks_driver.CHECKS, *checks_guard.CHECKS,
    *checks_cuda.CHECKS, *checks_dns.CHECKS, *checks_services.CHECKS]

#: seconds the facts round trip may take with --deep: sha256 of a 20 GB model at ~200 MB/s is ~100 s
DEEP_TIMEOUT = 3600

__all__ = ["CHECKS", "all_facts", "diagnose", "run_checks", "target_config"]


def target_config(cfg: HostFile, vmid: int | None) -> HostFile:
    """``--vmid N``: the host file is used for the connection (and defaults); the container is N."""
    if vmid is None:
        return cfg
    container = cfg.container.model_copy(update={"vmid": vmid})
    return cfg.model_copy(update={"container": container})


def all_facts(cfg: HostFile, *, deep: bool = False) -> list[Fact[Any]]:
    """The engine's step facts plus the services/model/resolv facts and doctor's own (deduplicated);
    ``deep``: also the model files' sha256 (doctor --deep)."""
    facts = step_facts(all_steps(cfg)) + services_facts(cfg) + model_facts(cfg) + [RESOLV_FACT] + \
        doctor_facts(cfg, deep=deep)
    seen: dict[str, Fact[Any]] = {}
    for f in facts:
        seen.setdefault(f.name, f)
    return list(seen.values())


def _capturing(fact: Fact[Any], raw: dict[str, tuple[str, int]]) -> Fact[Any]:
    """The same fact, keeping its raw output for evidence."""
    def process(output: str, code: int, _p=fact.process, _n=fact.name) -> Any:
        raw[_n] = (output, code)
        return _p(output, code)

    return dataclasses.replace(fact, process=process)


def run_checks(d: DoctorContext) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings += check(d)
    return findings


def diagnose(cfg: HostFile, conn: Connections, *, vmid: int | None = None,
             deep: bool = False) -> tuple[DoctorContext, DoctorReport]:
    """Gather everything and run every check (reads only); ``deep`` hashes the model files too."""
    t0 = time.monotonic()
    cfg = target_config(cfg, vmid)
    auth = cfg.proxmox.auth
    access = Access(auth_kind=auth.kind, auth_user=auth.token_id or auth.user or "", root_path=root_path(cfg))
    report = DoctorReport()

    # SSH's handshake runs while the API is read
    ssh_error: list[ProvisionError] = []

    def connect_ssh() -> None:
        try:
            conn.ssh.client()
        except ProvisionError as exc:
            ssh_error.append(exc)

    ssh_thread = threading.Thread(target=connect_ssh, name="doctor-ssh", daemon=True)
    ssh_thread.start()
    want_vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else None
    try:
        pve = gather_pve(conn.pve, vmid=want_vmid, hostname=cfg.container.hostname)
        conn.pve.schema_version = pve.version if pve.version in ("8.4", "9.1") else None
        access.pve_release = pve.release
        if (auth.token_id or auth.user) != "root@pam":  # root@pam holds every privilege
            try:
                access.permissions = conn.pve.get("/access/permissions") or {}
            except ProvisionError:
                access.permissions = None
    except ProvisionError as exc:
        access.api_error = exc
        pve = PveFacts(version="", release="", ct=None, vmid=want_vmid)
    access.api_checked = True
    ssh_thread.join()
    access.ssh_checked = True
    if ssh_error:
        access.ssh_error = ssh_error[0]

    raw: dict[str, tuple[str, int]] = {}
    facts: dict[str, Any] = {}
    probes_future: Future | None = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="doctor-probe")
    base = gateway_url(cfg, ct_ip_from_config(pve.ct.config.get("net0") if pve.ct else None))
    want_probes = bool(cfg.model and cfg.gateway.enabled and pve.ct and pve.ct.running)
    if want_probes and base and (cfg.gateway.api_key is not None):
        probes_future = pool.submit(run_probes, cfg, base, gateway_key(cfg, None))
    if access.ssh_error is None:
        try:
            # a stopped CT: the checks that need only its files read them through `pct mount`
            facts = gather(conn.ssh, [_capturing(f, raw) for f in all_facts(cfg, deep=deep)],
                           vmid=pve.ct.vmid if pve.ct else None, ct_running=bool(pve.ct and pve.ct.running),
                           mount_stopped=True, timeout=DEEP_TIMEOUT if deep else 120)
        except ProvisionError as exc:
            access.ssh_error = exc
    plan = PlanContext(cfg=cfg, pve=pve, facts=facts, root_path=access.root_path)
    if want_probes and probes_future is None:
        sf = facts.get("services.ct")
        server: ServerProbe | None = facts.get("doctor.server")
        base = base or gateway_url(cfg, getattr(sf, "ip", None))
        if base:
            probes_future = pool.submit(run_probes, cfg, base, gateway_key(cfg, server.gateway_key if server else None))
    probes: dict[str, Probe] = probes_future.result() if probes_future else {}
    pool.shutdown()
    d = DoctorContext(cfg=cfg, access=access, plan=plan if access.api_ok or facts else None, raw=raw, probes=probes,
                      vmid=pve.ct.vmid if pve.ct else want_vmid, host=cfg.ssh.host or cfg.proxmox.host)
    report.findings = run_checks(d)
    if not d.ct_running and access.api_ok and pve.ct is not None:
        mount_failed = facts.get(OFFLINE_FAILED)
        report.skipped.append(Skipped("driver, cuda, name resolution, services",
                                      f"CT {pve.ct.vmid} is not running"
                                      + (f"; its files could not be read either (pct mount: {mount_failed})"
                                         if mount_failed else "; resolv.conf and the model were read through "
                                         f"`pct mount {pve.ct.vmid}`")))
    if access.ssh_error is not None:
        report.skipped.append(Skipped("host, container facts", "SSH failed"))
    report.seconds = time.monotonic() - t0
    report.api_calls, report.ssh_round_trips = conn.pve.calls, conn.ssh.round_trips
    return d, report

