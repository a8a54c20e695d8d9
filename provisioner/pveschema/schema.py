"""Load the shipped PVE API schema subset and find the method schema for a request.

The data files (``data/pve-<version>.json``) are written by
``tools/extract_pve_schema.py`` from Proxmox's own API dump, so they load without
``/work/shared`` present. Indexed config keys are written ``dev[n]`` in the schema;
``dev0``..``dev255`` resolve to that entry (bounds from pve-container).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

VERSIONS = ("8.4", "9.1")

#: how many of each indexed key PVE allows (pve-container's LXC/Config.pm limits)
INDEX_BOUNDS: dict[str, int] = {"dev": 256, "mp": 256, "unused": 256, "net": 32}

_INDEXED_RE = re.compile(r"^([a-z]+)(\d+)$")

Prop = dict[str, Any]


@dataclass(frozen=True)
class MethodSchema:
    """One API method: its parameter properties and whether tokens may call it."""

    path: str               # the schema path template, e.g. /nodes/{node}/lxc/{vmid}/config
    method: str
    properties: dict[str, Prop]
    additional_properties: bool
    allowtoken: bool
    returns: str
    #: the method's ``permissions`` as the schema states them (``{"check": [...]}``, ``{"user": "all"}``)
    permissions: dict[str, Any] = field(default_factory=dict)

    def prop(self, key: str) -> Prop | None:
        """The property schema for ``key``, mapping ``devN`` to ``dev[n]`` within bounds."""
        if key in self.properties:
            return self.properties[key]
        m = _INDEXED_RE.match(key)
        if m and f"{m.group(1)}[n]" in self.properties:
            bound = INDEX_BOUNDS.get(m.group(1))
            index = m.group(2)
            if (bound is None or int(index) < bound) and (index == "0" or not index.startswith("0")):
                return self.properties[f"{m.group(1)}[n]"]
        return None


class UnknownEndpoint(LookupError):
    """No such path/method in the shipped schema (the real API answers 501/404)."""


def resolve_version(version: str) -> str:
    """Map a server version ("8.4.2", "9.0", "9.1.3"...) to the shipped schema of its major
    release (8 -> "8.4", 9 -> "9.1"); unknown majors are an error."""
    m = re.match(r"(\d+)(?:\.(\d+))?", str(version))
    if m:
        exact = f"{m.group(1)}.{m.group(2)}"
        if exact in VERSIONS:
            return exact
        for known in VERSIONS:
            if known.split(".")[0] == m.group(1):
                return known
    raise ValueError(f"unknown PVE version {version!r} (schemas shipped: {', '.join(VERSIONS)})")


def load(version: str) -> dict[str, Any]:
    """The raw compact schema for ``version`` (see ``resolve_version``)."""
    return _load(resolve_version(version))


@lru_cache(maxsize=None)
def _load(version: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", f"pve-{version}.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=None)
def _templates(version: str) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in load(version)["endpoints"]:
        rx = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(template))
        out.append((re.compile(rx + r"/?"), template))
    return out


def match_path(version: str, path: str) -> tuple[str, dict[str, str]]:
    """Map a concrete API path (below /api2/json) to its template and path parameters."""
    for rx, template in _templates(resolve_version(version)):
        m = rx.fullmatch(path)
        if m:
            return template, dict(m.groupdict())
    raise UnknownEndpoint(path)


def method_schema(version: str, method: str, path: str) -> tuple[MethodSchema, dict[str, str]]:
    """The schema of ``method path`` plus the parameters taken from the path."""
    template, path_params = match_path(version, path)
    info = load(version)["endpoints"][template].get(method.upper())
    if info is None:
        raise UnknownEndpoint(f"{method} {path}")
    params = info["parameters"]
    schema = MethodSchema(
        path=template, method=method.upper(), properties=params["properties"],
        additional_properties=bool(params.get("additionalProperties")),
        allowtoken=bool(info.get("allowtoken", 1)), returns=info["returns"]["type"],
        permissions=dict(info.get("permissions") or {}))
    return schema, path_params


def config_format(version: str, key: str) -> Prop | None:
    """The property schema of an LXC config key (``dev0``, ``net1``, ``rootfs``...)."""
    schema, _ = method_schema(version, "PUT", "/nodes/n/lxc/100/config")
    return schema.prop(key)
