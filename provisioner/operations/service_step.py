"""The base of the steps that exist only when a model is configured (services, verify)."""

from __future__ import annotations

from ..config.schema import HostFile
from ..engine.context import PlanContext
from ..engine.plan import Change
from ..facts.services import services_facts


class ModelServiceStep:
    """Gathers the services facts and plans nothing without a model (no units to serve)."""

    name: str

    def __init__(self, cfg: HostFile) -> None:
        self.facts = services_facts(cfg) if cfg.model is not None else []

    def plan(self, ctx: PlanContext) -> list[Change]:
        return [] if ctx.cfg.model is None else self.plan_model(ctx)

    def plan_model(self, ctx: PlanContext) -> list[Change]:
        raise NotImplementedError
