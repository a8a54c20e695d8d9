"""Secrets never appear in logs, plans, errors or ``--json`` output.

Every secret the program reads is registered here; ``redact`` replaces each
registered value (and its common encodings) wherever text leaves the program.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

MASK = "********"
_lock = threading.Lock()
_secrets: set[str] = set()


def register(value: str) -> str:
    """Remember a secret so it is masked everywhere; returns it unchanged."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)
            _secrets.add(urllib.parse.quote(value, safe=""))
    return value


def redact(text: str) -> str:
    """Mask every registered secret in ``text``."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def redact_obj(obj: Any) -> Any:
    """Mask secrets inside nested dicts/lists/strings (for --json output)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj
