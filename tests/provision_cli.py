"""The real `provision` CLI in a subprocess, for the tests that drive it end to end.

One place for how it is started and how a failure is reported, so every test module
shows the same evidence (exit code, the end of stderr and stdout) when a run fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `-m provisioner.cli.main` re-imports the real module in its __main__ block, so commands that
# register themselves on the app (doctor, host, bench, rollback...) are there too.
COMMAND = [sys.executable, "-m", "provisioner.cli.main"]


def provision_cli(*args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None,
                  cwd: Path | str | None = None, pythonpath: Path | str | None = None,
                  input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `provision ARGS`; with ``check`` a non-zero exit fails the test with its output.

    ``pythonpath`` runs a snapshot of the code (a copy of the tree) instead of this checkout.
    ``input`` is piped to its stdin (a pipe, not a terminal); without it stdin is /dev/null.
    """
    full_env = {**os.environ, **(env or {})}
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd or pythonpath or ROOT, env=full_env,
                          **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}))
    if check and proc.returncode != 0:
        raise AssertionError(f"provision {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-6000:]}\n{proc.stdout[-3000:]}")
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    """The JSON report that `--json` prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])
