"""What the services look like: llama-server's command line, the unit files, the gateway config.

Pure functions of the config (and the container's systemd version): the plan
renders them and compares their sha256 with what the container has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config.models import claude_slots, router_mode, serving
from ..config.schema import HostFile, Model
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
    MODELS_PRESET,
    SERVER_KEY,
    STATE_DIR,
    entry_paths,
    model_paths,
)
from .scripts import render, systemd_quote

#: RestartSteps= / RestartMaxDelaySec= exist from systemd 254 (Debian 12 ships 252)
RESTART_STEPS_SYSTEMD = 254


def local_host(host: str) -> str:
    """Where to reach a service listening on ``host`` from inside the container."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def slot_layout(cfg: HostFile, v: Any = None) -> tuple[list[str], int | None]:
    """llama-server's slot flags, and the context each slot gets (None: the model's own).

    With one slot (``--parallel 1``) a background request of Claude Code (a title, its small fast
    model) waits for the main request, which on a slow model takes minutes. With
    ``server.background_slot`` there are two slots over one unified KV pool of ctx_size +
    background_slot tokens, each capped at ctx_size (llama.cpp b11312 common/arg.cpp:1650
    ``--kv-unified-per-slot``, :1724 ``--kv-unified``; with a unified pool every slot may use up to
    the whole pool, src/llama-context.cpp:292): the main request keeps its whole context and a
    small one runs beside it. Two *large* requests at once can fill the pool, and llama-server
    then fails both ("Context size has been exceeded."); set background_slot: 0 for one slot.
    """
    s = v if v is not None else cfg.server  # ``v``: one model's serving settings (config/models.py serving)
    background = cfg.server.background_slot
    if s.parallel == 1 and background and s.ctx_size:
        return (["-c", str(s.ctx_size + background), "--parallel", "2", "--kv-unified",
                 "--kv-unified-per-slot", str(s.ctx_size)], s.ctx_size)
    return ["-c", str(s.ctx_size), "--parallel", str(s.parallel)], (s.ctx_size // s.parallel or None)


def kv_tokens(cfg: HostFile) -> int:
    """Tokens of KV cache llama-server allocates (0: the model's own context), the background slot included."""
    flags, _ = slot_layout(cfg)
    return int(flags[1])


def llama_args(cfg: HostFile) -> list[str]:
    """llama-server's argv, every flag explicit so a llama.cpp default change cannot surprise us."""
    assert cfg.model is not None
    if router_mode(cfg):
        return router_args(cfg)
    s = cfg.server
    m = cfg.model
    v = serving(cfg, m)
    paths = model_paths(cfg, m.dir)
    args = [LLAMA_BIN, "-m", paths["model"], "--alias", m.model_id,
            "--host", s.host, "--port", str(s.port),
            *slot_layout(cfg, v)[0],
            "-fa", v.flash_attn, "-ctk", v.cache_type_k, "-ctv", v.cache_type_v,
            "--fit", "on" if v.fit else "off", "-ngl", v.ngl,
            "--api-key-file", SERVER_KEY, "--reasoning", v.reasoning]
    if v.reasoning_budget is not None:
        args += ["--reasoning-budget", str(v.reasoning_budget)]
    if s.metrics:
        args.append("--metrics")
    if "draft" in paths:
        # without --spec-type the draft model is loaded but never used
        args += ["--spec-draft-model", paths["draft"], "--spec-draft-ngl", v.ngl,
                 "--spec-type", "draft-simple"]
    if s.threads is not None:
        args += ["--threads", str(s.threads)]
    if v.override_kv:
        # one comma-separated value: repeating the flag is deprecated ("specified multiple times, use
        # comma-separated values instead", b11312 common/arg.cpp:833; the option splits on commas, :2939)
        args += ["--override-kv", ",".join(v.override_kv)]
    args += list(s.extra_args)
    return args


#: router mode reads the HF cache too (server-models.cpp:666) and lists every model found there;
#: this directory never exists, so the router serves exactly the preset's models (hf-cache.cpp:385)
ROUTER_NO_CACHE = f"{STATE_DIR}/llama-router-no-cache"


#: the most models a host file lists (config/schema.py), so "all of them" without naming the count
ROUTER_MODELS_MAX = 64


def router_args(cfg: HostFile) -> list[str]:
    """The router's argv: what every model shares. Per-model settings live in the preset, because
    the router's own arguments override every section (tools/server/server-models.cpp:707-711)."""
    s = cfg.server
    # unset: ROUTER_MODELS_MAX, not the list's length, so adding a model leaves this command line
    # (and the running router) alone; not 0 ("unlimited"), which the preload check at
    # tools/server/server-models.cpp:849 compares against as a number and fails for any preload
    args = [LLAMA_BIN, "--models-preset", MODELS_PRESET, "--models-max", str(s.models_max or ROUTER_MODELS_MAX),
            "--models-autoload", "--host", s.host, "--port", str(s.port), "--api-key-file", SERVER_KEY]
    if s.metrics:
        args.append("--metrics")
    if s.threads is not None:
        args += ["--threads", str(s.threads)]
    return args + list(s.extra_args)


def preset_options(cfg: HostFile, m: Model) -> list[tuple[str, str]]:
    """One model's section of the preset: the same settings the single-model command line carries."""
    v = serving(cfg, m)
    paths = entry_paths(cfg, m, m.dir)
    out = [("model", paths["model"]), ("ctx-size", str(v.ctx_size)), ("parallel", str(v.parallel)),
           ("flash-attn", v.flash_attn), ("cache-type-k", v.cache_type_k), ("cache-type-v", v.cache_type_v),
           ("fit", "on" if v.fit else "off"), ("n-gpu-layers", v.ngl), ("reasoning", v.reasoning)]
    if v.reasoning_budget is not None:
        out.append(("reasoning-budget", str(v.reasoning_budget)))
    if "draft" in paths:
        out += [("spec-draft-model", paths["draft"]), ("spec-draft-ngl", v.ngl), ("spec-type", "draft-simple")]
    if v.override_kv:
        # one key per option in a preset: --override-kv takes a comma-separated list (common/arg.cpp:2935-2944)
        out.append(("override-kv", ",".join(v.override_kv)))
    if m.preload:
        out.append(("load-on-startup", "true"))  # a preset-only key (tools/server/README.md, "Model presets")
    return out


def models_preset(cfg: HostFile) -> str:
    models = []
    for m in cfg.models:
        source = f"{m.repo}/{m.file}@{m.revision}" if m.repo else f"local file {m.path}"
        models.append({"alias": m.model_id, "comment": source, "options": preset_options(cfg, m)})
    return render("systemd/llama-models.ini.j2", models=models)


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
    router = router_mode(cfg)
    # one model: the unit waits for its files; router mode: for the preset (each model loads on demand)
    conditions = [MODELS_PRESET] if router else list(model_paths(cfg, cfg.model.dir).values())
    return render("systemd/llama-server.service.j2",
                  # router mode: not the aliases, or adding a model would change the unit (a restart)
                  model_id="router: the models of " + MODELS_PRESET if router else cfg.model.model_id,
                  conditions=conditions, router=router, no_cache=ROUTER_NO_CACHE,
                  models_dir=cfg.model.dir, user=LLAMA_USER,
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
        # every alias the upstream serves (router mode routes by it) and Claude Code's slots
        "models": {m.model_id: m.model_id for m in cfg.models},
        "claude_slots": claude_slots(cfg),
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
    if router_mode(cfg):
        out[MODELS_PRESET] = models_preset(cfg)
    if cfg.gateway.enabled:
        out[unit_path(GATEWAY_UNIT)] = gateway_unit(cfg, sandbox)
        out[GATEWAY_CONF] = gateway_config(cfg)
    return out
