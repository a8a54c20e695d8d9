"""`provision up|plan|status` over an inventory (cli/main.py dispatches here).

Exit codes as for one host: 0 all fine, 1 any host failed, 2 bad input (the inventory
is validated as a whole before any host is contacted); `plan --exit-code` gives 2 when
some host has pending changes and none failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from ..cli.output import Output
from ..redact import redact, redact_obj
from .inventory import Host, Inventory, load_inventory
from .runner import Events, HostResult, new_results, run_fleet
from .status import status_row
from .view import FleetView, result_label, summary_table

DEFAULT_WORKERS = 8


def _load(out: Output, path: Path, only: list[str] | None) -> Inventory:
    from ..engine.run import select_steps

    inv = load_inventory(path)
    for w in inv.warnings:
        out.warn(w)
    for host in inv.hosts:  # a wrong --only is bad input, not eight host failures
        select_steps(host.loaded.config, only)
    return inv


def _execute(out: Output, inv: Inventory, job: Callable[[Host, Events], Any], workers: int,
             *, planning: bool = False) -> list[HostResult]:
    mode = "quiet" if out.json_mode else ("live" if out.err.is_terminal else "lines")
    # paramiko logs a failed handshake with a traceback from its own thread (through logging's
    # last-resort handler, onto the terminal); the same failure reaches us as an SSHError.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    results = new_results(list(inv.hosts))  # shown (queued) from the start
    view = FleetView(out.err, results, mode=mode, verbose=out.verbose, planning=planning)
    try:
        with view.running():
            return run_fleet(list(inv.hosts), job, workers=workers, notify=view.notify, results=results)
    except KeyboardInterrupt:
        if not out.json_mode:  # where each host got to; the CLI then says "interrupted" (exit 130)
            width = _table_width(out)
            _print_table(out, summary_table(results, planning=planning, width=width), width)
        raise


def _connected(host: Host, events: Events):
    from ..engine import run

    events.status("connecting")
    conn = run.connect(host.loaded.config)
    events.conn = conn
    return conn


def _plan_job(only: list[str] | None, restart: bool) -> Callable[[Host, Events], Any]:
    from ..engine import run

    def job(host: Host, events: Events) -> Any:
        conn = _connected(host, events)
        try:
            events.status("gathering facts")
            return run.plan(host.loaded, conn, allow_restart=restart, only=only)
        finally:
            conn.close()

    return job


def _up_job(only: list[str] | None, restart: bool, wait: float) -> Callable[[Host, Events], Any]:
    from ..engine import run
    from ..engine.lock import ContainerLock

    def job(host: Host, events: Events) -> Any:
        conn = _connected(host, events)
        try:
            events.status("taking the run lock")
            lock = ContainerLock(host.loaded.config, conn, wait=wait,
                                 on_wait=lambda holder, left: left >= 0 and events.status(
                                     f"waiting for the lock held by {holder} ({left:.0f} s left)"))
            with lock:
                events.status("gathering facts")
                return run.up(host.loaded, conn, allow_restart=restart, status=events.status, log=events.log,
                              on_change=events.change, only=only, lock=lock)
        finally:
            conn.close()

    return job


def _host_json(r: HostResult, planning: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"name": r.name, "node": r.node, "ok": not r.failed,
                            "result": result_label(r, planning=planning), "seconds": round(r.seconds, 3),
                            "api_calls": r.api_calls, "ssh_round_trips": r.ssh_round_trips}
    if r.failed:
        data.update(error=r.error, error_kind=r.error_kind)
    elif hasattr(r.value, "as_dict"):
        data.update(r.value.as_dict())
        data["api_calls"], data["ssh_round_trips"] = r.api_calls, r.ssh_round_trips
    return data


def _table_width(out: Output) -> int:
    """A terminal's width; piped to a file or a CI log, wide enough that no row wraps."""
    return out.err.width if out.err.is_terminal else max(out.err.width, 200)


def _print_table(out: Output, table: Table, width: int) -> None:
    if out.err.is_terminal:
        out.err.print(table)
        return
    from rich.console import Console

    Console(stderr=True, highlight=False, width=width, no_color=out.err.no_color).print(table)


def _wall(results: list[HostResult]) -> float:
    """From the first host's start to the last host's end (the fleet's own time)."""
    started = [r.started for r in results if r.started is not None]
    finished = [r.finished for r in results if r.finished is not None]
    return max(finished) - min(started) if started and finished else 0.0


def _report(out: Output, inv: Inventory, results: list[HostResult], *, planning: bool) -> None:
    if out.json_mode:
        print(json.dumps(redact_obj({"ok": not any(r.failed for r in results), "inventory": str(inv.path),
                                     "seconds": round(_wall(results), 3),
                                     "hosts": [_host_json(r, planning) for r in results]}), default=str))
        return
    if planning:
        for r in results:
            report = r.value
            if r.failed or report is None:
                continue
            if report.planned:
                out.err.print(f"[bold]{r.name}: {len(report.planned)} change(s) planned[/]")
                for change in report.planned:
                    out.err.print(change.render(), markup=False)
    for r in results:
        for note in list(dict.fromkeys(getattr(r.value, "notes", []) or [])):
            out.err.print(f"[cyan]note:[/] {r.name}: {redact(note)}")
    for r in results:  # the whole message (with its fix) once, below the live view
        if r.failed:
            out.err.print(f"[red]error:[/] {r.name}: {r.error}", highlight=False)
    width = _table_width(out)
    _print_table(out, summary_table(results, planning=planning, width=width), width)
    failed = sum(r.failed for r in results)
    out.err.print(f"{len(results)} host(s): {len(results) - failed} ok, {failed} failed "
                  f"({_wall(results):.1f}s)", markup=False)


def fleet_plan(out: Output, path: Path, *, only: list[str] | None, restart: bool, workers: int,
               exit_code: bool) -> int:
    inv = _load(out, path, only)
    results = _execute(out, inv, _plan_job(only, restart), workers, planning=True)
    _report(out, inv, results, planning=True)
    if any(r.failed for r in results):
        return 1
    return 2 if exit_code and any(r.value.planned for r in results) else 0


def fleet_up(out: Output, path: Path, *, plan_only: bool, yes: bool, restart: bool, wait: float,
             only: list[str] | None, workers: int) -> int:
    if plan_only:
        return fleet_plan(out, path, only=only, restart=restart, workers=workers, exit_code=False)
    inv = _load(out, path, only)
    if not yes:
        from ..cli.main import confirm

        planned = _execute(out, inv, _plan_job(only, restart), workers, planning=True)
        _report(out, inv, planned, planning=True)
        if not any(r.failed or r.value.planned for r in planned):
            return 0
        if not confirm(out, "Apply these changes on every host that has them?",
                       what="applying the inventory's changes"):
            out.line("nothing changed")
            return 1
    results = _execute(out, inv, _up_job(only, restart, wait), workers)
    _report(out, inv, results, planning=False)
    return 1 if any(r.failed for r in results) else 0


def _status_job(host: Host, events: Events) -> dict[str, Any]:
    from ..engine import run
    from ..engine.steps import all_steps

    conn = _connected(host, events)
    try:
        events.status("gathering facts")
        return status_row(run.gather_facts(host.loaded.config, conn, all_steps(host.loaded.config)))
    finally:
        conn.close()


def status_table(results: list[HostResult]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("host", "vmid", "node", "state", "GPU(s)", "host driver", "CT driver", "llama-server", "gateway"):
        table.add_column(col, overflow="fold", no_wrap=col != "GPU(s)")
    for r in results:
        if r.failed:
            # the error itself is printed in full above the table
            table.add_row(r.name, "", r.node, Text("failed", style="red"), "", "", "", "", "")
            continue
        row = r.value
        mismatch = row["driver_mismatch"]
        health = lambda v: Text(v, style="green" if v == "ok" else ("red" if v in ("down", "failed") or v.startswith("HTTP") else "dim"))
        table.add_row(r.name, str(row["vmid"] or "-"), row["node"],
                      Text(row["state"], style="green" if row["state"] == "running" else "yellow"),
                      "\n".join(row["gpus"]) or "-", row["host_driver"] or "-",
                      Text((row["ct_driver"] or "-") + (" ≠ host" if mismatch else ""),
                           style="red bold" if mismatch else ""),
                      health(row["llama"]), health(row["gateway"]))
    return table


def fleet_status(out: Output, path: Path, *, workers: int) -> int:
    inv = _load(out, path, None)
    results = _execute(out, inv, _status_job, workers, planning=True)
    if out.json_mode:
        hosts = []
        for r in results:
            entry: dict[str, Any] = {"name": r.name, "ok": not r.failed, "seconds": round(r.seconds, 3)}
            entry.update(r.value if not r.failed else {"node": r.node, "error": r.error, "error_kind": r.error_kind})
            hosts.append(entry)
        print(json.dumps(redact_obj({"ok": not any(r.failed for r in results), "inventory": str(inv.path),
                                     "hosts": hosts}), default=str))
    else:
        for r in results:
            if r.failed:
                out.err.print(f"[red]error:[/] {r.name}: {r.error}", highlight=False)
        _print_table(out, status_table(results), _table_width(out))
        for r in results:
            if not r.failed and r.value["driver_mismatch"]:
                out.warn(f"{r.name}: the container's NVIDIA userspace {r.value['ct_driver']} does not match the "
                         f"host driver {r.value['host_driver']}; run `provision up` for it to converge")
            if not r.failed and r.value["reboot_pending"]:
                out.warn(f"{r.name}: {r.value['reboot_pending']}")
    return 1 if any(r.failed for r in results) else 0
