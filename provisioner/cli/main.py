"""The `provision` command line: a thin layer over the engine.

One error handler maps error classes to exit codes: 0 ok, 1 failure,
2 bad input (and `plan --exit-code`: 2 when changes are pending). A bug
prints one line and leaves the traceback in a log file, not on screen.
"""

from __future__ import annotations

from . import clock  # noqa: F401 - first: its fallback start time is this import

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .. import __version__
from ..errors import ConfigError, ProvisionError
from ..redact import redact, redact_obj
from .output import Output, current, set_current

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a Proxmox VE host with an NVIDIA GPU into a private LLM service for coding agents.")

ERROR_LOG = Path.home() / ".cache" / "provision" / "last-error.log"


def _print_version(value: bool) -> None:
    """``--version`` on its own: eager, so click does not first insist on a command."""
    if value:
        typer.echo(f"provision {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(ctx: typer.Context,
            json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
            verbose: bool = typer.Option(False, "--verbose", "-v", help="Show notes, task logs and command output."),
            version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                         help="Print the version and exit.")) -> None:
    ctx.obj = set_current(Output(json_mode=json_out, verbose=verbose))


def guarded(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command body and turn its outcome into an exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        out: Output = current()
        try:
            code = fn(*args, **kwargs) or 0
        except typer.Exit:
            raise
        except ConfigError as exc:
            out.error(exc, kind="config")
            raise typer.Exit(2) from None
        except ProvisionError as exc:
            out.error(exc, kind=type(exc).__name__)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            out.fail_line("interrupted; every step is safe to re-run")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: keep the traceback out of the user's face
            ERROR_LOG.parent.mkdir(parents=True, exist_ok=True)
            ERROR_LOG.write_text(redact(traceback.format_exc()))
            out.fail_line(f"internal error: {redact(str(exc)) or type(exc).__name__} "
                          f"(traceback in {ERROR_LOG}; please report it)")
            raise typer.Exit(1) from None
        raise typer.Exit(code)

    return wrapper


def confirm(out: Output, question: str, *, what: str, vmid: int | None = None) -> bool:
    """Ask ``question`` on a terminal; without one (or with --json), refuse: nobody can answer.

    A pipe is not an answer: `echo n | provision down FILE` once destroyed the container because
    "no terminal" meant "do not ask". Now only --yes means that.
    """
    from ..errors import RefusedError

    if not sys.stdin.isatty() or out.json_mode:
        why = "--json was given" if out.json_mode and sys.stdin.isatty() else "stdin is not a terminal"
        raise RefusedError(f"{what} needs confirmation, and nobody can give it here ({why}); nothing changed",
                           vmid=vmid, fix="run it in a terminal to be asked, or pass --yes")
    return typer.confirm(question, default=False)


def _only(value: Optional[str]) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _is_inventory(file: Path) -> bool:
    """A directory, or a file with a top-level ``hosts:`` (see provisioner/fleet/inventory.py)."""
    from ..fleet.inventory import is_inventory

    return is_inventory(file)


def _load(out: Output, file: Path):
    from ..config import load

    loaded = load(file)
    for w in loaded.warnings:
        out.warn(w)
    return loaded


@app.command()
@guarded
def up(file: Path = typer.Argument(..., help="The host file (YAML), or an inventory: a directory of host files or a file with hosts:."),
       plan_only: bool = typer.Option(False, "--plan", help="Show what would change and change nothing."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before applying."),
       restart: bool = typer.Option(False, "--restart", help="Restart the container to apply pending keys."),
       wait: Optional[float] = typer.Option(None, "--wait", help="Seconds to wait for another run's lock "
                                            "(default: 0 for a host file, 600 for an inventory)."),
       only: Optional[str] = typer.Option(None, "--only", help="Comma list of steps to run (e.g. container,gpu)."),
       workers: int = typer.Option(8, "--workers", min=1, help="Inventory: hosts handled at once."),
       prune: bool = typer.Option(False, "--prune", help="Delete model files we downloaded that no model lists."),
       refresh_models: bool = typer.Option(False, "--refresh-models",
                                           help="Ask the hub about each unpinned model; fetch the changed ones.")) -> int:
    """Create or converge the container and everything in it."""
    from ..engine import run
    from ..engine.lock import ContainerLock

    out: Output = current()
    if _is_inventory(file):
        from ..fleet.commands import fleet_up

        return fleet_up(out, file, plan_only=plan_only, yes=yes, restart=restart,
                        wait=600.0 if wait is None else wait, only=_only(only), workers=workers)
    loaded = _load(out, file)
    conn = run.connect(loaded.config)
    try:
        if plan_only or not yes:
            report = run.plan(loaded, conn, allow_restart=restart, only=_only(only), prune=prune,
                              refresh_models=refresh_models)
            if plan_only or not report.planned or not out.json_mode:
                out.plan(report, loaded)
            if plan_only or not report.planned:
                return 0
            if not confirm(out, "Apply these changes?", what=f"applying {len(report.planned)} change(s)"):
                out.line("nothing changed")
                return 1
        started = clock.since_start()  # Python, imports, the host file, connecting
        lock = ContainerLock(loaded.config, conn, wait=wait or 0.0,
                             on_wait=out.lock_waiter()).start()
        run.prepare(loaded, conn, _only(only))  # while the lock's round trips run
        with lock, out.progress() as progress:
            locked = clock.since_start()
            report = run.up(loaded, conn, allow_restart=restart, status=progress.status, log=out.log_line,
                            on_change=progress.done, only=_only(only), lock=lock,
                            prune=prune, refresh_models=refresh_models)
        report.timings.update(startup=started, lock=locked - started)  # lock: with the overlapped preparation
    finally:
        conn.close()
    report.wall = clock.since_start()  # all of it: the lock's release and closing the connections too
    out.applied(report, loaded)
    return 0


@app.command("plan")
@guarded
def plan_cmd(file: Path = typer.Argument(..., help="The host file (YAML), or an inventory: a directory of host files or a file with hosts:."),
             exit_code: bool = typer.Option(False, "--exit-code", help="Exit 2 when changes are pending."),
             restart: bool = typer.Option(False, "--restart", help="Plan with permission to restart."),
             only: Optional[str] = typer.Option(None, "--only", help="Comma list of steps to plan."),
             workers: int = typer.Option(8, "--workers", min=1, help="Inventory: hosts handled at once."),
             prune: bool = typer.Option(False, "--prune", help="Plan deleting model files no model lists."),
             refresh_models: bool = typer.Option(False, "--refresh-models",
                                                 help="Ask the hub about each unpinned model.")) -> int:
    """Show what `up` would change."""
    from ..engine import run

    out: Output = current()
    if _is_inventory(file):
        from ..fleet.commands import fleet_plan

        return fleet_plan(out, file, only=_only(only), restart=restart, workers=workers, exit_code=exit_code)
    loaded = _load(out, file)
    conn = run.connect(loaded.config)
    try:
        report = run.plan(loaded, conn, allow_restart=restart, only=_only(only), prune=prune,
                          refresh_models=refresh_models)
    finally:
        conn.close()
    out.plan(report, loaded)
    return 2 if exit_code and report.planned else 0


@app.command()
@guarded
def status(file: Path = typer.Argument(..., help="The host file (YAML), or an inventory: a directory of host files or a file with hosts:."),
           workers: int = typer.Option(8, "--workers", min=1, help="Inventory: hosts handled at once.")) -> int:
    """Show the container, its state and what is pending."""
    from ..engine import run
    from ..engine.steps import all_steps

    out: Output = current()
    if _is_inventory(file):
        from ..fleet.commands import fleet_status

        return fleet_status(out, file, workers=workers)
    loaded = _load(out, file)
    conn = run.connect(loaded.config)
    try:
        ctx = run.gather_facts(loaded.config, conn, all_steps(loaded.config))
    finally:
        conn.close()
    out.status(ctx)
    return 0


@app.command()
@guarded
def down(file: Path = typer.Argument(..., help="The host file (YAML)."),
         purge: bool = typer.Option(False, "--purge", help="Also remove it from backup/replication/HA jobs."),
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> int:
    """Stop and destroy the container we created (never one we did not)."""
    from ..engine import run
    from ..engine.lock import ContainerLock
    from ..operations.lifecycle import destroy

    out: Output = current()
    loaded = _load(out, file)
    conn = run.connect(loaded.config)
    try:
        with ContainerLock(loaded.config, conn):  # never while an `up` of it runs
            destroy(loaded.config, conn, purge=purge, out=out,
                    confirm=None if yes else (lambda q, vmid: confirm(out, q, what="destroying the container",
                                                                      vmid=vmid)))
    finally:
        conn.close()
    return 0


@app.command()
@guarded
def schema() -> int:
    """Print the JSON Schema of the host file."""
    from ..config.schema import HostFile

    typer.echo(json.dumps(HostFile.model_json_schema(), indent=2))
    return 0


@app.command()
@guarded
def check(file: Path = typer.Argument(..., help="The host file (YAML), or an inventory.")) -> int:
    """Validate a host file (or an inventory) without contacting anything."""
    out: Output = current()
    if _is_inventory(file):
        from ..fleet.inventory import load_inventory

        inv = load_inventory(file)
        for w in inv.warnings:
            out.warn(w)
        out.line(f"{file}: ok ({len(inv.hosts)} hosts: {', '.join(h.name for h in inv.hosts)})")
        if out.json_mode:
            typer.echo(json.dumps(redact_obj({"file": str(file), "ok": True, "hosts": [h.name for h in inv.hosts],
                                              "warnings": list(inv.warnings)})))
        return 0
    loaded = _load(out, file)
    out.line(f"{file}: ok (container {loaded.config.container.hostname} on node {loaded.config.proxmox.node})")
    if out.json_mode:
        typer.echo(json.dumps(redact_obj({"file": str(file), "ok": True,
                                          "warnings": list(loaded.warnings)})))
    return 0


def _mount_subapps() -> None:
    """Sub-commands that live in their own modules."""
    import importlib

    for module, name in (("provisioner.cli.sim", "sim"),):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(mod.app, name=name)
    for module in ("provisioner.cli.extra",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_mount_subapps()


def run(argv: Optional[list[str]] = None) -> None:
    app(args=argv, prog_name="provision")


if __name__ == "__main__":
    # Run the imported module's app, not this __main__ copy: sub-commands (doctor, clients,
    # rollback) register themselves on `provisioner.cli.main.app`.
    from provisioner.cli.main import run as _run

    _run()
