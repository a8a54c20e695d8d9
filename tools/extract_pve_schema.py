#!/usr/bin/env python3
"""Extract the subset of the official PVE API schema that `provision` uses.

Reads Proxmox's own ``apidata.json`` dumps (``/work/shared/pve-api/``) and writes
compact package data to ``provisioner/pveschema/data/pve-<major.minor>.json``:
one object ``{"version", "source", "endpoints": {path: {METHOD: method}}}``
where each method keeps only what validation and the simulator need.

Run from the repository root:  python tools/extract_pve_schema.py [SRC_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOURCES = {"8.4": "pve-8.4.2-apidata.json", "9.1": "pve-9.1.3-apidata.json"}

#: (path, methods) the client and the simulator use; nothing else is shipped.
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "/version": ("GET",),
    "/access/ticket": ("GET", "POST"),
    "/access/permissions": ("GET",),
    "/nodes": ("GET",),
    "/nodes/{node}/lxc": ("GET", "POST"),
    "/nodes/{node}/lxc/{vmid}": ("GET", "DELETE"),
    "/nodes/{node}/lxc/{vmid}/config": ("GET", "PUT"),
    "/nodes/{node}/lxc/{vmid}/pending": ("GET",),
    "/nodes/{node}/lxc/{vmid}/status": ("GET",),
    "/nodes/{node}/lxc/{vmid}/status/current": ("GET",),
    "/nodes/{node}/lxc/{vmid}/status/start": ("POST",),
    "/nodes/{node}/lxc/{vmid}/status/stop": ("POST",),
    "/nodes/{node}/lxc/{vmid}/status/shutdown": ("POST",),
    "/nodes/{node}/lxc/{vmid}/status/reboot": ("POST",),
    "/nodes/{node}/lxc/{vmid}/feature": ("GET",),
    "/nodes/{node}/lxc/{vmid}/snapshot": ("GET", "POST"),
    "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}": ("GET", "DELETE"),
    "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback": ("POST",),
    "/cluster/nextid": ("GET",),
    "/cluster/resources": ("GET",),
    "/nodes/{node}/tasks": ("GET",),
    "/nodes/{node}/tasks/{upid}": ("GET", "DELETE"),
    "/nodes/{node}/tasks/{upid}/status": ("GET",),
    "/nodes/{node}/tasks/{upid}/log": ("GET",),
    "/nodes/{node}/aplinfo": ("GET", "POST"),
    "/nodes/{node}/storage": ("GET",),
    "/nodes/{node}/storage/{storage}/content": ("GET",),
}

#: keys of a property (and of a property-string sub-schema) that validation needs
PROP_KEYS = ("type", "optional", "format", "pattern", "enum", "minimum", "maximum",
             "maxLength", "minLength", "default", "default_key", "requires", "alias",
             "keyAlias", "typetext", "format_description", "items", "description")
METHOD_KEYS = ("allowtoken", "protected", "permissions", "description", "name")


def _compact_prop(prop: dict) -> dict:
    out = {k: prop[k] for k in PROP_KEYS if k in prop}
    if "description" in out:  # keep the first line only: enough for humans, small on disk
        out["description"] = out["description"].split("\n")[0][:200]
    if isinstance(out.get("format"), dict):
        out["format"] = {k: _compact_prop(v) for k, v in out["format"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _compact_prop(out["items"])
    return out


def _compact_method(info: dict) -> dict:
    out = {k: info[k] for k in METHOD_KEYS if k in info}
    params = info.get("parameters") or {}
    out["parameters"] = {
        "additionalProperties": params.get("additionalProperties", 0),
        "properties": {k: _compact_prop(v) for k, v in (params.get("properties") or {}).items()},
    }
    returns = info.get("returns") or {}
    out["returns"] = {"type": returns.get("type", "null")}
    return out


def _index(tree: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    stack = list(tree)
    while stack:
        node = stack.pop()
        found[node["path"]] = node
        stack.extend(node.get("children") or [])
    return found


def extract(src: Path, version: str) -> dict:
    """Return the compact schema for one PVE version."""
    index = _index(json.loads(src.read_text()))
    endpoints: dict[str, dict] = {}
    for path, methods in ENDPOINTS.items():
        node = index.get(path)
        if node is None:
            raise SystemExit(f"{src.name}: endpoint {path} not found")
        for method in methods:
            info = (node.get("info") or {}).get(method)
            if info is None:
                raise SystemExit(f"{src.name}: {method} {path} not found")
            endpoints.setdefault(path, {})[method] = _compact_method(info)
    return {"version": version, "source": src.name, "endpoints": endpoints}


def main(argv: list[str]) -> int:
    src_dir = Path(argv[1]) if len(argv) > 1 else Path("/work/shared/pve-api")
    out_dir = Path(__file__).resolve().parent.parent / "provisioner" / "pveschema" / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    for version, name in SOURCES.items():
        data = extract(src_dir / name, version)
        target = out_dir / f"pve-{version}.json"
        target.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{target}: {len(data['endpoints'])} paths, {target.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
