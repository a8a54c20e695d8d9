"""Issue 19.3: document blocks (plain text, content, PDF by base64 or URL) become text, in a user
turn and inside a tool result, for both modes and count_tokens; a PDF without text is a clear 400."""

from __future__ import annotations

import base64

import anthropic
import pytest

from pdf_samples import pdf

REPORT = pdf(["Quarterly report\nRevenue grew 12 percent", "Outlook: steady"])
REPORT_TEXT = "[Page 1 of 2]\nQuarterly report\nRevenue grew 12 percent\n\n[Page 2 of 2]\nOutlook: steady"
SCAN = pdf([None, None, None])


def b64_doc(data: bytes, **extra) -> dict:
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                           "data": base64.b64encode(data).decode()}, **extra}


def ask(gw, content, **kw):
    return gw.client().messages.create(model="claude-x", max_tokens=16,
                                       messages=[{"role": "user", "content": content}], **kw)


def test_text_and_content_documents_become_text(gw):
    ask(gw, [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."},
              "title": "notes.txt"},
             {"type": "document", "source": {"type": "content", "content": [
                 {"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}},
             {"type": "text", "text": "Summarise."}])
    assert gw.last_request()["messages"] == [{"role": "user", "content": (
        "[Document: notes.txt]\nPlain notes.\n\nPart one.\n\nPart two.\n\nSummarise.")}]


def test_base64_pdf_in_a_user_turn_and_in_a_tool_result(gw):
    ask(gw, [b64_doc(REPORT, title="q3.pdf"), {"type": "text", "text": "What grew?"}])
    assert gw.last_request()["messages"][0]["content"] == f"[Document: q3.pdf]\n{REPORT_TEXT}\n\nWhat grew?"
    gw.client().messages.create(model="claude-x", max_tokens=16, messages=[
        {"role": "user", "content": "Read the report."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "r1", "name": "read", "input": {"p": "q3"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "r1", "content": [b64_doc(REPORT)]}]}],
        tools=[{"name": "read", "input_schema": {"type": "object"}}])
    assert gw.last_request()["messages"][2] == {"role": "tool", "tool_call_id": "r1", "content": REPORT_TEXT}


def test_pdf_by_url_is_fetched_once_and_reused(gw):
    gw.upstream.files["q3.pdf"] = REPORT
    doc = {"type": "document", "source": {"type": "url", "url": gw.upstream.url + "/files/q3.pdf"}}
    for _ in range(2):  # clients resend the history every turn
        ask(gw, [doc, {"type": "text", "text": "Go."}])
        assert gw.last_request()["messages"][0]["content"] == f"{REPORT_TEXT}\n\nGo."
    assert gw.upstream.file_gets == 1
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(gw, [{"type": "document", "source": {"type": "url", "url": gw.upstream.url + "/files/none.pdf"}}])
    assert info.value.body["error"]["message"] == (
        "messages.0.content.0.source.url: fetching the document answered HTTP 404")


def test_pdf_without_a_text_layer_is_a_clear_400(gw):
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(gw, [b64_doc(SCAN), {"type": "text", "text": "Read it."}])
    assert info.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "messages.0.content.0.source: the PDF has no text layer (3 pages of images or scans); this "
                   "model server reads only a PDF's text: run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`) "
                   "or send its pages as images"}
    assert not gw.upstream.requests  # refused before anything went upstream


@pytest.mark.parametrize("source, message", [
    ({"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(b"hello").decode()},
     "messages.0.content.0.source: the data is not a PDF (it does not start with %PDF-)"),
    ({"type": "base64", "media_type": "application/pdf", "data": "%%%"},
     "messages.0.content.0.source.data: not valid base64"),
    ({"type": "file", "file_id": "file_011"},
     "messages.0.content.0.source.type: 'file' refers to Anthropic's Files API, which this gateway does not "
     "have; send the document inline (base64 or text)"),
])
def test_unreadable_documents_say_why(gw, source, message):
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(gw, [{"type": "document", "source": source}])
    assert info.value.body["error"]["message"] == message


def test_count_tokens_counts_the_pdf_text(gw):
    with_pdf = gw.client().messages.count_tokens(model="claude-x", messages=[
        {"role": "user", "content": [b64_doc(REPORT), {"type": "text", "text": "What grew?"}]}])
    as_text = gw.client().messages.count_tokens(model="claude-x", messages=[
        {"role": "user", "content": f"{REPORT_TEXT}\n\nWhat grew?"}])
    assert with_pdf.input_tokens == as_text.input_tokens > 10


def test_native_mode_gets_the_document_as_text(make_gw):
    gw = make_gw(mode="native")
    gw.script([("json", {"id": "msg_n", "type": "message", "role": "assistant", "model": "smollm2",
                         "content": [{"type": "text", "text": "12 percent"}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 2}})])
    ask(gw, [b64_doc(REPORT), {"type": "text", "text": "What grew?"}])
    assert gw.last_request("/v1/messages")["messages"][0]["content"] == [
        {"type": "text", "text": REPORT_TEXT}, {"type": "text", "text": "What grew?"}]
