"""Errors as the Anthropic Messages API reports them.

Every failure a client can see is an :class:`ApiError`: an HTTP status, one of
Anthropic's error types and a message. The upstream's own failures are turned
into these in exactly one place, :mod:`provisioner.gateway.upstream`.
"""

from __future__ import annotations

from typing import Mapping

from provisioner.errors import ProvisionError
from provisioner.gateway.jsonfast import dumps


class ApiError(ProvisionError):
    """An error the gateway answers with ``{"type":"error","error":{...}}``."""

    def __init__(self, status: int, error_type: str, message: str, *,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        #: response headers that come with the error (``Retry-After`` on a 429)
        self.headers: dict[str, str] = dict(headers or {})

    def body(self, request_id: str | None = None) -> dict:
        """The JSON error body Anthropic's clients expect."""
        body: dict = {"type": "error", "error": {"type": self.error_type, "message": self.message}}
        if request_id:
            body["request_id"] = request_id
        return body

    def sse_frame(self) -> bytes:
        """The same error as a mid-stream ``event: error`` frame."""
        return b"event: error\ndata: " + dumps(self.body()) + b"\n\n"


def invalid_request(message: str) -> ApiError:
    """400 invalid_request_error (the message is cut short: it may quote what the client sent)."""
    return ApiError(400, "invalid_request_error", message if len(message) <= 500 else message[:497] + "...")


def not_found(message: str) -> ApiError:
    """404 not_found_error."""
    return ApiError(404, "not_found_error", message)


def rate_limited(message: str, headers: Mapping[str, str]) -> ApiError:
    """429 rate_limit_error, with the upstream's ``Retry-After`` (the SDKs wait that long)."""
    return ApiError(429, "rate_limit_error", message, headers=headers)


def overloaded(message: str = "the model server is busy; retry shortly") -> ApiError:
    """529 overloaded_error: Claude Code and the SDK retry it."""
    return ApiError(529, "overloaded_error", message)


def forced_tool_ignored() -> ApiError:
    """400: tool_choice asked for a tool call and the model answered in text instead.

    llama-server enforces ``tool_choice: required`` only through the chat template's tool support;
    a template without it lets the model answer in text, which a client that forced a tool cannot use.
    """
    return invalid_request("tool_choice requires a tool call, but the model answered with text: its chat template "
                           "cannot honour a forced tool choice (llama-server /props: chat_template_caps."
                           "supports_tools); use tool_choice auto, or a model whose template supports tools")
