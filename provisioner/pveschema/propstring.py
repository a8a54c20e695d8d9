"""Comma-list property strings (``devN``, ``netN``, ``mpN``, ``rootfs``, ``features``...).

``parse_property_string`` splits like PVE's parser (``key=value`` parts, one bare
part for the ``default_key``, booleans normalised to ``"1"``/``"0"``) and then
checks the parts against the sub-schema; ``format_property_string`` prints like
PVE (default key bare and first, then required keys, then the rest, sorted).
The client uses both to normalise and diff values the way PVE stores them.
"""

from __future__ import annotations

from typing import Any, Mapping

from .schema import Prop, config_format

Format = Mapping[str, Prop]


class PropertyStringError(ValueError):
    """A property string PVE would reject.

    ``str()`` is PVE's text; ``errors`` holds per-key messages (``dev0.gid`` style
    paths) when the failure was in a key's value rather than in the list syntax.
    """

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        self.errors = errors or {}
        text = message + "".join(f"{k}: {v}\n" for k, v in sorted(self.errors.items()))
        super().__init__(text)


def parse_boolean(value: str) -> str | None:
    """PVE's parse_boolean: "1"/"0" for the accepted spellings, else None."""
    low = value.lower()
    if low in ("1", "on", "yes", "true"):
        return "1"
    if low in ("0", "off", "no", "false"):
        return "0"
    return None


def resolve_format(fmt: Format | str, version: str = "9.1") -> Format:
    """Accept a sub-schema or a config key name (``dev0``, ``net1``, ``features``)."""
    if isinstance(fmt, str):
        prop = config_format(version, fmt)
        if prop is None or not isinstance(prop.get("format"), dict):
            raise KeyError(f"{fmt!r} is not a property-string config key")
        return prop["format"]
    return fmt


def split_property_string(fmt: Format, value: str) -> dict[str, str]:
    """Split into a dict without checking values (PVE's syntax errors only)."""
    default_key = next((k for k, s in fmt.items() if s.get("default_key")), None)
    res: dict[str, str] = {}
    seen_bare = False
    for part in value.split(","):
        if not part.strip():
            continue
        if "=" in part:
            key, _, val = part.partition("=")
            if not key or not val:
                raise PropertyStringError("missing key in comma-separated list property\n")
            if key in res:
                raise PropertyStringError(f"duplicate key in comma-separated list property: {key}\n")
            schema = fmt.get(key)
            if schema is None:
                raise PropertyStringError(f"invalid key in comma-separated list property: {key}\n")
            if schema.get("type") == "boolean":
                val = parse_boolean(val) or val
            res[key] = val
        else:
            if default_key is None:
                raise PropertyStringError(
                    "value without key, but schema does not define a default key\n")
            if seen_bare or res.get(default_key):
                raise PropertyStringError(
                    f"duplicate key in comma-separated list property: {default_key}\n")
            seen_bare = True
            if fmt[default_key].get("type") == "boolean":
                part = parse_boolean(part) or part
            res[default_key] = part
    return res


def parse_property_string(fmt: Format | str, value: str, *, path: str = "",
                          version: str = "9.1") -> dict[str, str]:
    """Parse and validate a property string; raises ``PropertyStringError`` like PVE.

    ``fmt`` is a sub-schema or a config key (``"dev0"``); ``path`` prefixes the
    per-key error paths (PVE uses the config key, e.g. ``dev0.gid``).
    """
    from .validator import check_object  # local import: validator imports this module

    sub = resolve_format(fmt, version)
    if not path and isinstance(fmt, str):
        path = fmt
    res = split_property_string(sub, value)
    errors: dict[str, str] = {}
    check_object(path, sub, dict(res), False, errors)
    if errors:
        raise PropertyStringError("format error\n", errors)
    return res


def format_property_string(fmt: Format | str, data: Mapping[str, Any], *,
                           skip: tuple[str, ...] = (), version: str = "9.1") -> str:
    """Print ``data`` as PVE does: default key bare and first, required keys, the rest sorted."""
    sub = resolve_format(fmt, version)
    default_key = next((k for k, s in sub.items() if s.get("default_key")), None)
    done = set(skip)
    parts: list[str] = []

    def add(key: str, bare: bool = False) -> None:
        if key in done or data.get(key) is None:
            done.add(key)
            return
        done.add(key)
        if key not in sub:
            raise PropertyStringError(f"invalid key '{key}'\n")
        text = str(data[key])
        if isinstance(data[key], bool):
            text = "1" if data[key] else "0"
        if "," in text:
            raise PropertyStringError(f"illegal value with commas for {key}\n")
        parts.append(text if bare else f"{key}={text}")

    if default_key:
        add(default_key, bare=True)
    for key in sorted(data):
        if key in sub and not sub[key].get("optional"):
            add(key)
    for key in sorted(data):
        add(key)
    return ",".join(parts)


def normalise_property_string(key: str, value: str, *, version: str = "9.1",
                              ignore: tuple[str, ...] = ()) -> str:
    """Canonical form of a config value for diffing: parsed, booleans as 1/0, printed
    like PVE. ``ignore`` drops keys PVE fills in itself (e.g. ``hwaddr``/``type`` of netN)."""
    return format_property_string(key, parse_property_string(key, value, version=version),
                                  skip=ignore, version=version)
