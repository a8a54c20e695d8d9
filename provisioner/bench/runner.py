"""Run the benchmark in the container of a host file: one SSH round trip for all runs.

llama-server usually listens on loopback inside the container, so the measurement
runs there (``measure.py`` through ``pct exec``), against both llama-server and the
gateway, and sends back one JSON line. The operator's machine only builds the
parameters (the prompt included) and the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import HostFile
from ..errors import ProvisionError, RemoteError
from ..facts.services import (
    GATEWAY_KEY,
    GATEWAY_VENV,
    LLAMA_ROOT,
    LLAMA_UNIT,
    SERVER_KEY,
    unit_path,
)
from ..operations.units import local_host
from ..templating import render
from . import measure
from .prompt import coding_prompt


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 4000
    gen_tokens: int = 256
    runs: int = 5
    warmup: int = 1
    tools: bool = True
    gateway: bool = True  # measure through the gateway too (when it is enabled)
    timeout: float = 900.0  # per request: a few thousand tokens of prefill on a CPU take minutes

    def check(self) -> None:
        if self.runs < 1:
            raise ProvisionError("--runs must be at least 1")
        if self.warmup < 0:
            raise ProvisionError("--warmup must be 0 or more")
        if not 1 <= self.gen_tokens <= 32768:
            raise ProvisionError("--gen-tokens must be within 1..32768")
        if not 0 <= self.prompt_tokens <= 1_000_000:
            raise ProvisionError("--prompt-tokens must be within 0..1000000")


def params_for(opts: BenchOptions, *, llama_url: str, gateway_url: str | None, model_id: str | None,
               llama_key_file: str | None, gateway_key_file: str | None,
               build_stamp: str | None = None, unit_file: str | None = None) -> dict[str, Any]:
    """The measurement's parameters (no secrets: key files by path)."""
    opts.check()
    return {"llama_url": llama_url, "gateway_url": gateway_url, "model_id": model_id,
            "llama_key_file": llama_key_file, "gateway_key_file": gateway_key_file,
            "prompt": coding_prompt(opts.prompt_tokens, tools=opts.tools), "gen_tokens": opts.gen_tokens,
            "runs": opts.runs, "warmup": opts.warmup, "timeout": opts.timeout,
            "build_stamp": build_stamp, "unit_file": unit_file}


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """What the report records of the parameters: sizes and settings, not the prompt text."""
    prompt = params["prompt"]
    return {"prompt_tokens": prompt["approx_tokens"], "prompt_chars": len(prompt["system"]) + len(prompt["user"]),
            "code_lines": prompt["code_lines"], "tools": [t["name"] for t in prompt["tools"]],
            "gen_tokens": params["gen_tokens"], "runs": params["runs"], "warmup": params["warmup"],
            "model_id": params["model_id"], "llama_url": params["llama_url"], "gateway_url": params["gateway_url"],
            "direct_api": "/v1/chat/completions (stream; the body the gateway sends upstream)",
            "gateway_api": "/v1/messages (stream)" if params["gateway_url"] else None}


def config_params(cfg: HostFile, opts: BenchOptions, model_id: str | None = None) -> dict[str, Any]:
    """Parameters for the container ``provision up`` made from ``cfg``, measuring ``model_id``
    (default: the first model)."""
    from ..config.models import router_mode

    gateway = cfg.gateway.enabled and opts.gateway
    params = params_for(opts, llama_url=f"http://{local_host(cfg.server.host)}:{cfg.server.port}",
                        gateway_url=f"http://{local_host(cfg.gateway.host)}:{cfg.gateway.port}" if gateway else None,
                        model_id=model_id or (cfg.model.model_id if cfg.model else None),
                        llama_key_file=SERVER_KEY, gateway_key_file=GATEWAY_KEY if gateway else None,
                        build_stamp=f"{LLAMA_ROOT}/BUILD-STAMP.json", unit_file=unit_path(LLAMA_UNIT))
    params["router"] = router_mode(cfg)
    return params


def models_to_measure(cfg: HostFile, names: list[str] | None) -> list[str]:
    """The aliases ``--model`` names (default: every model), refused when one is not in the host file."""
    aliases = [m.model_id for m in cfg.models]
    if not names:
        return aliases
    unknown = [n for n in names if n not in aliases]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"no model {', '.join(unknown)} in the host file", key="--model",
                          fix=f"choose from: {', '.join(aliases)}")
    return list(dict.fromkeys(names))


def script(params: dict[str, Any], python: str = f"{GATEWAY_VENV}/bin/python") -> str:
    """The bash script that runs the measurement with ``params``."""
    return render("scripts/bench.sh.j2", python=python, params_json=json.dumps(params),
                  source=Path(measure.__file__).read_text(encoding="utf-8"))


def parse_output(stdout: str) -> dict[str, Any]:
    """The ``result`` line's JSON; a ProvisionError with the ``error`` line otherwise."""
    for line in stdout.splitlines():
        if line.startswith("result "):
            return json.loads(line[len("result "):])
    errors = [ln[len("error "):] for ln in stdout.splitlines() if ln.startswith("error ")]
    raise ProvisionError(f"the benchmark failed: {errors[0] if errors else 'no result'}",
                         fix="check `provision doctor FILE`; the services must be healthy")


def run_in_ct(ct, params: dict[str, Any], *, status: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the measurement in the container behind ``ct`` (connectors.pct.CT)."""
    def on_line(line: str) -> None:
        if line.startswith("status "):
            status(line[len("status "):])

    budget = params["timeout"] * 2 * (params["runs"] + params["warmup"]) + 120
    result = ct.run(script(params), timeout=budget, on_line=on_line)
    try:
        return parse_output(result.stdout)
    except ProvisionError:
        if result.ok or "error " in result.stdout:
            raise
        raise RemoteError(f"the benchmark script failed (exit {result.exit_code})", exit_code=result.exit_code,
                          output=result.stderr[-2000:], vmid=ct.vmid, step="bench") from None
