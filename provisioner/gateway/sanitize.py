"""Normalise what Claude Code sends so a local backend accepts it and caches well.

- Claude Code's first system block, ``x-anthropic-billing-header: ...; cch=...;``,
  changes on every request; left in, it sits at the very start of the prompt and
  defeats llama.cpp's prompt (prefix) cache. It carries nothing for the model, so
  the gateway drops it.
- Fields backends reject or misread (``cache_control``, ``defer_loading``,
  ``strict``, ...) are removed before a body goes to a native ``/v1/messages``.
  ``anthropic-beta`` headers are never forwarded.
"""

from __future__ import annotations

from typing import Any

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
#: keys removed from content blocks, system blocks and tool definitions
BLOCK_KEYS_TO_STRIP = frozenset({"cache_control", "defer_loading", "strict", "eager_input_streaming",
                                 "citations"})
#: top-level request keys a local backend has no use for
BODY_KEYS_TO_STRIP = frozenset({"metadata", "context_management", "mcp_servers", "container",
                                "service_tier", "betas"})


def is_billing_header(text: str) -> bool:
    """True for Claude Code's per-request billing-header system block."""
    return text.lstrip().startswith(BILLING_HEADER_PREFIX)


def _clean_blocks(blocks: Any) -> Any:
    if not isinstance(blocks, list):
        return blocks
    out = []
    for block in blocks:
        if isinstance(block, dict):
            block = {k: v for k, v in block.items() if k not in BLOCK_KEYS_TO_STRIP}
            if isinstance(block.get("content"), list):  # tool_result content blocks
                block["content"] = _clean_blocks(block["content"])
        out.append(block)
    return out


def sanitize_native_body(body: dict) -> dict:
    """A copy of a (validated) Anthropic body that a native backend accepts."""
    out = {k: v for k, v in body.items() if k not in BODY_KEYS_TO_STRIP}
    system = out.get("system")
    if isinstance(system, str):
        if is_billing_header(system):
            out.pop("system")
    elif isinstance(system, list):
        kept = [b for b in system if not (isinstance(b, dict) and isinstance(b.get("text"), str)
                                          and is_billing_header(b["text"]))]
        out["system"] = _clean_blocks(kept)
    if isinstance(out.get("messages"), list):
        out["messages"] = [
            {**m, "content": _clean_blocks(m.get("content"))} if isinstance(m, dict) else m
            for m in out["messages"]]
    if isinstance(out.get("tools"), list):
        out["tools"] = _clean_blocks(out["tools"])
    return out
