"""``provision bench FILE [--runs N] [--prompt-tokens N] [--gen-tokens N] [--out report.json]``.

Prompt-processing and generation speed (tokens/s) and time to first token, measured
in the container directly against llama-server and through the gateway, with a
realistic coding-agent prompt; median and spread over N runs after a warm-up. Shows
a table (``--json``: the report on stdout) and saves the report with ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from ..errors import ProvisionError
from .main import _load, app, guarded
from .output import Output, current


def write_report(path: Path, report: dict) -> None:
    """Write atomically (a half-written report is worse than none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


@app.command("bench")
@guarded
def bench(file: Path = typer.Argument(..., help="The host file (YAML)."),
          runs: int = typer.Option(5, "--runs", "-n", help="Measured runs (after the warm-up)."),
          warmup: int = typer.Option(1, "--warmup", help="Warm-up runs, left out of the statistics."),
          prompt_tokens: int = typer.Option(4000, "--prompt-tokens", help="Approximate prompt size in tokens."),
          gen_tokens: int = typer.Option(256, "--gen-tokens", help="Tokens to generate per request."),
          no_tools: bool = typer.Option(False, "--no-tools", help="Leave the tool definitions out of the prompt."),
          direct_only: bool = typer.Option(False, "--direct-only", help="Measure llama-server only, not the gateway."),
          timeout: float = typer.Option(900.0, "--timeout", help="Seconds one request may take."),
          vmid: int | None = typer.Option(None, "--vmid", help="Measure this container; FILE gives the "
                                             "connection and services."),
          out_file: Path | None = typer.Option(None, "--out", "-o", help="Save the JSON report here."),
          model: list[str] | None = typer.Option(None, "--model", "-m", help="Measure this model (by alias; "
                                                 "repeatable). Default: every model.")) -> int:
    """Measure prompt processing and generation speed, directly and through the gateway."""
    from rich.console import Console

    from ..bench.report import build_report, render_table
    from ..bench.runner import BenchOptions, config_params, models_to_measure, public_params, run_in_ct
    from ..connectors.pct import CT
    from ..engine import run
    from ..facts.pve import gather_pve

    out: Output = current()
    loaded = _load(out, file)
    cfg = loaded.config
    if cfg.model is None:
        raise ProvisionError("no model is configured (model:), so there is nothing to measure")
    opts = BenchOptions(prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, runs=runs, warmup=warmup,
                        tools=not no_tools, gateway=not direct_only, timeout=timeout)
    names = models_to_measure(cfg, model)
    every = {name: config_params(cfg, opts, name) for name in names}
    conn = run.connect(cfg)
    try:
        want = vmid if vmid is not None else (cfg.container.vmid if isinstance(cfg.container.vmid, int) else None)
        facts = gather_pve(conn.pve, vmid=want, hostname=cfg.container.hostname)
        if facts.ct is None or not facts.ct.running:
            raise ProvisionError(f"container {vmid or cfg.container.hostname} is not running",
                                 fix="run `provision up` first")
        raws = {}
        with out.progress() as progress:
            for name, params in every.items():  # one model after the other: they would share the GPU
                raws[name] = run_in_ct(CT(conn.ssh, facts.ct.vmid), params,
                                       status=lambda s, n=name: progress.status(f"{n}: {s}" if len(every) > 1 else s))
    finally:
        conn.close()
    target = {"node": cfg.proxmox.node, "host": cfg.proxmox.host, "vmid": facts.ct.vmid,
              "hostname": cfg.container.hostname}
    reports = {name: build_report(raws[name], params=public_params(every[name]), target=target) for name in every}
    # one model: the report as it always was; several: one report per model
    report = next(iter(reports.values())) if len(reports) == 1 else \
        {"schema": "provision-bench-models/1", "models": reports}
    if out_file is not None:
        write_report(out_file, report)
    if out.json_mode:
        typer.echo(json.dumps(report))
    else:
        # piped into a file: wide enough for one line per metric (rich assumes 80 columns then)
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
        for name, one in reports.items():
            if len(reports) > 1:
                console.print(f"[bold]{name}[/bold]")
            console.print(render_table(one))
        if out_file is not None:
            out.line(f"report saved to {out_file}")
    return 0
