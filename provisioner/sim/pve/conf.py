"""PVE's LXC container config format (``/etc/pve/lxc/<vmid>.conf``): parse, write, lock.

Layout, as pve-container writes it:
  * the description first, as ``#`` comment lines, each URL-encoded (control and
    high-bit characters, ``:`` and ``%``), one line per description line;
  * ``key: value`` lines sorted by key, then raw ``lxc.*`` lines in file order;
  * ``[pve:pending]`` with pending values and ``delete: k1,k2``;
  * one ``[snapname]`` section per snapshot (sorted), with ``parent``/``snaptime``.
The digest is the SHA-1 hex of the file's bytes (what ``GET config`` returns and
``PUT config digest=`` compares against).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

# keys written elsewhere than the sorted key list (or not at all)
_SPECIAL = {"description", "digest", "lxc"}


@dataclass
class Section:
    """One section of the file: plain keys, the description, raw ``lxc.*`` lines."""

    values: dict[str, str] = field(default_factory=dict)
    lxc: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, str]:
        """Plain values; raw lxc lines (if any) as ``lxc`` = ``"key: value"`` lines."""
        out = dict(self.values)
        if self.lxc:
            out["lxc"] = "\n".join(f"{k}: {v}" for k, v in self.lxc)
        return out


@dataclass
class PveConf:
    """A parsed container config; ``digest`` is that of the text it was parsed from."""

    main: Section = field(default_factory=Section)
    pending: Section = field(default_factory=Section)
    snapshots: dict[str, Section] = field(default_factory=dict)
    digest: str = ""

    @property
    def values(self) -> dict[str, str]:
        return self.main.values

    def pending_delete(self) -> list[str]:
        """Keys queued for deletion (``!`` force marks stripped)."""
        return [k.lstrip("!") for k in re.split(r"[,;\s]+", self.pending.values.get("delete", "")) if k]

    def set_pending_delete(self, keys: list[str]) -> None:
        if keys:
            self.pending.values["delete"] = ",".join(keys)
        else:
            self.pending.values.pop("delete", None)


def encode_text(text: str) -> str:
    """URL-encode like PVE's encode_text: everything but printable ASCII minus ``%`` and ``:``."""
    safe = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%:")
    return quote(text, safe=safe)


def decode_text(text: str) -> str:
    return unquote(text)


def digest(text: str | bytes) -> str:
    """SHA-1 hex of the config text, as PVE computes ``digest``."""
    raw = text.encode() if isinstance(text, str) else text
    return hashlib.sha1(raw).hexdigest()


def parse(text: str) -> PveConf:
    """Parse config text; unparsable lines raise ``ValueError`` (PVE warns, we are strict)."""
    conf = PveConf(digest=digest(text))
    section = conf.main
    descr: list[str] = []

    def flush_descr() -> None:
        if descr:
            section.values["description"] = "".join(descr)
            descr.clear()

    for line in text.split("\n"):
        if not line.strip():
            continue
        if re.fullmatch(r"\[pve:pending\]\s*", line, re.I):
            flush_descr()
            section = conf.pending
            continue
        m = re.fullmatch(r"\[([a-z][a-z0-9_\-]+)\]\s*", line, re.I)
        if m:
            flush_descr()
            section = conf.snapshots.setdefault(m.group(1), Section())
            continue
        if line.startswith("#"):
            descr.append(decode_text(line[1:]) + "\n")
            continue
        m = re.fullmatch(r"(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*", line)
        if m:
            section.lxc.append((m.group(1), m.group(2)))
            continue
        m = re.fullmatch(r"description:\s*(.*\S)\s*", line)
        if m:
            descr.append(decode_text(m.group(1)))
            continue
        m = re.fullmatch(r"([a-z][a-z_]*\d*):\s*(.+?)\s*", line)
        if m:
            section.values[m.group(1)] = m.group(2)
            continue
        raise ValueError(f"unable to parse config: {line}")
    flush_descr()
    return conf


def _section_text(section: Section) -> str:
    out = []
    # Perl's split(/\n/, $descr): inner empty lines stay (as a bare "#"), trailing ones go
    # (pve-container src/PVE/LXC/Config.pm:1248-1252 write_pct_config@94f5585)
    lines = (section.values.get("description") or "").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    for line in lines:
        out.append("#" + encode_text(line) + "\n")
    for key in sorted(section.values):
        if key in _SPECIAL:
            continue
        value = section.values[key]
        if "\n" in value:
            raise ValueError(f"detected invalid newline inside property '{key}'")
        out.append(f"{key}: {value}\n")
    out.extend(f"{k}: {v}\n" for k, v in section.lxc)
    return "".join(out)


def write(conf: PveConf) -> str:
    """Render like pve-container's write_pct_config."""
    text = _section_text(conf.main)
    if conf.pending.values or conf.pending.lxc:
        text += "\n[pve:pending]\n" + _section_text(conf.pending)
    for name in sorted(conf.snapshots):
        text += f"\n[{name}]\n" + _section_text(conf.snapshots[name])
    return text


class ConfStore:
    """The config files of one simulated node (``SIM_ROOT/etc/pve``), with per-vmid locks."""

    def __init__(self, sim_root: Path) -> None:
        self.root = Path(sim_root) / "etc" / "pve"
        self.lxc_dir = self.root / "lxc"
        self.lock_dir = self.root / ".locks"

    def path(self, vmid: int) -> Path:
        return self.lxc_dir / f"{vmid}.conf"

    def exists(self, vmid: int) -> bool:
        return self.path(vmid).exists()

    def vmids(self) -> list[int]:
        if not self.lxc_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.lxc_dir.glob("*.conf") if p.stem.isdigit())

    def load(self, vmid: int) -> PveConf:
        """Parse the config; ``FileNotFoundError`` if the CT does not exist."""
        return parse(self.path(vmid).read_text(encoding="utf-8"))

    def save(self, vmid: int, conf: PveConf) -> str:
        """Write atomically (temp file + rename, like pmxcfs users do); returns the new digest."""
        text = write(conf)
        self.lxc_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(vmid).with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path(vmid))
        conf.digest = digest(text)
        return conf.digest

    def remove(self, vmid: int) -> None:
        self.path(vmid).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, vmid: int, timeout: float = 10.0) -> Iterator[None]:
        """Hold the per-vmid flock (``.locks/lock-<vmid>.conf``), like PVE's lock_config."""
        import time
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"lock-{vmid}.conf", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"can't lock file '{self.lock_dir}/lock-{vmid}.conf' "
                                           "- got timeout") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)
