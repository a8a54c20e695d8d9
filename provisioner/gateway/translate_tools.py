"""Tool definitions and ``tool_choice``: Anthropic → OpenAI.

A named ``tool_choice`` becomes ``"required"`` over a one-tool list: llama-server
accepts only string choices (an object is silently treated as ``auto``), and
``required`` is enforced by grammar where the chat template supports tools.
Anthropic allows parallel tool calls unless told otherwise; llama-server does
not, so ``parallel_tool_calls`` is always set explicitly.
"""

from __future__ import annotations

from typing import Any

from provisioner.gateway.api_errors import invalid_request
from provisioner.gateway.request_fields import field_error, optional_string, string_field

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def translate_tools(body: dict) -> list[dict] | None:
    """Anthropic tool definitions → OpenAI functions (server tools dropped, extra keys left behind)."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise field_error("tools", "a list", tools)
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise field_error(f"tools.{i}", "an object", tool)
        name = string_field(tool, "name", f"tools.{i}")
        schema = tool.get("input_schema")
        if schema is None and tool.get("type") not in (None, "custom"):
            continue  # a server tool (web search, ...): nothing a local backend can run
        if not isinstance(schema, dict):
            raise field_error(f"tools.{i}.input_schema", "an object", schema)
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = optional_string(tool, "description", f"tools.{i}")
        if description:
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def apply_tool_choice(body: dict, payload: dict, tools: list[dict] | None, count_only: bool) -> None:
    """Set ``tool_choice`` and ``parallel_tool_calls`` on the OpenAI ``payload``."""
    choice = body.get("tool_choice")
    if choice is None:
        if tools:
            payload["parallel_tool_calls"] = True  # Anthropic's default; llama-server's is off
        return
    if not isinstance(choice, dict):
        raise field_error("tool_choice", "an object", choice)
    kind = choice.get("type")
    disable_parallel = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable_parallel, bool):
        raise field_error("tool_choice.disable_parallel_tool_use", "a boolean", disable_parallel)
    if isinstance(kind, str) and kind in TOOL_CHOICES:
        payload["tool_choice"] = TOOL_CHOICES[kind]
    elif kind == "tool":
        name = string_field(choice, "name", "tool_choice")
        chosen = [t for t in tools or () if t["function"]["name"] == name]
        if not chosen:
            raise invalid_request(f"tool_choice.name: no tool named {name!r} in tools")
        # Backends differ on named choices; "required" over a one-tool list means the same
        # everywhere and is enforced by grammar in llama-server.
        if not count_only:  # counting tokens counts every tool, as Anthropic does
            payload["tools"] = chosen
        payload["tool_choice"] = "required"
    else:
        raise invalid_request(f"tool_choice.type: expected auto, any, tool or none, found {kind!r}")
    if tools and kind != "none":
        payload["parallel_tool_calls"] = not disable_parallel
