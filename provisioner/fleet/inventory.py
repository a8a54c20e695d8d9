"""An inventory: many host files at once, validated before anything is contacted.

Two shapes, freely mixed:

* a directory: every ``*.yaml`` / ``*.yml`` in it (not recursive, sorted by name) is either
  one host file (named after the file's stem) or an inventory file (below). Other files are
  ignored, and so are files whose name starts with ``.`` or ``_`` (drafts, shared snippets).
* an inventory file: a top-level ``hosts:`` mapping of name → host file, plus an optional
  ``defaults:`` deep-merged under every entry (mappings merge key by key; a list or a scalar
  in the entry replaces the default's; an empty section in the entry keeps the default's).

Every error names the file, the line and the key, exactly as for a single host file (the
same loader validates each host); a key inherited from ``defaults`` is named as
``defaults.<key>`` with the host it broke. All errors of all files are reported at once.
Two entries that manage the same container (same API endpoint and node, and the same vmid
or hostname) are an error: they would fight over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config.loader import KeyPath, Loaded, _dotted, compose_text, validate_data
from ..errors import ConfigError, ConfigErrors

HOST_SUFFIXES = (".yaml", ".yml")
INVENTORY_KEYS = {"hosts", "defaults"}


@dataclass(frozen=True)
class Host:
    """One host of an inventory: its name, validated file and where it was declared."""

    name: str
    loaded: Loaded
    source: str  # "file:line" of its declaration, for messages

    @property
    def pve_key(self) -> tuple[str, int, str]:
        """The Proxmox node this host's container lives on (API host, port, node)."""
        p = self.loaded.config.proxmox
        return (p.host.lower(), p.port, p.node)


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    warnings: tuple[str, ...] = ()


def is_inventory(path: Path) -> bool:
    """A directory, or a YAML file whose top level has ``hosts:`` (else: a single host file)."""
    if path.is_dir():
        return True
    try:
        head = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # the single-host loader reports it with its line
    return isinstance(head, dict) and "hosts" in head


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, dict) and over is None:
        return base  # an empty section (`proxmox:` alone) overrides nothing
    return over


def _entry_lines(lines: dict[KeyPath, int], name: str) -> tuple[dict[KeyPath, int], dict[KeyPath, str]]:
    """Lines of a merged entry, and where each key came from ("hosts.NAME" or "defaults")."""
    merged: dict[KeyPath, int] = {}
    origin: dict[KeyPath, str] = {}
    for path, line in lines.items():
        if path[:1] == ("defaults",):
            merged[path[1:]] = line
            origin[path[1:]] = "defaults"
    for path, line in lines.items():
        if path[:2] == ("hosts", name):
            merged[path[2:]] = line
            origin[path[2:]] = f"hosts.{name}"
    merged[()] = lines.get(("hosts", name), 1)
    origin[()] = f"hosts.{name}"
    return merged, origin


def _rekey(err: ConfigError, name: str, origin: dict[KeyPath, str], lines: dict[KeyPath, int],
           file: str) -> ConfigError:
    """Name a key of a merged entry as it is written in the inventory file."""
    by_dotted = {_dotted(p): p for p in origin}
    path = by_dotted.get(err.key or "")
    prefix = origin.get(path, f"hosts.{name}") if path is not None else f"hosts.{name}"
    # a key missing from the entry: the error points at the nearest present parent
    if path is None and err.key:
        parts = err.key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            parent = by_dotted.get(".".join(parts[:n]))
            if parent is not None:
                prefix = origin[parent]
                break
    key = f"{prefix}.{err.key}" if err.key else prefix
    message = err.message if prefix.startswith("hosts.") else f"{err.message} (in host {name!r})"
    return ConfigError(message, file=file, line=err.line, key=key, fix=err.fix)


def _flatten(exc: ConfigError) -> list[ConfigError]:
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


def _load_inventory_file(path: Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> list[Host]:
    file = str(path)
    errors: list[ConfigError] = []
    unknown = sorted(set(data) - INVENTORY_KEYS)
    for key in unknown:
        errors.append(ConfigError(f"unknown key {key!r} in an inventory file", file=file, line=lines.get((key,)),
                                  key=key, fix="an inventory file has only 'hosts:' and 'defaults:'; "
                                               "put host settings under 'defaults:' or under a host"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.append(ConfigError("must be a mapping of host-file sections", file=file,
                                  line=lines.get(("defaults",)), key="defaults", fix="indent the sections under it"))
        defaults = {}
    hosts = data.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        errors.append(ConfigError("must map each host's name to its settings", file=file,
                                  line=lines.get(("hosts",)), key="hosts",
                                  fix="e.g. 'hosts: {gpu1: {proxmox: {endpoint: ...}}}'"))
        hosts = {}
    found: list[Host] = []
    for name, entry in hosts.items():
        line = lines.get(("hosts", name))
        if entry is None:
            entry = {}  # a host that takes everything from defaults (rare, but valid)
        if not isinstance(entry, dict):
            errors.append(ConfigError("must be a mapping of host-file sections", file=file, line=line,
                                      key=f"hosts.{name}", fix="indent the host's sections under its name"))
            continue
        merged = _merge(defaults, entry)
        entry_lines, origin = _entry_lines(lines, name)
        try:
            loaded = validate_data(merged, entry_lines, file)
        except ConfigError as exc:
            errors += [_rekey(e, name, origin, entry_lines, file) for e in _flatten(exc)]
            continue
        found.append(Host(name=name, loaded=loaded, source=f"{file}:{line}"))
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return found


def _load_file(path: Path) -> list[Host]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", file=file) from None
    data, lines = compose_text(text, file)
    if "hosts" in data:
        return _load_inventory_file(path, data, lines)
    loaded = validate_data(data, lines, file)
    return [Host(name=path.stem, loaded=loaded, source=f"{file}:1")]


def _target_keys(host: Host) -> list[tuple[str, Any]]:
    c = host.loaded.config.container
    keys: list[tuple[str, Any]] = [("hostname", c.hostname.lower())]
    if isinstance(c.vmid, int):
        keys.append(("vmid", c.vmid))
    return keys


def _line_of(host: Host, key: str) -> str:
    """``file:line`` of a container key of ``host`` (its declaration when unknown)."""
    line = host.loaded.lines.get(("container", key))
    return f"{host.loaded.path}:{line}" if line else host.source


def load_inventory(path: Path) -> Inventory:
    """All hosts of a directory or an inventory file; raises ConfigError(s) before contacting anything."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in HOST_SUFFIXES
                       and not p.name.startswith((".", "_")))
        if not files:
            raise ConfigError("no host files (*.yaml, *.yml) in this directory", file=str(path),
                              fix="put one host file per host here, or pass a host file")
    elif path.exists():
        files = [path]
    else:
        raise ConfigError("no such file or directory", file=str(path), fix="check the path")
    errors: list[ConfigError] = []
    hosts: list[Host] = []
    for f in files:
        try:
            hosts += _load_file(f)
        except ConfigError as exc:
            errors += _flatten(exc)
    by_name: dict[str, Host] = {}
    targets: dict[tuple[Any, ...], Host] = {}
    for host in hosts:
        other = by_name.get(host.name)
        if other is not None:
            errors.append(ConfigError(f"host name {host.name!r} is also used at {other.source}",
                                      file=host.source.rsplit(":", 1)[0], line=int(host.source.rsplit(":", 1)[1]),
                                      fix="give each host a unique name (file name or key under hosts:)"))
            continue
        by_name[host.name] = host
        for kind, value in _target_keys(host):
            key = (*host.pve_key, kind, value)
            first = targets.get(key)
            if first is not None:
                p = host.loaded.config.proxmox
                where = _line_of(host, kind)
                errors.append(ConfigError(
                    f"{host.name!r} and {first.name!r} ({_line_of(first, kind)}) manage the same container "
                    f"({kind} {value} on node {p.node} at {p.endpoint})",
                    file=where.rsplit(":", 1)[0], line=int(where.rsplit(":", 1)[1]), key=f"container.{kind}",
                    fix=f"give one of them another container.{kind}, or remove the duplicate entry"))
                break
            targets[key] = host
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    warnings = tuple(f"{h.name}: {w}" for h in hosts for w in h.loaded.warnings)
    return Inventory(path=path, hosts=tuple(hosts), warnings=warnings)
