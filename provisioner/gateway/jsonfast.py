"""Compact JSON in and out: orjson when installed, else the standard library.

The gateway encodes one JSON object per streamed event, so this is on the hot path.
Both variants reject NaN/Infinity on input (they are not JSON) and return bytes.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

_orjson: ModuleType | None
try:  # optional speed-up; behaviour is the same without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _dumps_std(obj: Any) -> bytes:
    try:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # lone surrogates: escape them, which is still valid JSON
            return json.dumps(obj, separators=(",", ":")).encode()
    except RecursionError as exc:
        raise ValueError("nested too deeply to encode") from exc


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON; ValueError if it nests too deeply."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj)
        except TypeError:  # integers beyond 64 bits and the like: the slow path copes
            pass
    return _dumps_std(obj)


def dumps_str(text: str) -> bytes:
    """Encode one string as a JSON string literal (the hot path for text deltas)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(text)
        except TypeError:  # lone surrogates
            pass
    return _dumps_std(text)


def loads(data: bytes | str) -> Any:
    """Decode JSON; raises ValueError (or RecursionError) on anything that is not JSON."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data, parse_constant=_reject_constant)
