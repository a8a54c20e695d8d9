"""Issue 19.4: structured outputs reach llama-server as JSON-schema constrained output, or are refused
clearly; never silently dropped."""

from __future__ import annotations

import anthropic
import pytest

from gw_scripted_upstream import text_script
from provisioner.gateway.api_errors import ApiError
from provisioner.gateway.translate_request import translate_request

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}},
          "required": ["city", "temp_c"], "additionalProperties": False}
EXPECTED = {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}


def body(**extra) -> dict:
    return {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "Weather?"}], **extra}


@pytest.mark.parametrize("extra", [
    {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "high"}},
    {"output_format": {"type": "json_schema", "schema": SCHEMA}},  # the beta's name
])
def test_output_format_becomes_response_format(extra):
    assert translate_request(body(**extra), upstream_model="local").payload["response_format"] == EXPECTED


@pytest.mark.parametrize("extra, message", [
    ({"output_config": {"format": {"type": "xml"}}}, "output_config.format.type: expected 'json_schema', found 'xml'"),
    ({"output_config": {"format": {"type": "json_schema", "schema": "x"}}},
     "output_config.format.schema: expected a JSON schema object, found str"),
    ({"output_config": {"effort": "huge"}},
     "output_config.effort: expected one of low, medium, high, xhigh, max, found 'huge'"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {}}},
      "output_format": {"type": "json_schema", "schema": {}}},
     "output_format: give output_config.format or output_format, not both"),
])
def test_malformed_output_formats_are_refused(extra, message):
    with pytest.raises(ApiError) as info:
        translate_request(body(**extra), upstream_model="local")
    assert (info.value.status, info.value.message) == (400, message)


@pytest.mark.parametrize("mode", ["translate", "native"])
def test_sdk_structured_output_reaches_the_upstream(make_gw, mode):
    gw = make_gw(mode=mode)
    gw.script(text_script(['{"city":"Bern","temp_c":20}']))
    with gw.client().messages.stream(**body(output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
                                     ) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == '{"city":"Bern","temp_c":20}'
    # native mode too: llama-server's own /v1/messages would drop the schema
    assert [p for p, _ in gw.upstream.requests] == ["/v1/chat/completions"]
    assert gw.last_request()["response_format"] == EXPECTED


@pytest.mark.parametrize("upstream_message", [
    # common/json-schema-to-grammar.cpp:977 (the grammar converter)
    "JSON schema conversion failed:\nUnresolved $ref #/$defs/x",
    # what b11312 answers with SmolLM2's template (common/chat.cpp:1364 around common/json-schema.cpp:23),
    # seen in tests/bench/test_prompt_cache_real.py
    "Unable to generate parser for this template. Automatic parser generation failed: JSON schema error at #: "
    "cannot resolve $ref #/$defs/x, $defs not found",
])
def test_a_schema_the_server_cannot_express_is_a_clear_400(gw, upstream_message):
    gw.script([("status", 400, {"error": {"code": 400, "type": "invalid_request_error", "message": upstream_message}})])
    with pytest.raises(anthropic.BadRequestError) as info:
        gw.client().messages.create(**body(output_config={"format": {"type": "json_schema",
                                                                     "schema": {"$ref": "#/$defs/x"}}}))
    assert info.value.body["error"]["message"] == (
        "the model server cannot express a JSON schema of this request as a grammar (output_config.format.schema, "
        f"or a tool's input_schema): {upstream_message}")
