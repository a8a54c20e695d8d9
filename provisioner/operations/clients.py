"""Client configs for Claude Code, pi and claude-code-router, from the live deployment.

``client_inputs`` reads in one round trip what the clients need from the container:
its IP, the keys, and llama-server's real context size (``/props``). ``render_clients``
turns that into files (templates in ``templates/clients`` and ``templates/bin``);
``write_clients`` writes them without ever clobbering a file we did not write.

Claude Code talks to the gateway (``ANTHROPIC_BASE_URL``); pi and claude-code-router
speak OpenAI and talk to llama-server itself (``server.host`` must be reachable).
The key is written into the settings files (mode 0600) rather than pointed at:
that is what each client reads without extra wiring; ``claude-local`` holds no secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.models import claude_slots, router_mode, serving
from ..config.schema import HostFile
from ..connectors.pct import CT
from ..errors import ProvisionError
from ..facts.services import GATEWAY_KEY, SERVER_KEY
from ..redact import register
from .scripts import render
from .units import local_host

MANIFEST = ".provision-manifest.json"
PROVIDER = "llama-local"


@dataclass(frozen=True)
class ClientInputs:
    base_url: str  # the gateway, as clients reach it
    openai_url: str  # llama-server, as clients reach it (no /v1)
    gateway_key: str
    server_key: str
    model_id: str
    n_ctx: int
    #: generation speed (tokens/s) llama-server measured over its lifetime (/metrics), None if unknown
    gen_tps: float | None = None
    #: every model (router mode: several) -> its context per request; () means just model_id / n_ctx
    contexts: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ClientFile:
    path: str  # relative to clients.output_dir
    content: str
    mode: int
    secret: bool


#: the longest one answer may take to generate at the measured speed, for the default output cap
ANSWER_SECONDS = 300
#: tokens /metrics must have counted before its speed is trusted (verify generates one)
SPEED_SAMPLE = 64


def max_output(n_ctx: int, gen_tps: float | None = None) -> int:
    """Default output cap per request: a quarter of the context, at most 32K (Claude Code's own), and
    no more than ANSWER_SECONDS of generation at the measured speed (a slow model once ran 10 min
    for one word with 8192 and held the main slot)."""
    cap = max(256, min(32000, n_ctx // 4))
    if gen_tps:
        cap = min(cap, max(256, int(gen_tps * ANSWER_SECONDS)))
    return cap


def max_output_basis(inputs: "ClientInputs") -> str:
    """Where the default output cap comes from, in words (shown in claude-local and by `clients`)."""
    basis = f"a quarter of the {inputs.n_ctx}-token context (at most 32000)"
    if inputs.gen_tps:
        basis += f", and {ANSWER_SECONDS} s at the {inputs.gen_tps:.1f} tokens/s llama-server measured"
    return basis


INPUTS_SCRIPT = """set -u
echo "ip $(ip -4 -o addr show scope global 2>/dev/null | awk '{{split($4,a,"/"); print a[1]; exit}}')"
[ -r {gw_key} ] && echo "gateway_key $(head -n1 {gw_key})"
[ -r {srv_key} ] && echo "server_key $(head -n1 {srv_key})"
h=$(mktemp); chmod 600 "$h"
[ -r {srv_key} ] && printf 'Authorization: Bearer %s\\n' "$(head -n1 {srv_key})" > "$h"
echo "props $(curl -s -m 5 -H @"$h" {props_url} | tr -d '\\n')"
echo "metrics $(curl -s -m 5 -H @"$h" {metrics_url} | grep -E '^llamacpp:tokens_predicted(_seconds)?_total ' | tr '\\n' ' ')"
for m in {models}; do echo "props.$m $(curl -s -m 5 -H @"$h" "{props_url}?model=$m&autoload=false" | tr -d '\\n')"; done
rm -f "$h"
true
"""


def parse_inputs(cfg: HostFile, output: str) -> ClientInputs:
    """The values from INPUTS_SCRIPT's output plus the config."""
    assert cfg.model is not None
    vals: dict[str, str] = {}
    for line in output.splitlines():
        k, _, v = line.partition(" ")
        vals[k] = v.strip()
    contexts: list[tuple[str, int]] = []
    if router_mode(cfg):
        # the router's own /props has no context; each loaded model's /props?model= does
        # (tools/server/server-models.cpp get_router_props); an unloaded one is left unloaded
        # (autoload=false) and its context comes from the host file
        for m in cfg.models:
            n = _n_ctx(vals.get(f"props.{m.model_id}"))
            v = serving(cfg, m)
            contexts.append((m.model_id, n or (v.ctx_size // v.parallel if v.ctx_size else 0)))
        missing = [a for a, n in contexts if n <= 0]
        if missing:
            raise ProvisionError(f"cannot tell the context of {', '.join(missing)}: not loaded, and ctx_size is 0 "
                                 "(the model's own)", fix="send it one request (or set its ctx_size), then run again")
        n_ctx = dict(contexts)[cfg.model.model_id]
    else:
        n_ctx = _n_ctx(vals.get("props"))
    if n_ctx <= 0:
        raise ProvisionError("llama-server did not answer /props (is it running and healthy?)",
                             fix="run `provision up` and wait for it to verify the services")
    if cfg.gateway.enabled and not vals.get("gateway_key"):
        raise ProvisionError(f"no gateway key in the container ({GATEWAY_KEY})", fix="run `provision up` first")
    if not vals.get("server_key"):
        raise ProvisionError(f"no llama-server key in the container ({SERVER_KEY})", fix="run `provision up` first")
    ip = vals.get("ip") or ""
    counters = dict(zip(vals.get("metrics", "").split()[::2], vals.get("metrics", "").split()[1::2]))
    gen_tps = None
    try:
        tokens = float(counters.get("llamacpp:tokens_predicted_total", "0"))
        seconds = float(counters.get("llamacpp:tokens_predicted_seconds_total", "0"))
        if tokens >= SPEED_SAMPLE and seconds > 0:
            gen_tps = tokens / seconds
    except ValueError:
        pass
    if not cfg.clients.base_url and not ip:
        raise ProvisionError("the container has no IPv4 address to point clients at",
                             fix="set clients.base_url to how clients reach the gateway")
    base = (cfg.clients.base_url or f"http://{ip}:{cfg.gateway.port}").rstrip("/")
    server_host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost") \
        else ip
    return ClientInputs(base_url=base, openai_url=f"http://{server_host}:{cfg.server.port}",
                        gateway_key=register(vals.get("gateway_key", "")), server_key=register(vals["server_key"]),
                        model_id=cfg.model.model_id, n_ctx=n_ctx, contexts=tuple(contexts), gen_tps=gen_tps)


def _n_ctx(text: str | None) -> int:
    """The per-slot context from a /props answer (0 when there is none)."""
    try:
        props: Any = json.loads(text or "null")
    except ValueError:
        return 0
    if not isinstance(props, dict):
        return 0
    dgs = props.get("default_generation_settings") or {}
    try:
        return int(dgs.get("n_ctx") or props.get("n_ctx") or 0)
    except (TypeError, ValueError):
        return 0


def reachability_warnings(cfg: HostFile) -> list[str]:
    """Clients that talk to llama-server directly need it to listen beyond the container."""
    if (cfg.clients.pi or cfg.clients.claude_code_router) and cfg.server.host in ("127.0.0.1", "::1", "localhost"):
        return [(f"server.host is {cfg.server.host}: pi and claude-code-router talk to llama-server directly and "
                "cannot reach it from another machine; set server.host: 0.0.0.0 (its API key still applies)")]
    return []


def client_inputs(cfg: HostFile, ct: CT) -> ClientInputs:
    """Read what the clients need from the running container (one SSH round trip)."""
    base = f"http://{local_host(cfg.server.host)}:{cfg.server.port}"
    models = " ".join(m.model_id for m in cfg.models) if router_mode(cfg) else ""
    result = ct.run(INPUTS_SCRIPT.format(gw_key=GATEWAY_KEY, srv_key=SERVER_KEY, props_url=f"{base}/props",
                                         metrics_url=f"{base}/metrics", models=models))
    result.check("reading the deployment's keys and settings", vmid=ct.vmid)
    return parse_inputs(cfg, result.stdout)


def render_clients(cfg: HostFile, inputs: ClientInputs, output_dir: Path) -> list[ClientFile]:
    """Every client file the config asks for, rendered."""
    by_alias = {m.model_id: m for m in cfg.models}
    contexts = inputs.contexts or ((inputs.model_id, inputs.n_ctx),)
    models = [{"id": alias, "n_ctx": n, "max_output": max_output(n, inputs.gen_tps),
               "reasoning": serving(cfg, by_alias[alias]).reasoning != "off" if alias in by_alias
               else cfg.server.reasoning != "off"} for alias, n in contexts]
    slots = claude_slots(cfg) or {"main": inputs.model_id, "small_fast": inputs.model_id}
    values = {"base_url": inputs.base_url, "openai_url": inputs.openai_url, "gateway_key": inputs.gateway_key,
              "server_key": inputs.server_key, "model_id": inputs.model_id, "n_ctx": inputs.n_ctx,
              "max_output": max_output(inputs.n_ctx, inputs.gen_tps), "max_output_basis": max_output_basis(inputs),
              "provider": PROVIDER,
              "reasoning": cfg.server.reasoning != "off", "models": models, "slots": slots,
              "long_context": max(contexts, key=lambda c: c[1])[0]}
    files: list[ClientFile] = []
    if cfg.clients.claude_code:
        settings = "claude-code/settings.json"
        files.append(ClientFile(settings, render("clients/claude-code-settings.json.j2", **values), 0o600, True))
        files.append(ClientFile("bin/claude-local", render("bin/claude-local.j2", **values,
                                                           settings_path=str(output_dir / settings)), 0o755, False))
    if cfg.clients.pi:
        files.append(ClientFile("pi/models.json", render("clients/pi-models.json.j2", **values), 0o600, True))
    if cfg.clients.claude_code_router:
        files.append(ClientFile("claude-code-router/config.json",
                                render("clients/claude-code-router-config.json.j2", **values), 0o600, True))
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_clients(files: list[ClientFile], output_dir: Path) -> list[tuple[str, str]]:
    """Write the files; returns (path, what happened). Foreign or edited files are backed up first."""
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest_path = output_dir / MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    done: list[tuple[str, str]] = []
    for f in files:
        path = output_dir / f.path
        data = f.content.encode()
        action = "written"
        if path.exists():
            current = path.read_bytes()
            if current == data:
                if (path.stat().st_mode & 0o777) != f.mode:
                    os.chmod(path, f.mode)
                manifest[f.path] = _sha(data)
                done.append((str(path), "unchanged"))
                continue
            if manifest.get(f.path) != _sha(current):
                backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, backup)
                os.chmod(backup, 0o600)
                action = f"written (the previous file was not ours or was edited: kept as {backup.name})"
            else:
                action = "updated"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".provision-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, f.mode)
        os.replace(tmp, path)
        manifest[f.path] = _sha(data)
        done.append((str(path), action))
    tmp = manifest_path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    return done
