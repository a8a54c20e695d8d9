"""Everything the CLI shows: human output on a rich console, or JSON on stdout.

Progress and messages go to stderr, so `--json` output on stdout stays clean.
Every string passes through redaction before it is shown.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape

from ..errors import ProvisionError
from ..redact import redact, redact_obj

if TYPE_CHECKING:
    from ..config import Loaded
    from ..engine.context import PlanContext
    from ..engine.plan import Change
    from ..engine.run import Report


class Progress:
    """A spinner with the current step; each finished change is printed once."""

    def __init__(self, out: "Output") -> None:
        self._out = out
        self._status: Any = None
        self._t0 = time.monotonic()

    def status(self, message: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{escape(redact(message))}")
        elif self._out.verbose:
            self._out.err.print(f"… {escape(redact(message))}")

    def done(self, change: "Change", seconds: float) -> None:
        if not self._out.json_mode:
            self._out.err.print(f"[green]✓[/] {escape(redact(change.step))}: {escape(redact(change.done_text))} "
                                f"[dim]({seconds:.1f}s)[/]")


class Output:
    def __init__(self, json_mode: bool = False, verbose: bool = False) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        # soft_wrap: never break lines, so commands in messages stay copy-pasteable
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)

    # -- messages --------------------------------------------------------------------------------

    def line(self, text: str) -> None:
        if not self.json_mode:
            self.err.print(redact(text), markup=False)

    # Every text below is the user's or a remote's: escaped, so rich never reads `[a-z0-9]` in a
    # pattern or `[/dev/x]` in a message as markup (it ate the hostname pattern of an error).
    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(redact(text))}")

    def fail_line(self, text: str) -> None:
        self.err.print(f"[red]error:[/] {escape(redact(text))}")

    def log_line(self, text: str) -> None:
        if self.verbose and not self.json_mode:
            self.err.print(f"[dim]  | {escape(redact(text))}[/]", markup=True)

    def error(self, exc: ProvisionError, kind: str) -> None:
        if self.json_mode:
            data = {"ok": False, "error": kind, "message": redact(str(exc))}
            fix = getattr(exc, "fix", None)
            if fix:
                data["fix"] = redact(fix)
            print(json.dumps(data))
        self.err.print(f"[red]error:[/] {escape(redact(str(exc)))}", markup=True, highlight=False)

    def lock_waiter(self) -> Callable[[str, float], None]:
        """What to show while another run holds the lock: on a terminal one line, rewritten with the
        seconds left; elsewhere one line, once (it used to repeat every 2 s)."""
        shown: list[str] = []

        def on_wait(holder: str, left: float) -> None:
            if self.json_mode:
                return
            if left < 0:  # over
                if shown and self.err.is_terminal:
                    self.err.file.write("\n")
                return
            if self.err.is_terminal:
                self.err.file.write(f"\r\033[Kwaiting for the lock held by {redact(holder)}: {left:.0f} s left")
                self.err.file.flush()
            elif not shown:
                self.line(f"waiting up to {left:.0f} s for the lock held by {holder}")
            shown.append(holder)

        return on_wait

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        p = Progress(self)
        if self.json_mode or self.verbose or not self.err.is_terminal:
            yield p
            return
        with self.err.status("starting") as st:
            p._status = st
            yield p

    # -- reports ---------------------------------------------------------------------------------

    def _notes(self, notes: list[str]) -> None:
        for n in notes:
            self.err.print(f"[cyan]note:[/] {escape(redact(n))}")

    def plan(self, report: "Report", loaded: "Loaded") -> None:
        if self.json_mode:
            print(json.dumps(redact_obj({"ok": True, "changes": len(report.planned), **report.as_dict()})))
            return
        if not report.planned:
            self.err.print(f"[green]{escape(str(loaded.path))}: no changes[/] — the host is converged")
        else:
            self.err.print(f"[bold]{escape(str(loaded.path))}: {len(report.planned)} change(s) planned[/]")
            for change in report.planned:
                self.err.print(change.render(), markup=False)
        self._notes(report.notes)

    def applied(self, report: "Report", loaded: "Loaded") -> None:
        if self.json_mode:
            print(json.dumps(redact_obj({"ok": True, "changes": len(report.applied), **report.as_dict()})))
            return
        took = _took(report)
        if not report.applied:
            self.err.print(f"[green]{escape(str(loaded.path))}: nothing changed[/] ({took}; "
                           f"{report.api_calls} API calls, {report.ssh_round_trips} SSH round trips)")
        else:
            self.err.print(f"[bold green]{escape(str(loaded.path))}: {len(report.applied)} change(s) applied[/] "
                           f"in {took}")
        self._notes(report.notes)

    def status(self, ctx: "PlanContext") -> None:
        ct = ctx.pve.ct
        # the container's node: proxmox.node may be "auto" (engine/placement.py)
        data: dict[str, Any] = {"node": ct.node if ct is not None and ct.node else ctx.cfg.proxmox.node,
                                "pve": ctx.pve.release,
                                "container": None, "root_path": ctx.root_path}
        if ct is not None:
            data["container"] = {"vmid": ct.vmid, "status": ct.status, "ours": ct.ours,
                                 "hostname": ct.config.get("hostname"),
                                 "pending": sorted(set(ct.pending) | set(ct.pending_delete))}
        from ..fleet.status import gateway_line, gateway_models
        from ..operations.guard import reboot_pending

        data["gateway_models"] = gateway_models(ctx.cfg)
        data["reboot_pending"] = reboot_pending(ctx)
        for name, value in sorted(ctx.facts.items()):
            data.setdefault("facts", {})[name] = _plain(value)
        if self.json_mode:
            print(json.dumps(redact_obj(data), default=str))
            return
        self.err.print(f"node {data['node']} (PVE {data['pve']}), root-only keys via {ctx.root_path}")
        if ct is None:
            self.err.print("container: not created yet")
        else:
            c = data["container"]
            self.err.print(f"container {c['vmid']} ({escape(str(c['hostname']))}): {c['status']}"
                           + ("" if c["ours"] else " [yellow](not created by provision)[/]"))
            if c["pending"]:
                self.err.print(f"  pending until restart: {', '.join(c['pending'])}")
        line = gateway_line(ctx)
        if line:
            self.err.print(line, markup=False)
        if data["reboot_pending"]:
            self.warn(data["reboot_pending"])
        for name, value in data.get("facts", {}).items():
            self.err.print(f"  {name}: {redact(json.dumps(value, default=str))[:200]}", markup=False)


def _took(report: "Report") -> str:
    """The wall time a user waited, and where it went: ``2.1s: start-up 0.9s, lock 0.1s, run 1.1s``."""
    if report.wall is None:
        return f"{report.seconds:.1f}s"
    parts = [f"start-up {report.timings['startup']:.1f}s" if "startup" in report.timings else "",
             f"lock {report.timings['lock']:.1f}s" if "lock" in report.timings else "", f"run {report.seconds:.1f}s"]
    return f"{report.wall:.1f}s: " + ", ".join(p for p in parts if p)


def _plain(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


_current: Output | None = None


def set_current(out: Output) -> Output:
    """Remember the Output chosen by the global options (one per process)."""
    global _current
    _current = out
    return out


def current() -> Output:
    """The Output for this invocation (commands call this instead of touching click's context)."""
    return _current or set_current(Output())
