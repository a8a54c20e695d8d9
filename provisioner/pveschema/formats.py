"""PVE's named string formats used by the endpoints we ship, with PVE's error texts.

Each checker raises ``FormatError`` with the exact text PVE's Perl verifier dies
with (pve-common JSONSchema.pm, pve-container LXC/Config.pm, pve-storage Plugin.pm).
A ``-list`` suffix splits the value like PVE's ``split_list`` and checks each item;
``-opt`` checks only a non-empty value.
"""

from __future__ import annotations

import re
from typing import Callable


class FormatError(ValueError):
    """A value does not satisfy a named format; ``str()`` is PVE's message."""


_OCTET = r"(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])"
IPV4_RE = rf"(?:(?:{_OCTET}\.){{3}}{_OCTET})"
_H16 = r"(?:[0-9a-fA-F]{1,4})"
_LS32 = rf"(?:(?:{IPV4_RE}|{_H16}:{_H16}))"
IPV6_RE = "(?:" + "|".join([
    rf"(?:(?:(?:{_H16}:){{6}}){_LS32})",
    rf"(?:(?:::(?:{_H16}:){{5}}){_LS32})",
    rf"(?:(?:(?:{_H16})?::(?:{_H16}:){{4}}){_LS32})",
    rf"(?:(?:(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}){_LS32})",
    rf"(?:(?:(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}){_LS32})",
    rf"(?:(?:(?:(?:{_H16}:){{0,3}}{_H16})?::(?:{_H16}:){{1}}){_LS32})",
    rf"(?:(?:(?:(?:{_H16}:){{0,4}}{_H16})?::){_LS32})",
    rf"(?:(?:(?:(?:{_H16}:){{0,5}}{_H16})?::){_H16})",
    rf"(?:(?:(?:(?:{_H16}:){{0,6}}{_H16})?::))",
]) + ")"
CONFIGID_RE = re.compile(r"[a-z][a-z0-9_-]+", re.I)
TAG_RE = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.I)
_DNS_LABEL = r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)"
_STORAGE_CONTENT = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"}


def split_list(text: str) -> list[str]:
    """PVE's split_list: NUL-separated if it has NULs, else on commas, semicolons, spaces."""
    if "\0" in text:
        return text.split("\0")
    return re.sub(r"[,;]", " ", text).split()


def _fail(msg: str) -> None:
    raise FormatError(msg)


def _re_check(rx: str, msg: str) -> Callable[[str], None]:
    compiled = re.compile(rx)

    def check(value: str) -> None:
        if not compiled.fullmatch(value):
            _fail(msg)
    return check


def _ip(value: str) -> bool:
    return bool(re.fullmatch(IPV4_RE, value) or re.fullmatch(IPV6_RE, value))


def _cidr(value: str, rx: str, low: int, high: int) -> bool:
    m = re.fullmatch(rf"{rx}/(\d+)", value)
    return bool(m) and low < int(m.group(1)) <= high


def check_ipv4_config(value: str) -> None:
    if value not in ("dhcp", "manual") and not _cidr(value, IPV4_RE, 7, 32):
        _fail("value does not look like a valid ipv4 network configuration")


def check_ipv6_config(value: str) -> None:
    if value not in ("auto", "dhcp", "manual") and not _cidr(value, IPV6_RE, 7, 128):
        _fail("value does not look like a valid ipv6 network configuration")


def check_ip_with_ll_iface(value: str) -> None:
    m = re.fullmatch(r"(fe80:[^%]+)%(.*)", value)
    if m and _ip(m.group(1)) and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]{1,20}([:.]\d+)?", m.group(2)):
        return
    if not _ip(value):
        _fail("value does not look like a valid IP address")


def check_lxc_mp_string(value: str) -> None:
    if re.search(r"/\.\.?/", value) or re.search(r"/\.\.?$", value) or value.startswith("../"):
        _fail(f"{value} contains illegal character sequences")


def check_lxc_dev_string(value: str) -> None:
    if re.search(r"/\.\.?(?:/|$)", value) or not value.startswith("/dev/"):
        _fail(f"{value} is not a valid device path")


def check_volume_id(value: str) -> None:
    if not re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", value, re.I | re.S):
        _fail(f"unable to parse volume ID '{value}'")


def check_storage_id(value: str) -> None:
    if len(value) < 2:
        _fail(f"storage ID '{value}' cannot be shorter than 2 characters")
    if not re.fullmatch(r"[a-z][a-z0-9\-_.]*[a-z0-9]", value, re.I):
        _fail(f"storage ID '{value}' contains illegal characters")


def check_configid(value: str) -> None:
    if not CONFIGID_RE.fullmatch(value):
        _fail(f"invalid configuration ID '{value}'")


def check_tag(value: str) -> None:
    if not TAG_RE.fullmatch(value):
        _fail("invalid characters in tag")


def check_disk_size(value: str) -> None:
    if not re.fullmatch(r"(\d+(\.\d+)?)([KMGT](?:iB)?)?", value):
        _fail(f"value does not look like a valid disk size: {value}")


def check_startup_order(value: str) -> None:
    parts = [p for p in value.split(",") if p.strip()]
    ok = bool(value) and all(re.fullmatch(r"(order=)?\d+|up=\d+|down=\d+", p) for p in parts)
    if not ok:
        _fail("unable to parse startup options")


def check_ct_timezone(value: str) -> None:
    if value in ("host", "UTC"):
        return
    try:
        with open("/usr/share/zoneinfo/zone.tab", encoding="utf-8") as fh:
            zones = {ln.split("\t")[2] for ln in fh if not ln.startswith("#") and ln.count("\t") >= 2}
    except OSError:
        zones = set()
    if value.strip() not in zones:
        _fail(f"invalid time zone '{value}'")


def check_storage_content(value: str) -> None:
    if value not in _STORAGE_CONTENT:
        _fail(f"invalid content type '{value}'")


FORMATS: dict[str, Callable[[str], None]] = {
    "pve-vmid": _re_check(r"[1-9][0-9]{2,8}", "value does not look like a valid VM ID"),
    "pve-node": _re_check(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?",
                          "value does not look like a valid node name"),
    "pve-storage-id": check_storage_id,
    "pve-configid": check_configid,
    "pve-tag": check_tag,
    "pve-lxc-dev-string": check_lxc_dev_string,
    "pve-lxc-mp-string": check_lxc_mp_string,
    "pve-volume-id": check_volume_id,
    "dns-name": _re_check(rf"({_DNS_LABEL}\.)*{_DNS_LABEL}", "value does not look like a valid DNS name"),
    "lxc-ip-with-ll-iface": check_ip_with_ll_iface,
    "ipv4": _re_check(IPV4_RE, "value does not look like a valid IPv4 address"),
    "ipv6": _re_check(IPV6_RE, "value does not look like a valid IPv6 address"),
    "ip": lambda v: None if _ip(v) else _fail("value does not look like a valid IP address"),
    "mac-addr": _re_check(r"(?i)[a-f0-9][02468ace](?::[a-f0-9]{2}){5}",
                          "value does not look like a valid unicast MAC address"),
    "pve-ipv4-config": check_ipv4_config,
    "pve-ipv6-config": check_ipv6_config,
    "disk-size": check_disk_size,
    "pve-startup-order": check_startup_order,
    "pve-ct-timezone": check_ct_timezone,
    "pve-storage-content": check_storage_content,
    "pve-task-status-type": lambda v: None if re.fullmatch(r"(?i)ok|error|warning|unknown", v)
    else _fail(f"invalid status '{v}'"),
    # pve-access-control formats: checked loosely (ids of realms, pools, privileges)
    "pve-realm": _re_check(r"[A-Za-z][A-Za-z\.\-_0-9]+", "value does not look like a valid realm"),
    "pve-poolid": _re_check(r"[A-Za-z0-9_\-/]+", "invalid pool ID"),
    "pve-priv": _re_check(r"[A-Za-z.]+", "invalid privilege"),
    "string": lambda v: None,
}


def check_format(name: str, value: str) -> None:
    """Check ``value`` against the named format ``name`` (with -list/-opt suffixes)."""
    m = re.fullmatch(r"(.*?)(?:-(list|opt))?", name)
    assert m is not None
    base, kind = m.group(1), m.group(2)
    checker = FORMATS.get(base) or FORMATS.get(name)
    if checker is None:
        raise FormatError(f"undefined format '{name}'")
    if kind == "list" and base in FORMATS:
        for item in split_list(value):
            checker(item)
    elif kind == "opt" and base in FORMATS:
        if value:
            checker(value)
    else:
        checker(value)
