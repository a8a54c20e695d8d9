"""What the services look like: llama-server's command line, the unit files, the gateway config.

Pure functions of the config (and the container's systemd version): the plan
renders them and compares their sha256 with what the container has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..config.schema import HostFile
from ..facts.services import (
    GATEWAY_CONF,
    GATEWAY_KEY,
    GATEWAY_UNIT,
    GATEWAY_USER,
    GATEWAY_VENV,
    GPU_CHECK,
    LLAMA_BIN,
    LLAMA_UNIT,
    LLAMA_USER,
    SERVER_KEY,
    model_paths,
)
from .scripts import render, systemd_quote

#: RestartSteps= / RestartMaxDelaySec= exist from systemd 254 (Debian 12 ships 252)
RESTART_STEPS_SYSTEMD = 254


def local_host(host: str) -> str:
    """Where to reach a service listening on ``host`` from inside the container."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def llama_args(cfg: HostFile) -> list[str]:
    """llama-server's argv, every flag explicit so a llama.cpp default change cannot surprise us."""
    assert cfg.model is not None
    s = cfg.server
    paths = model_paths(cfg, cfg.model.dir)
    args = [LLAMA_BIN, "-m", paths["model"], "--alias", cfg.model.model_id,
            "--host", s.host, "--port", str(s.port),
            "-c", str(s.ctx_size), "--parallel", str(s.parallel),
            "-fa", s.flash_attn, "-ctk", s.cache_type_k, "-ctv", s.cache_type_v,
            "--fit", "on" if s.fit else "off", "-ngl", str(s.ngl),
            "--api-key-file", SERVER_KEY, "--reasoning", s.reasoning]
    if s.reasoning_budget is not None:
        args += ["--reasoning-budget", str(s.reasoning_budget)]
    if s.metrics:
        args.append("--metrics")
    if "draft" in paths:
        # without --spec-type the draft model is loaded but never used
        args += ["--spec-draft-model", paths["draft"], "--spec-draft-ngl", str(s.ngl),
                 "--spec-type", "draft-simple"]
    if s.threads is not None:
        args += ["--threads", str(s.threads)]
    if s.override_kv:
        # one comma-separated value: repeating the flag is deprecated ("specified multiple times, use
        # comma-separated values instead", b11312 common/arg.cpp:833; the option splits on commas, :2939)
        args += ["--override-kv", ",".join(s.override_kv)]
    args += list(s.extra_args)
    return args


def exec_start(args: list[str]) -> str:
    """``ExecStart=`` value, one argument per continuation line for readability."""
    lines, i = [], 0
    while i < len(args):
        word = systemd_quote(args[i])
        if args[i].startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            word += " " + systemd_quote(args[i + 1])
            i += 1
        lines.append(word)
        i += 1
    return " \\\n    ".join(lines)


@dataclass(frozen=True)
class Sandbox:
    """Which systemd hardening the container can take."""

    #: mount-namespace options (ProtectSystem, PrivateTmp, ReadOnlyPaths, ...) need features nesting=1
    mounts: bool
    #: RestartSteps=/RestartMaxDelaySec= need systemd >= 254
    restart_steps: bool


def sandbox_for(cfg: HostFile, systemd_version: int) -> Sandbox:
    return Sandbox(mounts=cfg.container.features.nesting,
                   restart_steps=systemd_version >= RESTART_STEPS_SYSTEMD)


def llama_unit(cfg: HostFile, sandbox: Sandbox) -> str:
    assert cfg.model is not None
    paths = model_paths(cfg, cfg.model.dir)
    return render("systemd/llama-server.service.j2", model_id=cfg.model.model_id, model_path=paths["model"],
                  draft_path=paths.get("draft"), models_dir=cfg.model.dir, user=LLAMA_USER,
                  exec_start=exec_start(llama_args(cfg)), sandbox=sandbox, key_file=SERVER_KEY,
                  gpu_check=GPU_CHECK)


def gpu_check() -> str:
    """The pre-start check's script (templates/scripts/llama-gpu-check.sh.j2)."""
    from ..facts.llama import ROOT
    from ..facts.nvidia_ct import LIB_DIR

    return render("scripts/llama-gpu-check.sh.j2", stamp=f"{ROOT}/current/BUILD-STAMP.json", lib_dir=LIB_DIR)


def gateway_config(cfg: HostFile) -> str:
    assert cfg.model is not None
    data = {
        "listen_host": cfg.gateway.host,
        "listen_port": cfg.gateway.port,
        "upstream_url": f"http://{local_host(cfg.server.host)}:{cfg.server.port}",
        "mode": cfg.gateway.mode,
        "api_key_file": GATEWAY_KEY,
        "upstream_api_key_file": SERVER_KEY,
        "local_model_id": cfg.model.model_id,
        "model_aliases": dict(cfg.gateway.model_aliases),
        "upstream_timeout_s": 600.0,
    }
    return render("systemd/provision-gateway.json.j2", config_json=json.dumps(data, indent=2))


def gateway_unit(cfg: HostFile, sandbox: Sandbox) -> str:
    return render("systemd/provision-gateway.service.j2", user=GATEWAY_USER, group_llama=LLAMA_USER,
                  exec_start=exec_start([f"{GATEWAY_VENV}/bin/provision-gateway", "--config", GATEWAY_CONF]),
                  llama_unit=LLAMA_UNIT, sandbox=sandbox, venv=GATEWAY_VENV)


def desired_units(cfg: HostFile, systemd_version: int) -> dict[str, str]:
    """path -> content of every unit and config file the services step writes (keys aside)."""
    from ..facts.services import unit_path

    sandbox = sandbox_for(cfg, systemd_version)
    out = {unit_path(LLAMA_UNIT): llama_unit(cfg, sandbox), GPU_CHECK: gpu_check()}
    if cfg.gateway.enabled:
        out[unit_path(GATEWAY_UNIT)] = gateway_unit(cfg, sandbox)
        out[GATEWAY_CONF] = gateway_config(cfg)
    return out
