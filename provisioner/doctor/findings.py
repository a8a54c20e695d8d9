"""What doctor reports: one :class:`Finding` per check result, and the exit code.

A finding says ok / warn / fail, shows its evidence (the command a user can run
to see the same thing, and the relevant part of its output), and, unless it is
ok, the exact fix. ``fixable`` marks the fixes ``doctor --fix`` may apply on its
own (the safe ones); the others name the command for a human to run.

Exit code (``exit_code``): 1 when any finding fails; a warning alone gives 0,
or 1 with ``--strict``; 0 otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..redact import redact_obj

Status = Literal["ok", "warn", "fail"]
AREAS = ("access", "host", "container", "driver", "guard", "cuda", "dns", "services")
_RANK = {"ok": 0, "warn": 1, "fail": 2}
#: evidence output is cut to this many lines (the relevant ones come first)
MAX_EVIDENCE_LINES = 12


@dataclass(frozen=True)
class Evidence:
    """The command that shows the fact (as a user would type it) and an excerpt of its output."""

    command: str
    output: str = ""

    def __post_init__(self) -> None:
        lines = self.output.rstrip().splitlines()
        if len(lines) > MAX_EVIDENCE_LINES:
            lines = lines[:MAX_EVIDENCE_LINES] + [f"... ({len(lines) - MAX_EVIDENCE_LINES} more lines)"]
        object.__setattr__(self, "output", "\n".join(lines))


@dataclass(frozen=True)
class Finding:
    #: stable id, "<area>.<what>" (e.g. "driver.userspace_version"); tests and --json key on it
    id: str
    area: str
    status: Status
    title: str
    evidence: Evidence | None = None
    #: what to do, exactly (a command where there is one); None when ok
    fix: str | None = None
    #: `doctor --fix` may apply this fix itself
    fixable: bool = False
    #: the finding in plain words (why it matters), shown under the title
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return redact_obj(asdict(self))


def ok(id: str, title: str, evidence: Evidence | None = None, detail: str = "") -> Finding:
    return Finding(id, id.split(".", 1)[0], "ok", title, evidence, None, False, detail)


def warn(id: str, title: str, evidence: Evidence | None = None, *, fix: str | None = None,
         fixable: bool = False, detail: str = "") -> Finding:
    return Finding(id, id.split(".", 1)[0], "warn", title, evidence, fix, fixable, detail)


def fail(id: str, title: str, evidence: Evidence | None = None, *, fix: str | None = None,
         fixable: bool = False, detail: str = "") -> Finding:
    return Finding(id, id.split(".", 1)[0], "fail", title, evidence, fix, fixable, detail)


def worst(findings: list[Finding]) -> Status:
    return max((f.status for f in findings), key=_RANK.__getitem__, default="ok")


def exit_code(findings: list[Finding], *, strict: bool = False) -> int:
    """0 all ok; 1 any fail; warnings count as failures only with ``strict``."""
    w = worst(findings)
    if w == "fail" or (w == "warn" and strict):
        return 1
    return 0


@dataclass
class Skipped:
    """A check that could not run (its inputs are missing), and why."""

    check: str
    reason: str


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    ssh_round_trips: int = 0
    api_calls: int = 0
    #: fixes applied by --fix: finding id -> summary
    fixed: dict[str, str] = field(default_factory=dict)
    #: --fix: why some fixes were not applied (a container without our marker)
    not_fixed: str | None = None

    def by_id(self, id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == id), None)

    def as_dict(self, *, strict: bool = False) -> dict[str, Any]:
        counts = {s: sum(1 for f in self.findings if f.status == s) for s in _RANK}
        return redact_obj({
            "ok": exit_code(self.findings, strict=strict) == 0, "worst": worst(self.findings),
            "counts": counts, "findings": [f.as_dict() for f in self.findings],
            "skipped": [asdict(s) for s in self.skipped], "fixed": self.fixed,
            **({"not_fixed": self.not_fixed} if self.not_fixed else {}), "seconds": round(self.seconds, 3), "ssh_round_trips": self.ssh_round_trips,
            "api_calls": self.api_calls})
