"""Field checks for request bodies: each failure is a 400 that names the path."""

from __future__ import annotations

import math
from typing import Any

from provisioner.gateway.api_errors import ApiError, invalid_request


def field_error(path: str, expected: str, found: Any) -> ApiError:
    """``path: expected X, found <type>``."""
    return invalid_request(f"{path}: expected {expected}, found {type(found).__name__}")


def optional_string(obj: dict, key: str, path: str) -> str | None:
    """``obj[key]`` as a string, or None when absent."""
    return None if obj.get(key) is None else string_field(obj, key, path)


def string_field(obj: dict, key: str, path: str) -> str:
    """``obj[key]`` as a string (required)."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise (invalid_request(f"{path}.{key}: field required") if value is None
               else field_error(f"{path}.{key}", "a string", value))
    return value


def number_field(body: dict, key: str, lo: float, hi: float) -> float | None:
    """A finite number in [lo, hi], or None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise field_error(key, "a number", value)
    if not lo <= value <= hi:
        raise invalid_request(f"{key}: must be between {lo:g} and {hi:g}")
    return value


def as_blocks(content: Any, path: str) -> list[dict]:
    """Content as a list of blocks (a plain string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise field_error(path, "a string or a list of content blocks", content)
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise field_error(f"{path}.{i}", "a content block object", block)
        if not isinstance(block.get("type"), str):
            raise invalid_request(f"{path}.{i}.type: field required")
    return content
