"""What a fleet run shows: a live table per host on a terminal, one line per event otherwise.

Everything goes to stderr (stdout stays clean for ``--json``); every string was redacted
by the runner before it gets here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .runner import HostResult

STYLE = {"queued": "dim", "running": "bold", "done": "green", "failed": "red"}


def result_label(r: HostResult, *, planning: bool = False) -> str:
    """ok / changed N / N pending / failed / queued / running."""
    if r.state == "failed":
        return "failed"
    if r.state != "done":
        return r.state
    if planning:
        planned = len(getattr(r.value, "planned", []) or [])
        return f"{planned} pending" if planned else "ok"
    applied = len(getattr(r.value, "applied", []) or [])
    return f"changed {applied}" if applied else "ok"


class FleetView:
    """Receives the runner's events; ``live`` on a terminal, plain lines otherwise, or nothing."""

    def __init__(self, console: Console, results: list[HostResult] | None = None, *, mode: str,
                 verbose: bool = False, planning: bool = False) -> None:
        self.console = console
        self.mode = mode  # "live" | "lines" | "quiet"
        self.verbose = verbose
        self.planning = planning
        self.results: list[HostResult] = results or []
        self._live: Live | None = None

    def bind(self, results: list[HostResult]) -> None:
        self.results = results

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        names = max([4] + [len(r.name) for r in self.results])
        nodes = max([4] + [len(r.node) for r in self.results])
        table.add_column("host", no_wrap=True, min_width=names)
        table.add_column("node", no_wrap=True, min_width=nodes)
        table.add_column("state", no_wrap=True, min_width=20)
        table.add_column("elapsed", no_wrap=True, justify="right", min_width=7)
        table.add_column("current step", no_wrap=True, overflow="ellipsis",
                         max_width=max(20, self.console.width - names - nodes - 20 - 7 - 4))
        for r in self.results:
            label = result_label(r, planning=self.planning)
            if r.state == "running" and r.changes:
                label = f"running ({r.changes} changed)"
            step = r.error_summary if r.failed else ("" if r.state == "done" else r.step)
            table.add_row(r.name, r.node, Text(label, style=STYLE.get(r.state, "")),
                          f"{r.seconds:.0f}s" if r.started else "", Text(step))
        return table

    @contextlib.contextmanager
    def running(self) -> Iterator[FleetView]:
        if self.mode != "live":
            yield self
            return
        with Live(console=self.console, get_renderable=self._table, refresh_per_second=4,
                  transient=False) as live:
            self._live = live
            try:
                yield self
            finally:
                self._live = None

    def notify(self, r: HostResult, kind: str, text: str) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "live":
            if kind == "log" and self.verbose and self._live is not None:
                self._live.console.print(Text(f"  {r.name} | {text}", style="dim"))
            return
        stamp = time.strftime("%H:%M:%S")
        if kind == "start":
            line = f"{stamp} {r.name}: started"
        elif kind == "status":
            if not self.verbose:
                return  # one line per change is enough without -v
            line = f"{stamp} {r.name}: … {text}"
        elif kind == "change":
            line = f"{stamp} {r.name}: ✓ {text}"
        elif kind == "log":
            if not self.verbose:
                return
            line = f"{stamp} {r.name}: | {text}"
        else:  # end
            label = result_label(r, planning=self.planning)
            line = f"{stamp} {r.name}: {label} ({r.seconds:.1f}s)" + (f": {text}" if text else "")
        self.console.print(line, markup=False, highlight=False)


def summary_table(results: list[HostResult], *, planning: bool = False, width: int = 100) -> Table:
    """host, result, seconds, API calls, SSH round trips, error."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    names = max([4] + [len(r.name) for r in results])
    table.add_column("host", no_wrap=True, min_width=names)
    table.add_column("result", no_wrap=True, min_width=10)
    table.add_column("seconds", justify="right", no_wrap=True, min_width=7)
    table.add_column("API calls", justify="right", no_wrap=True, min_width=9)
    table.add_column("SSH trips", justify="right", no_wrap=True, min_width=9)
    # the first line only (the whole message with its fix is printed above the table)
    fixed = names + 10 + 7 + 9 + 9 + 6 * 3  # the other columns and their padding
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=max(20, width - fixed))
    for r in results:
        label = result_label(r, planning=planning)
        style = "red" if r.failed else ("green" if label == "ok" else "yellow")
        table.add_row(r.name, Text(label, style=style), f"{r.seconds:.1f}", str(r.api_calls),
                      str(r.ssh_round_trips), Text(r.error_summary))
    return table
