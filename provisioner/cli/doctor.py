"""``provision doctor FILE [--vmid N] [--fix] [--yes] [--strict] [--deep]``: check the whole chain.

Each finding is ok / warn / fail with its evidence (the command and the relevant output)
and the exact fix. Exit code: 0 when nothing fails, 1 when something fails; warnings
alone give 0, or 1 with ``--strict``. ``--fix`` shows the safe fixes it will apply, asks
(unless ``--yes`` or no TTY), applies them, checks again and reports the new state.
``--vmid N`` looks at container N; FILE then only provides the connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..redact import redact
from .main import _load, app, confirm, guarded
from .output import Output, current

_MARK = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


def render(out: Output, report, *, verbose: bool) -> None:
    """Human output: one line per finding; evidence and fix for non-ok findings (all with -v)."""
    area = None
    for f in report.findings:
        if f.area != area:
            area = f.area
            out.err.print(f"[bold]{area}[/]")
        out.err.print(f"  {_MARK[f.status]} {redact(f.title)}", highlight=False)
        if f.status == "ok" and not verbose:
            continue
        if f.detail:
            out.err.print(f"       {redact(f.detail)}", markup=False, highlight=False)
        if f.evidence is not None:
            out.err.print(f"       [dim]$ {redact(f.evidence.command)}[/]", highlight=False)
            for line in redact(f.evidence.output).splitlines():
                out.err.print(f"       [dim]| {line}[/]", markup=True, highlight=False)
        if f.fix:
            tag = " [cyan](doctor --fix)[/]" if f.fixable else ""
            out.err.print(f"       fix{tag}: {redact(f.fix)}", highlight=False)
    for s in report.skipped:
        out.err.print(f"[dim]skipped {s.check}: {s.reason}[/]")
    counts = {s: sum(1 for f in report.findings if f.status == s) for s in ("ok", "warn", "fail")}
    out.err.print(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail "
                  f"[dim]({report.seconds:.1f}s, {report.api_calls} API calls, "
                  f"{report.ssh_round_trips} SSH round trips)[/]")


@app.command()
@guarded
def doctor(file: Path = typer.Argument(..., help="The host file (YAML)."),
           vmid: int | None = typer.Option(None, "--vmid", help="Check this container; FILE is used for the "
                                              "connection only."),
           fix: bool = typer.Option(False, "--fix", help="Apply the safe fixes (shown first)."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before fixing."),
           strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
           deep: bool = typer.Option(False, "--deep", help="Also hash the model files and compare with what was "
                                     "verified: reads every byte (about 1 min per 10 GB at 200 MB/s).")) -> int:
    """Check host, container, driver, CUDA, DNS, services and access; say what is wrong and how to fix it."""
    from ..doctor.findings import exit_code
    from ..doctor.fixes import apply_fixes, plan_fixes, withheld
    from ..doctor.runner import diagnose
    from ..engine import run

    out: Output = current()
    loaded = _load(out, file)
    conn = run.connect(loaded.config)
    try:
        if deep and not out.json_mode:
            out.line("--deep: hashing the model files (reads every byte; ~1 min per 10 GB at 200 MB/s)")
        d, report = diagnose(loaded.config, conn, vmid=vmid, deep=deep)
        if fix:
            fixes = plan_fixes(d, report.findings)
            if not out.json_mode:
                render(out, report, verbose=out.verbose)
            reason = withheld(d, report.findings)
            if reason:
                out.line(f"not fixed: {reason}")
            if fixes:
                out.line(f"doctor --fix will apply {len(fixes)} fix(es):")
                for f in fixes:
                    out.line(f"  - {f.summary}  (clears {', '.join(f.findings)})")
                if not yes and not confirm(out, "Apply these fixes?", what=f"applying {len(fixes)} fix(es)",
                                           vmid=d.vmid):
                    out.line("nothing changed")
                    return 1
                from ..engine.lock import ContainerLock

                with ContainerLock(d.cfg, conn, vmid=d.vmid), out.progress() as progress:
                    done = apply_fixes(d, conn.ssh, conn.pve, fixes, status=progress.status, log=out.log_line)
                d, report = diagnose(loaded.config, conn, vmid=vmid, deep=deep)
                report.fixed = done
                report.not_fixed = reason
                out.line("after fixing:")
            else:
                report.not_fixed = reason
                out.line("no safe fix to apply")
                if not out.json_mode:
                    return exit_code(report.findings, strict=strict)
    finally:
        conn.close()
    if out.json_mode:
        print(json.dumps(report.as_dict(strict=strict)))
    else:
        render(out, report, verbose=out.verbose)
    return exit_code(report.findings, strict=strict)
