"""The resolv.conf trap: an immutable /etc/resolv.conf stops the container from starting.

At every start PVE rewrites the CT's /etc/resolv.conf by rename()-ing a temp file
over it; ``chattr +i`` (often used to stop something from rewriting DNS) makes
that fail with ``close (rename) atomic file '/etc/resolv.conf' failed: Operation
not permitted`` and the container does not start.

- Running CT, flag found by the facts (``lsattr``): remove it now, before the next
  start trips over it (inside the CT; a privileged CT may, an unprivileged one may
  not, then from the host through the container's /proc/<pid>/root).
- Start fails with that message: ``start_container`` calls ``fix_on_host`` (``pct
  mount``, ``chattr -i`` on the mounted rootfs, ``pct unmount``) and retries once.
- A restart (``up --restart``, pending keys) is a stop and a start: the resolv step runs
  before the container step so the flag is gone first; should a restart still fail and
  leave the CT stopped (the fact could not see the flag), ``restart_container`` looks
  through ``pct mount`` itself and starts the CT again once it removed the flag.

We never set ``+i``. Whoever wanted DNS fixed gets it the supported way: the
container's ``nameserver``/``searchdomain`` (set by the container step), or, when
the file held hand-written DNS and none is configured, ``/etc/.pve-ignore.resolv.conf``
so PVE leaves the file as it is.
"""

from __future__ import annotations

import re
import shlex

from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import RemoteError, TaskFailed
from ..facts.services import RESOLV_FACT, ResolvFacts

STEP = "resolv"
FAILURE = "close (rename) atomic file '/etc/resolv.conf' failed"
MOUNTED_RE = re.compile(r"mounted CT \d+ in '([^']+)'")


def is_resolv_failure(exc: TaskFailed) -> bool:
    """Did this start task fail on an immutable /etc/resolv.conf?"""
    text = " ".join([str(exc.exitstatus or ""), exc.message, *exc.log_tail])
    return FAILURE in text


def fix_script(root: str, keep_custom_dns: bool) -> str:
    """Shell that removes +i from ``<root>/etc/resolv.conf``; prints what it found and did."""
    q = shlex.quote(root.rstrip("/") + "/etc/resolv.conf")
    ignore = shlex.quote(root.rstrip("/") + "/etc/.pve-ignore.resolv.conf")
    lines = ["set -e", f"f={q}",
             "attrs=$(lsattr -d \"$f\" 2>/dev/null | cut -d' ' -f1 || true)",
             "echo \"found $attrs\"",
             "case \"$attrs\" in *i*) chattr -i \"$f\"; echo removed;; esac"]
    if keep_custom_dns:
        lines.append(f"if ! grep -q '^# --- BEGIN PVE ---' \"$f\" 2>/dev/null; then : > {ignore}; echo ignored; fi")
    return "\n".join(lines) + "\n"


def _keep_custom(actx: ApplyContext) -> bool:
    """Keep a hand-written resolv.conf only when the host file does not set DNS itself."""
    c = actx.cfg.container
    return not (c.nameserver or c.searchdomain)


def _note(actx: ApplyContext, vmid: int, how: str, output: str) -> None:
    did = "; PVE will leave the file alone (/etc/.pve-ignore.resolv.conf created, keeping its hand-written DNS)" \
        if "ignored" in output.split() else \
        ("; PVE now writes it at each start from the container's nameserver/searchdomain"
         if not _keep_custom(actx) else "")
    actx.plan.notes.append(f"CT {vmid}: /etc/resolv.conf was immutable (chattr +i), which stops the container "
                           f"from starting; removed the flag {how}{did}. Do not set +i again: use "
                           "container.nameserver/searchdomain or /etc/.pve-ignore.resolv.conf")


def fix_on_host(actx: ApplyContext, vmid: int) -> bool:
    """Remove +i on a stopped CT's resolv.conf through ``pct mount`` (the CT cannot start before).

    Returns whether the flag was there (and is gone now)."""
    ssh = actx.ssh
    actx.status(f"CT {vmid}: removing the immutable flag from /etc/resolv.conf (pct mount)")
    mounted = ssh.run(f"pct mount {int(vmid)}")
    mounted.check(f"pct mount {vmid}", vmid=vmid, step=STEP)
    m = MOUNTED_RE.search(mounted.stdout)
    root = m.group(1) if m else f"/var/lib/lxc/{int(vmid)}/rootfs"
    try:
        result = ssh.run("bash -s", stdin=fix_script(root, _keep_custom(actx)).encode())
        result.check(f"chattr -i on CT {vmid}'s resolv.conf", vmid=vmid, step=STEP)
    finally:
        ssh.run(f"pct unmount {int(vmid)}").check(f"pct unmount {vmid}", vmid=vmid, step=STEP)
    removed = "removed" in result.stdout.split()
    if removed:
        _note(actx, vmid, "from the host (pct mount)", result.stdout)
    return removed


def fix_running(actx: ApplyContext) -> None:
    """Remove +i while the CT runs: inside it if allowed, else from the host via /proc/<pid>/root."""
    vmid = actx.vmid
    keep = _keep_custom(actx)
    inside = actx.ct().run(fix_script("/", keep))
    if inside.ok and "removed" in inside.stdout.split():
        _note(actx, vmid, "inside the container", inside.stdout)
        return
    # an unprivileged CT lacks CAP_LINUX_IMMUTABLE in its own user namespace: go through the host
    pid = actx.ssh.run(f"lxc-info -n {int(vmid)} -p -H")
    if pid.ok and pid.stdout.strip().isdigit():
        root = f"/proc/{pid.stdout.strip()}/root"
        result = actx.ssh.run("bash -s", stdin=fix_script(root, keep).encode())
        if result.ok and "removed" in result.stdout.split():
            _note(actx, vmid, "from the host (through the container's /proc/<pid>/root)", result.stdout)
            return
    raise RemoteError(f"CT {vmid}: /etc/resolv.conf is immutable and the flag could not be removed",
                      output=inside.stderr, vmid=vmid, step=STEP,
                      fix=f"on the host: pct stop {vmid}; pct mount {vmid}; "
                          f"chattr -i /var/lib/lxc/{vmid}/rootfs/etc/resolv.conf; pct unmount {vmid}")


class ResolvStep:
    """Right after the container step: find the immutable resolv.conf before it bites."""

    name = STEP

    def __init__(self) -> None:
        self.facts = [RESOLV_FACT]

    def plan(self, ctx: PlanContext) -> list[Change]:
        facts: ResolvFacts | None = ctx.fact(RESOLV_FACT.name)
        if facts is None:
            return []  # CT not running: a failing start is handled by start_container
        if not facts.lsattr_ok:
            ctx.notes.append("could not read /etc/resolv.conf's attributes in the container (lsattr failed)")
            return []
        if not facts.immutable:
            return []

        def apply(actx: ApplyContext) -> None:
            if actx.plan.ct_running:
                fix_running(actx)
            else:  # doctor read a stopped CT's file through `pct mount`: fix it the same way
                fix_on_host(actx, actx.vmid)

        return [Change(STEP, "fix", f"ct {ctx.vmid}",
                       "remove the immutable flag from /etc/resolv.conf "
                       + ("(it would stop the next start)" if ctx.ct_running else "(it stops the container from starting)"),
                       apply, diff={"/etc/resolv.conf": ("chattr +i", "-i")})]
