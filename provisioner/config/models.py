"""What the host file's model list means: each model's effective serving settings, Claude Code's
slot mapping, and whether llama-server runs in router mode.

Pure functions of the validated ``HostFile``; the loader's cross-checks, the units, the gateway
config, the clients, doctor and bench all read the list through here, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import HostFile, Model

#: Claude Code's jobs the host file maps to models (clients.claude_code.models)
SLOTS = ("main", "small_fast")


@dataclass(frozen=True)
class Serving:
    """One model's serving settings: its own where given, else the ``server:`` section's."""

    ctx_size: int
    parallel: int
    ngl: str
    fit: bool
    flash_attn: str
    cache_type_k: str
    cache_type_v: str
    reasoning: str
    reasoning_budget: int | None
    override_kv: tuple[str, ...]


def serving(cfg: HostFile, m: Model) -> Serving:
    s = cfg.server

    def pick(name: str):  # noqa: ANN202 - the field's own type
        own = getattr(m, name)
        return getattr(s, name) if own is None else own

    return Serving(ctx_size=pick("ctx_size"), parallel=pick("parallel"), ngl=str(pick("ngl")), fit=pick("fit"),
                   flash_attn=pick("flash_attn"), cache_type_k=pick("cache_type_k"),
                   cache_type_v=pick("cache_type_v"), reasoning=pick("reasoning"),
                   reasoning_budget=pick("reasoning_budget"), override_kv=tuple(pick("override_kv")))


def router_mode(cfg: HostFile) -> bool:
    """Several models: one llama-server in router mode (a child process per loaded model).

    One model keeps the single-process server: its ``/health`` means "the model is loaded", and
    nothing changes for a host file that never listed more than one.
    """
    return len(cfg.models) > 1


def models_max(cfg: HostFile) -> int:
    """How many models may be loaded at once (llama-server ``--models-max``); all of them by default."""
    n = len(cfg.models)
    return min(cfg.server.models_max or n, n) if n else 0


def by_alias(cfg: HostFile) -> dict[str, Model]:
    return {m.model_id: m for m in cfg.models}


def claude_slots(cfg: HostFile) -> dict[str, str]:
    """slot -> alias: main defaults to the first model, small_fast to main."""
    if not cfg.models:
        return {}
    wanted = cfg.clients.claude_code.models
    main = wanted.main or cfg.models[0].model_id
    return {"main": main, "small_fast": wanted.small_fast or main}


def claude_code_models(cfg: HostFile) -> list[Model]:
    """The models a Claude Code slot uses (the 32K context floor applies to them)."""
    if not cfg.clients.claude_code:
        return []
    table = by_alias(cfg)
    return [table[a] for a in dict.fromkeys(claude_slots(cfg).values()) if a in table]
