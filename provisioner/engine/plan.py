"""Changes and plans: what `plan` shows and what `up` applies.

A step is a pure function of (config, facts) that returns the changes it
needs — `plan` and `up` run the same code, `up` then calls each change's
``apply``. A step that needs nothing returns no change; it may say why in
``PlanContext.notes`` (shown with --verbose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..redact import redact, redact_obj

if TYPE_CHECKING:
    from .context import ApplyContext, PlanContext


@dataclass
class Change:
    step: str
    action: str
    target: str
    summary: str
    apply: Callable[["ApplyContext"], None] = field(repr=False)
    diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: re-gather facts after applying (the container appeared, started, ...)
    refresh: bool = False
    #: what applying it found, set by ``apply`` when the summary (why it was planned) would read
    #: wrong afterwards (verify: planned because /health said 503, done: healthy)
    result: str | None = None

    @property
    def done_text(self) -> str:
        """The line shown once it is applied."""
        return self.result or self.summary

    def as_dict(self) -> dict[str, Any]:
        return redact_obj({
            "step": self.step, "action": self.action, "target": self.target, "summary": self.summary,
            "diff": {k: {"before": b, "after": a} for k, (b, a) in self.diff.items()},
            **({"result": self.result} if self.result else {}),
        })

    def render(self) -> str:
        lines = [f"{self.action:>8}  {self.target}  {redact(self.summary)}"]
        for key, (before, after) in self.diff.items():
            lines.append(f"{'':>10}{key}: {_show(before)} → {_show(after)}")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = redact(str(value))
    return text if len(text) <= 120 else text[:117] + "..."


class Step(Protocol):
    """One domain of convergence (container, gpu, driver, cuda, llama, model, services, clients)."""

    name: str

    def plan(self, ctx: "PlanContext") -> list[Change]: ...
