"""The safe fixes ``doctor --fix`` applies, each reusing the step that owns the thing:

| finding                      | fix                                                      |
| ---                          | ---                                                      |
| ``host.device_nodes`` (uvm)  | gpu.host step: ``nvidia-modprobe -u -c=0``               |
| ``host.boot_unit``           | gpu.host step: write and enable the boot unit            |
| ``container.devices`` (missing devN) | ``pct set`` of the missing entries (container.pct_set, as root over SSH) |
| ``driver.userspace``, ``driver.pins`` | driver step: repository, pin, reinstall + hold at the host version |
| ``dns.immutable``            | resolv step: ``chattr -i`` inside, else from the host via /proc/<pid>/root |
| ``services.*_unit`` failed   | ``systemctl restart`` of that unit in the container      |

Anything else (purging packages, restarting the container, rebuilding) is left to the user:
those findings carry the command instead.

A container without our marker is not ours: exactly as `up` refuses to touch it, ``--fix``
applies none of the fixes that change it (``withheld`` says so), unless ``container.adopt``
is set; the host-side fixes still apply.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from ..connectors.ssh import SSH
from ..engine.context import ApplyContext
from ..engine.plan import Change
from ..facts.nvidia import BOOT
from ..facts.services import GATEWAY_UNIT, LLAMA_UNIT
from ..operations.container import pct_set
from ..operations.driver import DriverStep
from ..operations.passthrough import UVM_NODES, GpuHostStep, desired_device_paths
from ..operations.resolv import ResolvStep
from .checks_container import _DEV_KEY, _effective, _new_entries, dev_path
from .context import DoctorContext
from .findings import Finding


@dataclass
class Fix:
    #: the findings this fix clears
    findings: list[str]
    summary: str
    apply: Callable[[ApplyContext], None] = field(repr=False)


def _from_changes(ids: list[str], changes: list[Change]) -> list[Fix]:
    return [Fix(ids, f"{c.step}: {c.summary}", c.apply) for c in changes]


def _restart_fix(fid: str, unit: str, vmid: int) -> Fix:
    def apply(actx: ApplyContext) -> None:
        q = shlex.quote(unit + ".service")
        actx.ct().run(f"systemctl reset-failed {q} 2>/dev/null; systemctl restart {q}").check(
            f"restarting {unit}", vmid=vmid, step="doctor")

    return Fix([fid], f"restart {unit}.service in CT {vmid}", apply)


def _devices_fix(d: DoctorContext) -> Fix | None:
    assert d.ct is not None and d.plan is not None
    eff = _effective(d)
    have = {dev_path(v) for k, v in eff.items() if _DEV_KEY.match(k)}
    missing = [p for p in desired_device_paths(d.plan) if p not in have]
    if not missing:
        return None
    entries = _new_entries(d, missing)
    vmid = d.ct.vmid
    boot = d.fact(BOOT.name)
    modprobe = shlex.quote((boot.nvidia_modprobe if boot else None) or "nvidia-modprobe")
    uvm = " ".join(p for p in missing if p in UVM_NODES)

    def apply(actx: ApplyContext) -> None:
        if uvm:  # PVE refuses a devN whose host node is missing; uvm's come and go with the module
            actx.ssh.run(f"for p in {uvm}; do [ -c $p ] || {modprobe} -u -c=0; done")
        pct_set(actx, vmid, entries, [])

    return Fix(["container.devices"], "pct set " + " ".join(f"--{k} {v}" for k, v in entries.items()), apply)


#: findings whose fix changes the container (not the host)
CT_FIXES = frozenset({"container.devices", "dns.immutable", "driver.userspace", "driver.pins",
                      "services.llama_unit", "services.gateway_unit"})


def may_change_ct(d: DoctorContext) -> bool:
    """The rule `up` applies (operations/container.py): ours by the marker, or adopt: true."""
    return d.ct is not None and (d.ct.ours or d.cfg.container.adopt)


def withheld(d: DoctorContext, findings: list[Finding]) -> str | None:
    """Why the container's fixes are not applied (an unmarked container), or None."""
    bad = sorted({f.id for f in findings if f.status != "ok" and f.fixable} & CT_FIXES)
    if not bad or d.ct is None or may_change_ct(d):
        return None
    return (f"CT {d.ct.vmid} was not created by provision (no 'provision' tag and marker line), so doctor --fix "
            f"leaves it alone ({', '.join(bad)}): apply the fixes shown yourself, or set container.adopt: true "
            "to let provision take it over")


def plan_fixes(d: DoctorContext, findings: list[Finding]) -> list[Fix]:
    """The fixes for the fixable, failing or warning findings, in a safe order (host first)."""
    bad = {f.id for f in findings if f.status != "ok" and f.fixable}
    fixes: list[Fix] = []
    if d.plan is None:
        return fixes
    if not may_change_ct(d):
        bad -= CT_FIXES
    if bad & {"host.device_nodes", "host.boot_unit"}:
        changes = GpuHostStep().plan(d.plan)
        if "host.boot_unit" in bad:
            fixes += _from_changes(["host.boot_unit"], [c for c in changes if c.action == "write"])
        if "host.device_nodes" in bad:
            fixes += _from_changes(["host.device_nodes"], [c for c in changes if c.action == "create"])
    if "container.devices" in bad and d.ct is not None:
        fix = _devices_fix(d)
        if fix:
            fixes.append(fix)
    if "dns.immutable" in bad and d.ct is not None:
        fixes += _from_changes(["dns.immutable"], ResolvStep().plan(d.plan))
    if bad & {"driver.userspace", "driver.pins"}:
        fixes += _from_changes(sorted(bad & {"driver.userspace", "driver.pins"}), DriverStep().plan(d.plan))
    for fid, unit in (("services.llama_unit", LLAMA_UNIT), ("services.gateway_unit", GATEWAY_UNIT)):
        if fid in bad and d.vmid is not None:
            fixes.append(_restart_fix(fid, unit, d.vmid))
    return fixes


def apply_fixes(d: DoctorContext, ssh: SSH, pve, fixes: list[Fix], *,
                status: Callable[[str], None] = lambda m: None, log: Callable[[str], None] = lambda ln: None
                ) -> dict[str, str]:
    """Apply ``fixes`` in order; returns finding id -> what was done. Stops at the first error (raised)."""
    assert d.plan is not None
    done: dict[str, str] = {}
    state: dict = {}
    for fix in fixes:
        actx = ApplyContext(cfg=d.cfg, pve=pve, ssh=ssh, plan=d.plan, status=status, log=log, state=state)
        status(fix.summary)
        fix.apply(actx)
        for fid in fix.findings:
            done[fid] = (done[fid] + "; " if fid in done else "") + fix.summary
    return done
