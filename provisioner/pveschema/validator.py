"""Validate request parameters against the PVE schema, with PVE's per-key messages.

Follows pve-common's ``check_prop`` order: type, format, pattern, maxLength,
minLength, maximum/minimum, enum; first failure per key wins. Messages are PVE's
text, including the trailing newline PVE keeps on ``invalid format - ...`` errors.
Values come as strings (form-encoded requests) or JSON scalars.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping

from .formats import FormatError, check_format
from .propstring import PropertyStringError, parse_property_string
from .schema import Prop, method_schema

_NUMBER_RE = re.compile(r"[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?")
_INTEGER_RE = re.compile(r"[+-]?\d+")
NOT_IN_SCHEMA = ("property is not defined in schema and the schema does not allow "
                 "additional properties")


def add_error(errors: dict[str, str], path: str, msg: str) -> None:
    """Record ``msg`` for ``path``; PVE joins repeats with a literal backslash-n."""
    path = path or "_root"
    errors[path] = errors[path] + "\\n" + msg if path in errors else msg


@lru_cache(maxsize=512)
def _pattern(pattern: str) -> re.Pattern[str]:
    # Perl stringifies qr// as (?^:...); Python spells the same group (?:...)
    return re.compile(pattern.replace("(?^:", "(?:"))


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _check_type(path: str, typ: str | None, value: Any, errors: dict[str, str]) -> bool:
    if not typ or typ in ("any", "string"):
        if isinstance(value, (dict, list)) and typ == "string":
            add_error(errors, path, f"type check ('{typ}') failed - got {type(value).__name__.upper()}")
            return False
        return True
    if typ in ("array", "object"):
        ok = isinstance(value, list if typ == "array" else dict)
        if not ok:
            add_error(errors, path, f"type check ('{typ}') failed")
        return ok
    if typ == "boolean":
        if isinstance(value, bool) or value in (0, 1) or _as_text(value) in ("0", "1"):
            return True
    elif typ == "integer":
        if (isinstance(value, int) and not isinstance(value, bool)) or \
                (isinstance(value, str) and _INTEGER_RE.fullmatch(value)):
            return True
    elif typ == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool) or \
                (isinstance(value, str) and _NUMBER_RE.fullmatch(value)):
            return True
    else:
        return True  # PVE does not verify unknown types
    add_error(errors, path, f"type check ('{typ}') failed - got '{_as_text(value)}'")
    return False


def check_prop(value: Any, schema: Prop, path: str, errors: dict[str, str]) -> None:
    """Check one value against one property schema (pve-common ``check_prop``)."""
    if value is None:
        if not schema.get("optional") and schema.get("type") != "null":
            add_error(errors, path, "property is missing and it is not optional")
        return
    if not _check_type(path, schema.get("type"), value, errors):
        return
    if isinstance(value, (list, dict)):
        return
    text = _as_text(value)
    fmt = schema.get("format")
    if fmt:
        try:
            if isinstance(fmt, dict):
                parse_property_string(fmt, text, path=path)
            else:
                check_format(fmt, text)
        except (PropertyStringError, FormatError) as exc:
            msg = str(exc)
            add_error(errors, path, "invalid format - " + msg + ("" if msg.endswith("\n") else "\n"))
            return
    pattern = schema.get("pattern")
    if pattern and not _pattern(pattern).fullmatch(text):
        add_error(errors, path, "value does not match the regex pattern")
        return
    if schema.get("maxLength") is not None and len(text) > int(schema["maxLength"]):
        add_error(errors, path, f"value may only be {schema['maxLength']} characters long")
        return
    if schema.get("minLength") is not None and len(text) < int(schema["minLength"]):
        add_error(errors, path, f"value must be at least {schema['minLength']} characters long")
        return
    if _NUMBER_RE.fullmatch(text):
        number = float(text)
        if schema.get("maximum") is not None and number > float(schema["maximum"]):
            add_error(errors, path, f"value must have a maximum value of {schema['maximum']}")
            return
        if schema.get("minimum") is not None and number < float(schema["minimum"]):
            add_error(errors, path, f"value must have a minimum value of {schema['minimum']}")
            return
    enum = schema.get("enum")
    if enum and text not in [str(e) for e in enum]:
        add_error(errors, path, f"value '{text}' does not have a value in the enumeration "
                                f"'{', '.join(str(e) for e in enum)}'")


def check_object(path: str, properties: Mapping[str, Prop], value: Mapping[str, Any],
                 additional: bool, errors: dict[str, str]) -> None:
    """Check every schema key, then reject keys the schema does not know."""
    for key, schema in properties.items():
        check_prop(value.get(key), schema, f"{path}.{key}" if path else key, errors)
    for key in value:
        if key not in properties and not additional:
            add_error(errors, f"{path}.{key}" if path else key, NOT_IN_SCHEMA)


def validate_params(schema_props: Any, params: Mapping[str, Any]) -> dict[str, str]:
    """Validate against a ``MethodSchema`` (indexed keys resolved); returns key -> message."""
    errors: dict[str, str] = {}
    for key, prop in schema_props.properties.items():
        if "[n]" in key:
            continue
        check_prop(params.get(key), prop, key, errors)
    for key, value in params.items():
        if key in schema_props.properties and "[n]" not in key:
            continue
        prop = schema_props.prop(key)
        if prop is None:
            if not schema_props.additional_properties:
                add_error(errors, key, NOT_IN_SCHEMA)
            continue
        check_prop(value, prop, key, errors)
    return errors


def validate(version: str, method: str, path: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Validate a request the way PVE would; ``{}`` means PVE accepts the parameters.

    ``path`` is below ``/api2/json`` (e.g. ``/nodes/pve/lxc/120/config``); its
    path parameters (node, vmid...) are validated too, as PVE merges them in.
    Raises ``schema.UnknownEndpoint`` for a path/method outside the shipped subset.
    """
    schema, path_params = method_schema(version, method, path)
    merged = {**params, **path_params}
    return validate_params(schema, merged)
