"""Which upstream model serves a request: the model table, Claude Code's slots, ``/v1/models``.

The one place model ids are decided: ``/v1/messages`` and ``count_tokens`` resolve the
requested name here, ``/v1/models`` lists what is here, ``provision status`` prints
:meth:`ModelTable.describe`.

The table comes from the settings (``models``: served name -> the upstream's model id,
``claude_slots``: ``main`` / ``small_fast`` -> a served name, ``model_aliases``: extra names).
A request's ``model`` resolves, first match wins:

1. a served name (the host file's aliases): itself;
2. a name in ``model_aliases``: its target (a served name resolves through the table);
3. Claude Code's slot and family names: ``main``, ``small_fast``, and (with
   ``accept_claude_models``) ``opus`` / ``sonnet`` / ``haiku`` and any ``claude-…`` id:
   a haiku name goes to the ``small_fast`` slot (Claude Code's background model:
   ``ANTHROPIC_DEFAULT_HAIKU_MODEL``, formerly ``ANTHROPIC_SMALL_FAST_MODEL``), any other to ``main``;
4. nothing: 404 ``not_found_error`` naming the models that exist.

With llama-server's router mode the upstream routes by the body's ``model`` field
(tools/server/server-models.cpp, ``proxy_post``), so the gateway only has to send the right id.

Without ``models`` the gateway serves one model, ``local_model_id``; ``provision up`` writes the
host file's model alias there (the same ``--alias`` llama-server is started with). Unset in a
hand-written config, it is learnt from the upstream's ``GET /v1/models`` (llama-server answers
its ``--alias``, else the model file's name: tools/server/server-context.cpp:1351-1362,
:4524-4528), and is ``"local"`` until the upstream has answered.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from provisioner.errors import ConfigError
from provisioner.gateway.api_errors import ApiError, not_found

log = logging.getLogger("provisioner.gateway")
SLOTS = ("main", "small_fast")
#: Claude Code's own model aliases (its /model and --model names) and the slot each means
FAMILIES = {"opus": "main", "sonnet": "main", "haiku": "small_fast"}
#: the id used before an unset ``local_model_id`` is learnt (llama-server serving one model
#: does not check the name)
PLACEHOLDER_ID = "local"
DISCOVERY_RETRY_S = 5.0


@dataclass
class ModelTable:
    """What the gateway serves, built once from the settings."""

    #: served name -> upstream model id, in the host file's order (empty: the one local model)
    configured: Mapping[str, str]
    #: slot -> served name, as the settings give them (validated against ``configured``)
    given_slots: Mapping[str, str]
    #: extra requested name -> served name (or an upstream id)
    aliases: Mapping[str, str]
    accept_claude: bool = True
    local_model_id: str | None = None
    #: the upstream's model id, when neither ``models`` nor ``local_model_id`` is set and the upstream said it
    discovered: str | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Any) -> "ModelTable":
        models = dict(getattr(settings, "models", None) or {})
        given = dict(getattr(settings, "claude_slots", None) or {})
        unknown = [k for k in given if k not in SLOTS]
        if unknown:
            raise ConfigError(f"unknown Claude Code slot(s) {', '.join(unknown)}", key="claude_slots",
                              fix=f"use {' and '.join(SLOTS)}")
        served = list(models) or [settings.local_model_id]
        missing = [v for v in given.values() if v not in served]
        if missing:
            raise ConfigError(f"claude_slots names {', '.join(missing)}, which is not a served model "
                              f"({', '.join(map(str, served))})", key="claude_slots",
                              fix="name one of the keys of models")
        return cls(configured=models, given_slots=given, aliases=dict(getattr(settings, "model_aliases", {}) or {}),
                   accept_claude=bool(getattr(settings, "accept_claude_models", True)),
                   local_model_id=getattr(settings, "local_model_id", None))

    @property
    def local_id(self) -> str:
        """The one local model's upstream id (without ``models``)."""
        return self.local_model_id or self.discovered or PLACEHOLDER_ID

    @property
    def models(self) -> dict[str, str]:
        """Served name -> upstream id: the configured table, else the one local model."""
        return dict(self.configured) or {self.local_id: self.local_id}

    @property
    def slots(self) -> dict[str, str]:
        """Slot -> served name: as given, else ``main`` is the local model (or the first), ``small_fast`` is main."""
        models = self.models
        local = self.local_model_id
        main = self.given_slots.get("main", local if local in models else next(iter(models)))
        return {"main": main, "small_fast": self.given_slots.get("small_fast", main)}

    def slot_of(self, requested: str) -> str | None:
        """The slot a Claude Code name stands for, or None."""
        if requested in SLOTS:
            return requested
        if not self.accept_claude:
            return None
        if requested in FAMILIES:
            return FAMILIES[requested]
        if requested.startswith("claude"):
            return "small_fast" if "haiku" in requested else "main"
        return None

    def resolve(self, requested: str) -> str | None:
        """The upstream model id for ``requested``, or None when nothing serves it."""
        models = self.models
        if requested in models:
            return models[requested]
        if requested in self.aliases:
            target = self.aliases[requested]
            return models.get(target, target)
        slot = self.slot_of(requested)
        if slot is not None:
            return models[self.slots[slot]]
        return None

    def not_found(self, requested: str) -> ApiError:
        """Anthropic's 404 ``not_found_error``, naming what does exist."""
        served = ", ".join([*self.models, *self.aliases])
        slots = self.slots
        claude = ("; Claude Code's names (opus, sonnet, haiku, claude-…) map to "
                  f"{slots['main']} (main) and {slots['small_fast']} (small_fast)") if self.accept_claude else ""
        return not_found(f"model: {requested} (this gateway serves: {served}{claude})")

    def listing(self, created_at: str) -> list[dict]:
        """``GET /v1/models`` entries in both shapes at once: Anthropic's (``type``, ``display_name``,
        ``created_at``) and OpenAI's (``object``, ``created``, ``owned_by``); each client reads its own keys."""
        created = int(datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
        slots = self.slots
        out = []
        for name in dict.fromkeys([*self.models, *self.aliases]):
            role = [s for s, alias in slots.items() if alias == name]
            out.append({"type": "model", "id": name, "display_name": name + (f" ({', '.join(role)})" if role else ""),
                        "created_at": created_at, "object": "model", "created": created, "owned_by": "provision"})
        return out

    def page(self, created_at: str) -> dict:
        """The list response: Anthropic's page keys plus OpenAI's ``object: list``."""
        data = self.listing(created_at)
        return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"],
                "object": "list"}

    def describe(self) -> list[str]:
        """One line per mapping, for people: ``claude-* → smollm2``, ``fast → smollm2``, ``smollm2``."""
        models, slots = self.models, self.slots
        unknown = not (self.configured or self.local_model_id or self.discovered)
        lines = [name + ("" if name == target else f" → {target}") + (" (until the upstream says)" if unknown else "")
                 for name, target in models.items()]
        if self.accept_claude:
            if slots["main"] == slots["small_fast"]:
                lines.insert(0, f"claude-* → {slots['main']}")
            else:
                lines[:0] = [f"claude-*haiku* → {slots['small_fast']}", f"claude-* → {slots['main']}"]
        lines += [f"{name} → {target}" for name, target in self.aliases.items()]
        return lines

    async def discover(self, fetch: Callable[[], Awaitable[Any]], *, retry_s: float = DISCOVERY_RETRY_S) -> None:
        """Learn the upstream's model id (when nothing names it), retrying until the upstream answers."""
        if self.configured or self.local_model_id:
            return
        while self.discovered is None:
            try:
                answer = await fetch()
            except Exception as exc:  # an ApiError from the upstream client: not up yet
                log.debug("model discovery: %s", exc)
            else:
                data = answer.get("data") if isinstance(answer, dict) else None
                ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
                if ids and isinstance(ids[0], str) and ids[0]:
                    self.discovered = ids[0]
                    log.info("the upstream serves model %r: that is the local model id", ids[0])
                    return
            await asyncio.sleep(retry_s)
