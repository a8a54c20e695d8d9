"""Which upstream model serves a request: the model table, Claude Code's slots, ``/v1/models``.

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
A gateway configured before models existed (only ``local_model_id``) serves that one model
for every slot, as it always did.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Mapping

from provisioner.errors import ConfigError
from provisioner.gateway.api_errors import ApiError, not_found

SLOTS = ("main", "small_fast")
#: Claude Code's own model aliases (its /model and --model names) and the slot each means
FAMILIES = {"opus": "main", "sonnet": "main", "haiku": "small_fast"}


@dataclass(frozen=True)
class ModelTable:
    """What the gateway serves, built once from the settings."""

    #: served name -> upstream model id, in the host file's order
    models: Mapping[str, str]
    #: slot -> served name
    slots: Mapping[str, str]
    #: extra requested name -> served name (or an upstream id)
    aliases: Mapping[str, str]
    accept_claude: bool

    @classmethod
    def from_settings(cls, settings: object) -> "ModelTable":
        local = getattr(settings, "local_model_id")
        models = dict(getattr(settings, "models", None) or {local: local})
        first = next(iter(models))
        given = dict(getattr(settings, "claude_slots", None) or {})
        unknown = [k for k in given if k not in SLOTS]
        if unknown:
            raise ConfigError(f"unknown Claude Code slot(s) {', '.join(unknown)}", key="claude_slots",
                              fix=f"use {' and '.join(SLOTS)}")
        missing = [v for v in given.values() if v not in models]
        if missing:
            raise ConfigError(f"claude_slots names {', '.join(missing)}, which is not a served model "
                              f"({', '.join(models)})", key="claude_slots", fix="name one of the keys of models")
        main = given.get("main", local if local in models else first)
        slots = {"main": main, "small_fast": given.get("small_fast", main)}
        return cls(models=models, slots=slots, aliases=dict(getattr(settings, "model_aliases", {}) or {}),
                   accept_claude=bool(getattr(settings, "accept_claude_models", True)))

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
        if requested in self.models:
            return self.models[requested]
        if requested in self.aliases:
            target = self.aliases[requested]
            return self.models.get(target, target)
        slot = self.slot_of(requested)
        if slot is not None:
            return self.models[self.slots[slot]]
        return None

    def not_found(self, requested: str) -> ApiError:
        """Anthropic's 404 ``not_found_error``, naming what does exist."""
        served = ", ".join([*self.models, *self.aliases])
        claude = "; Claude Code's names (opus, sonnet, haiku, claude-…) map to " + \
            f"{self.slots['main']} (main) and {self.slots['small_fast']} (small_fast)" if self.accept_claude else ""
        return not_found(f"model: {requested} (this gateway serves: {served}{claude})")

    def listing(self, created_at: str) -> list[dict]:
        """``GET /v1/models`` entries in both shapes at once: Anthropic's (``type``, ``display_name``,
        ``created_at``) and OpenAI's (``object``, ``created``, ``owned_by``); each client reads its own keys."""
        created = int(datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
        out = []
        for name in dict.fromkeys([*self.models, *self.aliases]):
            role = [s for s, alias in self.slots.items() if alias == name]
            out.append({"type": "model", "id": name, "display_name": name + (f" ({', '.join(role)})" if role else ""),
                        "created_at": created_at, "object": "model", "created": created, "owned_by": "provision"})
        return out

    def page(self, created_at: str) -> dict:
        """The list response: Anthropic's page keys plus OpenAI's ``object: list``."""
        data = self.listing(created_at)
        return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"],
                "object": "list"}
