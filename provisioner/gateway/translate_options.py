"""``thinking`` and structured outputs: Anthropic request options → llama-server's fields."""

from __future__ import annotations

from provisioner.gateway.api_errors import invalid_request
from provisioner.gateway.request_fields import field_error

THINKING_TYPES = ("enabled", "adaptive", "disabled")


def apply_thinking(body: dict, payload: dict) -> None:
    """``thinking`` → the template's ``enable_thinking`` and llama-server's thinking budget."""
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise field_error("thinking", "an object", thinking)
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise invalid_request(f"thinking.type: expected enabled, adaptive or disabled, found {kind!r}")
    # adaptive (recent Claude Code): the model decides how long to think, as a reasoning model does
    # by itself once thinking is on; disabled turns it off for templates that think by default
    # (tools/server/server-common.cpp:1362-1367 reads enable_thinking)
    payload["chat_template_kwargs"] = {"enable_thinking": kind != "disabled"}
    if kind == "enabled" and "budget_tokens" in thinking:
        budget = thinking["budget_tokens"]
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise field_error("thinking.budget_tokens", "an integer", budget)
        if budget < 1:
            raise invalid_request("thinking.budget_tokens: must be at least 1")
        # llama-server's own per-request name (server-common.cpp reads `thinking_budget_tokens`
        # and ends the reasoning block after that many tokens, for templates with thinking tags).
        payload["thinking_budget_tokens"] = budget


EFFORTS = ("low", "medium", "high", "xhigh", "max")


def apply_output_format(body: dict, payload: dict) -> None:
    """Structured outputs (``output_config.format``, or the beta's ``output_format``) → llama-server's
    JSON-schema constrained output: ``response_format: {type: json_schema, json_schema: {schema}}``
    (tools/server/server-common.cpp:1259-1277 reads it and turns the schema into a grammar; a
    schema it cannot express comes back as a 400, see upstream_errors)."""
    config = body.get("output_config")
    fmt, where = None, "output_config.format"
    if config is not None:
        if not isinstance(config, dict):
            raise field_error("output_config", "an object", config)
        effort = config.get("effort")
        if effort is not None and effort not in EFFORTS:
            raise invalid_request(f"output_config.effort: expected one of {', '.join(EFFORTS)}, found {effort!r}")
        fmt = config.get("format")
    if body.get("output_format") is not None:
        if fmt is not None:
            raise invalid_request("output_format: give output_config.format or output_format, not both")
        fmt, where = body["output_format"], "output_format"
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise field_error(where, "an object", fmt)
    if fmt.get("type") != "json_schema":
        raise invalid_request(f"{where}.type: expected 'json_schema', found {fmt.get('type')!r}")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise field_error(f"{where}.schema", "a JSON schema object", schema)
    payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
