"""The resolv.conf trap: an immutable /etc/resolv.conf stops the container from starting.

At every start PVE rewrites the CT's /etc/resolv.conf (its ``# --- BEGIN PVE ---`` section, or
the whole file when there is none) by rename()-ing a temp file over it (pve-container
src/PVE/LXC/Setup/Base.pm:122-137 and 883-945@94f5585); ``chattr +i`` makes that fail with
``close (rename) atomic file '/etc/resolv.conf' failed: Operation not permitted`` and the
container does not start. That text never reaches the start task: it is the pre-start hook's
output, which LXC logs at DEBUG only, and the task just ends with ``startup for container 'N'
failed`` (src/PVE/LXC.pm:3110-3122, src/pve-container@.service; lxc src/lxc/utils.c:558
@e7b855a). So the trap is detected by looking at the file, not at the error text:

- Running CT, flag found by the facts (``lsattr``): remove it now, before the next start trips
  over it (inside the CT; a privileged CT may, an unprivileged one may not, then from the host
  through the container's /proc/<pid>/root).
- Stopped CT whose start failed: ``fix_on_host`` looks through ``pct mount`` + ``lsattr`` (one
  SSH round trip), removes the flag, and ``start_container`` retries once.
- A restart (``up --restart``, pending keys) is a stop and a start: the resolv step runs
  before the container step so the flag is gone first; should a restart still fail and
  leave the CT stopped (the fact could not see the flag), ``restart_container`` looks
  through ``pct mount`` the same way and starts the CT again once it removed the flag.

With ``/etc/.pve-ignore.resolv.conf`` present (beside its target, Base.pm:739-743) PVE leaves
the file alone: ``+i`` is harmless and ``container.nameserver`` has no effect, so we leave
both alone. We never set ``+i``. Whoever wanted DNS fixed gets it the supported way: the
container's ``nameserver``/``searchdomain`` (set by the container step), or, when the file held
hand-written DNS and none is configured, an ignore file of ours (it says so inside), which we
remove again once a nameserver or search domain is configured.
"""

from __future__ import annotations

import shlex

from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import RemoteError, TaskFailed
from ..facts.services import RESOLV_FACT, ResolvFacts

STEP = "resolv"
FAILURE = "close (rename) atomic file '/etc/resolv.conf' failed"


def is_resolv_failure(exc: TaskFailed) -> bool:
    """Does this start task's text show the trap? Only a start with ``debug=1`` carries the
    hook's words; a normal one ends with ``startup for container 'N' failed`` (see above), so
    callers look at the file instead (``fix_on_host``)."""
    text = " ".join([str(exc.exitstatus or ""), exc.message, *exc.log_tail])
    return FAILURE in text


#: the content of the ignore file we create (PVE only checks that it exists)
OUR_IGNORE = "# created by provision: PVE leaves /etc/resolv.conf alone while this file exists\n"
IGNORE_FILE = "/etc/.pve-ignore.resolv.conf"


def _fix_body(keep_custom_dns: bool) -> list[str]:
    """Shell on ``$R`` (a CT root): +i off unless an ignore file makes it harmless."""
    lines = ['f="$R/etc/resolv.conf"', f'ign="$R{IGNORE_FILE}"',
             "attrs=$(lsattr -d \"$f\" 2>/dev/null | cut -d' ' -f1 || true)",
             "echo \"found $attrs\"",
             'if [ -f "$ign" ]; then echo ignore-present; exit 0; fi',
             "case \"$attrs\" in *i*) ;; *) exit 0;; esac",
             'chattr -i "$f"', "echo removed"]
    if keep_custom_dns:  # hand-written DNS and none configured: keep it, the supported way
        lines.append(f"if ! grep -q '^# --- BEGIN PVE ---' \"$f\" 2>/dev/null; then "
                     f"printf %s {shlex.quote(OUR_IGNORE)} > \"$ign\"; echo ignored; fi")
    return lines


def fix_script(root: str, keep_custom_dns: bool) -> str:
    """Shell that removes +i from ``<root>/etc/resolv.conf``; prints what it found and did."""
    return "\n".join(["set -e", f"R={shlex.quote(root.rstrip('/') or '/')}", *_fix_body(keep_custom_dns)]) + "\n"


def host_script(vmid: int, keep_custom_dns: bool) -> str:
    """One round trip on the host for a stopped CT: ``pct mount``, look, fix, ``pct unmount``."""
    v = int(vmid)
    return "\n".join([
        "set -e",
        f"m=$(pct mount {v})",
        f"R=$(printf '%s\\n' \"$m\" | sed -n \"s/^mounted CT {v} in '\\(.*\\)'$/\\1/p\")",
        f'[ -n "$R" ] || R=/var/lib/lxc/{v}/rootfs',
        f"trap 'pct unmount {v} >/dev/null 2>&1 || echo unmount-failed' EXIT",
        *_fix_body(keep_custom_dns)]) + "\n"


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
    """Look for the trap on a stopped CT through ``pct mount`` + ``lsattr`` and remove it.

    Returns whether the flag was there and is gone now (then a start can succeed). Callable
    before any start or restart of a stopped CT; one SSH round trip."""
    actx.status(f"CT {vmid}: looking at /etc/resolv.conf's attributes (pct mount + lsattr)")
    result = actx.ssh.run("bash -s", stdin=host_script(vmid, _keep_custom(actx)).encode())
    result.check(f"checking CT {vmid}'s /etc/resolv.conf through pct mount", vmid=vmid, step=STEP)
    if "unmount-failed" in result.stdout.split():
        raise RemoteError(f"pct unmount {vmid} failed after looking at its resolv.conf", vmid=vmid, step=STEP,
                          output=result.stdout, fix=f"run `pct unmount {vmid}` on the host")
    if "removed" not in result.stdout.split():
        return False
    _note(actx, vmid, "from the host (pct mount)", result.stdout)
    return True


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
        c = ctx.cfg.container
        dns_configured = bool(c.nameserver or c.searchdomain)
        changes: list[Change] = []
        if facts.ignored and dns_configured:
            if facts.ignored_ours:
                changes.append(self._unignore(ctx))
            else:
                ctx.notes.append(f"CT {ctx.vmid}: {IGNORE_FILE} exists (not ours), so PVE leaves /etc/resolv.conf "
                                 "alone and container.nameserver/searchdomain have no effect; remove the file to "
                                 "let PVE write them")
        if facts.ignored:
            return changes  # PVE does not write the file: +i is harmless (Base.pm:739-743, 883-885)
        if not facts.lsattr_ok:
            ctx.notes.append("could not read /etc/resolv.conf's attributes in the container (lsattr failed)")
            return changes
        if not facts.immutable:
            return changes

        def apply(actx: ApplyContext) -> None:
            if actx.plan.ct_running:
                fix_running(actx)
            else:  # doctor read a stopped CT's file through `pct mount`: fix it the same way
                fix_on_host(actx, actx.vmid)

        return [Change(STEP, "fix", f"ct {ctx.vmid}",
                       "remove the immutable flag from /etc/resolv.conf "
                       + ("(it would stop the next start)" if ctx.ct_running else "(it stops the container from starting)"),
                       apply, diff={"/etc/resolv.conf": ("chattr +i", "-i")})]

    @staticmethod
    def _unignore(ctx: PlanContext) -> Change:
        """Our ignore file, made while no DNS was configured, would now hide the configured one."""
        def apply(actx: ApplyContext) -> None:
            actx.ct().run(f"grep -q 'created by provision' {IGNORE_FILE} && rm -f {IGNORE_FILE}").check(
                f"removing {IGNORE_FILE}", vmid=actx.vmid, step=STEP)
            actx.plan.notes.append(f"CT {actx.vmid}: removed our {IGNORE_FILE}; PVE writes the configured "
                                   "nameserver/searchdomain into /etc/resolv.conf at the next start")

        return Change(STEP, "delete", f"ct {ctx.vmid}",
                      f"remove our {IGNORE_FILE} (container.nameserver/searchdomain are configured now)",
                      apply, diff={IGNORE_FILE: ("ours", None)})
