"""Which model names the gateway answers to, and the upstream model each one means.

The one place model ids are decided: ``/v1/messages`` and ``count_tokens`` resolve the
requested name here, ``/v1/models`` lists what is here, ``provision status`` prints
:meth:`ModelMap.describe`. (Routing several upstream models by name extends this class.)

Names served, in order: every ``model_aliases`` key (→ its upstream id), the local
model id itself, and, with ``accept_claude_models``, any ``claude-*`` name (Claude Code
asks for its own model names) → the local model id.

The local model id is ``local_model_id`` when set (``provision up`` writes the host
file's model alias there, the same ``--alias`` llama-server is started with); unset, it
is learnt from the upstream's ``GET /v1/models`` (llama-server answers its ``--alias``,
else the model file's name: tools/server/server-context.cpp:1351-1362, :4524-4528),
and is ``"local"`` until the upstream has answered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

log = logging.getLogger("provisioner.gateway")
#: the id used before an unset ``local_model_id`` is learnt (llama-server serving one model
#: does not check the name)
PLACEHOLDER_ID = "local"
DISCOVERY_RETRY_S = 5.0


@dataclass
class ModelMap:
    """Requested name → upstream model id."""

    local_model_id: str | None
    aliases: Mapping[str, str] = field(default_factory=dict)
    accept_claude_models: bool = True
    #: the upstream's model id, when ``local_model_id`` is unset and the upstream has said it
    discovered: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> "ModelMap":
        return cls(local_model_id=settings.local_model_id, aliases=dict(settings.model_aliases),
                   accept_claude_models=settings.accept_claude_models)

    @property
    def local_id(self) -> str:
        """The upstream id the gateway's own name and ``claude-*`` names mean."""
        return self.local_model_id or self.discovered or PLACEHOLDER_ID

    def resolve(self, requested: str) -> str | None:
        """The upstream model id for a requested name, or None if the gateway does not serve it."""
        if requested in self.aliases:
            return self.aliases[requested]
        if requested == self.local_id:
            return requested
        if self.accept_claude_models and requested.startswith("claude"):
            return self.local_id
        return None

    def listed(self) -> list[str]:
        """The names ``GET /v1/models`` lists (the local id first)."""
        return list(dict.fromkeys([self.local_id, *self.aliases]))

    def describe(self) -> list[str]:
        """One line per mapping, for people: ``claude-* → smollm2``, ``fast → smollm2``, ``smollm2``."""
        lines = [self.local_id + ("" if self.local_model_id or self.discovered else " (until the upstream says)")]
        if self.accept_claude_models:
            lines.insert(0, f"claude-* → {self.local_id}")
        lines += [f"{name} → {target}" for name, target in self.aliases.items()]
        return lines

    async def discover(self, fetch: Callable[[], Awaitable[Any]], *, retry_s: float = DISCOVERY_RETRY_S) -> None:
        """Learn the upstream's model id (when unset), retrying until the upstream answers."""
        if self.local_model_id:
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
