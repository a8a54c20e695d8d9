"""The error a PVE API handler raises: HTTP status, PVE's message, per-key errors."""

from __future__ import annotations


class RuleError(Exception):
    """A refusal with PVE's HTTP status and text; ``errors`` for parameter errors (400)."""

    def __init__(self, message: str, *, status: int = 500, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or {}


def param_error(errors: dict[str, str]) -> RuleError:
    return RuleError("Parameter verification failed.", status=400, errors=errors)


def perm_error(what: str) -> RuleError:
    return RuleError(f"Permission check failed ({what})", status=403)
