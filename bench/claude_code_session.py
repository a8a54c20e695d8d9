"""A Claude-Code-shaped multi-turn session, request by request, for the prompt-cache benchmark and test.

What Claude Code sends on every turn of an agentic task, in miniature:

- ``system``: first the per-request ``x-anthropic-billing-header: ...; cch=<5 hex>;`` block
  (different on every request), then Claude Code's identity line and its long system
  prompt (``provisioner.bench.prompt.SYSTEM``), the last block with ``cache_control``;
- the same tool definitions every turn (``provisioner.bench.prompt.TOOLS``: Read, Edit,
  Write, Bash, Grep, Glob, TodoWrite), ``cache_control`` on the last one;
- ``messages`` growing by one assistant turn (text and a ``tool_use``) and one user turn
  (its ``tool_result``, sometimes with a ``<system-reminder>`` text block) per request, the
  ``cache_control`` breakpoint moving to the newest block each time, as Claude Code moves it;
- ``thinking: {type: adaptive}``, ``metadata.user_id``, ``stream: true``.

Tool results are real files of this repository, shown the way the Read tool shows them, so
the prompt is real code and prose. ``nonce`` goes at the very start of the stable system
prompt: two sessions with different nonces share no cached prefix.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from provisioner.bench.prompt import SYSTEM, TOOLS

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
REMINDER = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
            "# important-instruction-reminders\nDo what has been asked; nothing more, nothing less.\n"
            "</system-reminder>")
TASK = ("The gateway drops Claude Code's per-request billing header so that llama.cpp's prompt cache can hit. "
        "Find where that happens, check the tests cover it, and tighten the check if it is too loose.")


def _read(rel: str, first: int = 1, lines: int = 60) -> str:
    text = (ROOT / rel).read_text(encoding="utf-8").splitlines()[first - 1:first - 1 + lines]
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(text, first))


def _grep(pattern: str, rels: list[str]) -> str:
    hits = []
    for rel in rels:
        for n, line in enumerate((ROOT / rel).read_text(encoding="utf-8").splitlines(), 1):
            if pattern in line:
                hits.append(f"{rel}:{n}:{line.strip()}")
    return "\n".join(hits)


def _steps() -> list[tuple[str, str, dict[str, Any], str]]:
    """(assistant text, tool, tool input, tool result) for each turn after the first."""
    gw = "provisioner/gateway"
    return [
        ("I'll search for the billing header first.", "Grep", {"pattern": "billing", "path": gw, "-n": True},
         _grep("billing", [f"{gw}/sanitize.py", f"{gw}/translate_request.py", f"{gw}/messages_native.py"])),
        ("The check lives in sanitize.py; let me read it.", "Read", {"file_path": f"/home/dev/project/{gw}/sanitize.py"},
         _read(f"{gw}/sanitize.py", 1, 60)),
        ("Now where the system prompt is assembled.", "Read",
         {"file_path": f"/home/dev/project/{gw}/translate_request.py", "offset": 150, "limit": 60},
         _read(f"{gw}/translate_request.py", 150, 60)),
        ("Let me run the tests that cover it.", "Bash",
         {"command": "python3 -m pytest -q tests/gateway -k billing", "description": "Run the billing-header tests"},
         "..\n2 passed, 141 deselected in 1.84s"),
        ("And the test itself.", "Read", {"file_path": "/home/dev/project/tests/gateway/test_stream_sdk.py",
                                         "offset": 150, "limit": 40},
         _read("tests/gateway/test_stream_sdk.py", 150, 40)),
        ("I'll tighten the prefix check.", "Edit",
         {"file_path": f"/home/dev/project/{gw}/sanitize.py",
          "old_string": "return text.lstrip().startswith(BILLING_HEADER_PREFIX)",
          "new_string": "return text.startswith(BILLING_HEADER_PREFIX)"},
         f"The file /home/dev/project/{gw}/sanitize.py has been updated."),
        ("Let me look at the native path too.", "Read", {"file_path": f"/home/dev/project/{gw}/messages_native.py",
                                                        "limit": 50},
         _read(f"{gw}/messages_native.py", 1, 50)),
    ]


MAX_TURNS = len(_steps()) + 1


def _billing_header(nonce: str, turn: int) -> str:
    cch = hashlib.sha256(f"{nonce}:{turn}".encode()).hexdigest()[:5]  # changes on every request
    return f"x-anthropic-billing-header: cc_version=2.1.330.a1b; cc_entrypoint=cli; cch={cch};"


def session(turns: int, *, nonce: str, max_tokens: int = 16) -> list[dict[str, Any]]:
    """The request bodies of turns 1..``turns`` of one session (``turns`` ≤ :data:`MAX_TURNS`)."""
    if not 1 <= turns <= MAX_TURNS:
        raise ValueError(f"turns: 1..{MAX_TURNS}")
    tools = copy.deepcopy(TOOLS)
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    history: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": REMINDER}, {"type": "text", "text": TASK}]}]
    bodies = []
    steps = _steps()
    for turn in range(1, turns + 1):
        if turn > 1:
            text, tool, tool_input, result = steps[turn - 2]
            call_id = f"toolu_{hashlib.sha256(f'{nonce}:{turn}'.encode()).hexdigest()[:24]}"
            history.append({"role": "assistant", "content": [
                {"type": "text", "text": text},
                {"type": "tool_use", "id": call_id, "name": tool, "input": tool_input}]})
            user: list[dict[str, Any]] = [{"type": "tool_result", "tool_use_id": call_id, "content": result}]
            if turn % 3 == 0:
                user.append({"type": "text", "text": REMINDER})
            history.append({"role": "user", "content": user})
        messages = copy.deepcopy(history)
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}  # the moving breakpoint
        bodies.append({
            "model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": True,
            "metadata": {"user_id": f"user_{nonce}_account__session_{nonce}"},
            "thinking": {"type": "adaptive"},
            "system": [{"type": "text", "text": _billing_header(nonce, turn)},
                       {"type": "text", "text": f"{IDENTITY} Session {nonce}."},
                       {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
            "tools": tools, "messages": messages})
    return bodies
