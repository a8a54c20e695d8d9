"""The official Proxmox VE API schema (the subset `provision` uses) and a validator.

Used by the client (validate before sending) and by the simulated node (reject
what the real API rejects, with the same messages).

    >>> validate("9.1", "PUT", "/nodes/pve/lxc/120/config", {"dev0": "/dev/nvidia0,gid=abc"})
    {'dev0': "invalid format - format error\\ndev0.gid: type check ('integer') failed - got 'abc'\\n"}
"""

from .formats import FormatError, check_format, split_list
from .propstring import (PropertyStringError, format_property_string, normalise_property_string,
                         parse_boolean, parse_property_string)
from .schema import (INDEX_BOUNDS, VERSIONS, MethodSchema, UnknownEndpoint, config_format,
                     load, match_path, method_schema, resolve_version)
from .validator import NOT_IN_SCHEMA, validate, validate_params

__all__ = [
    "FormatError", "check_format", "split_list",
    "PropertyStringError", "format_property_string", "normalise_property_string", "parse_boolean",
    "parse_property_string",
    "INDEX_BOUNDS", "VERSIONS", "MethodSchema", "UnknownEndpoint", "config_format", "load",
    "match_path", "method_schema", "resolve_version",
    "NOT_IN_SCHEMA", "validate", "validate_params",
]
