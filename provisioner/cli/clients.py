"""``provision clients FILE [--write]``: client configs for the deployed service.

Without ``--write`` the files are printed with the keys masked; with it they are
written into ``clients.output_dir`` (0600 for files holding a key), never
clobbering a file we did not write (it is kept as ``<name>.bak-<time>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ProvisionError
from ..redact import redact
from .main import _load, app, guarded
from .output import Output, current


@app.command("clients")
@guarded
def clients(file: Path = typer.Argument(..., help="The host file (YAML)."),
            write: bool = typer.Option(False, "--write", help="Write the files into clients.output_dir.")) -> int:
    """Render Claude Code, pi and claude-code-router configs for the deployed service."""
    from ..connectors.pct import CT
    from ..engine import run
    from ..facts.pve import gather_pve
    from ..operations.clients import (
        client_inputs,
        max_output,
        max_output_basis,
        reachability_warnings,
        render_clients,
        write_clients,
    )

    out: Output = current()
    loaded = _load(out, file)
    cfg = loaded.config
    if cfg.model is None:
        raise ProvisionError("no model is configured (model:), so there is nothing for clients to use")
    conn = run.connect(cfg)
    try:
        vmid = cfg.container.vmid if isinstance(cfg.container.vmid, int) else None
        facts = gather_pve(conn.pve, vmid=vmid, hostname=cfg.container.hostname)
        if facts.ct is None or not facts.ct.running:
            raise ProvisionError(f"container {cfg.container.hostname} is not running",
                                 fix="run `provision up` first")
        inputs = client_inputs(cfg, CT(conn.ssh, facts.ct.vmid))
    finally:
        conn.close()
    for warning in reachability_warnings(cfg):
        out.warn(warning)
    output_dir = Path(cfg.clients.output_dir).expanduser()
    files = render_clients(cfg, inputs, output_dir)
    if cfg.clients.claude_code:
        out.line(f"Claude Code output cap: {max_output(inputs.n_ctx, inputs.gen_tps)} tokens per answer "
                 f"({max_output_basis(inputs)}), exported by claude-local unless CLAUDE_CODE_MAX_OUTPUT_TOKENS is set")
    if write:
        done = write_clients(files, output_dir)
        if out.json_mode:
            typer.echo(json.dumps({"written": [{"path": p, "result": r} for p, r in done]}))
        for path, result in done:
            out.line(f"{path}: {result}")
        return 0
    if out.json_mode:
        typer.echo(json.dumps({"files": [{"path": str(output_dir / f.path), "mode": oct(f.mode),
                                          "content": redact(f.content)} for f in files]}))
        return 0
    for f in files:
        typer.echo(f"# {output_dir / f.path} (mode {f.mode:04o})")
        typer.echo(redact(f.content))
    out.line(f"context window {inputs.n_ctx} tokens (from llama-server /props); "
             "write these files with --write")
    return 0
