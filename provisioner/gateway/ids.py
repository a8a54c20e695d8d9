"""Identifiers in Anthropic's style (``msg_…``, ``toolu_…``, ``req_…``)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A random identifier with Anthropic's prefix convention."""
    return prefix + secrets.token_hex(12)
