"""Facts: what is true on the host and in the container, gathered in one round trip.

A fact is a shell snippet plus a ``process`` function that turns its output
into a typed value (pyinfra style). ``gather`` concatenates every host fact and,
when the container runs, every container fact (through one ``pct exec`` inside
the same script) into a single SSH command: one round trip for all of them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Literal, TypeVar

from ..connectors.ssh import SSH
from ..errors import RemoteError

T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    name: str
    command: str
    #: (output, exit code of the snippet) -> typed value
    process: Callable[[str, int], T]
    where: Literal["host", "ct"] = "host"
    #: a "ct" fact that only reads files, under ``$R`` (the container's root, "" inside it):
    #: doctor runs it on a stopped container's root filesystem too, through `pct mount`
    offline: bool = False


def _section(nonce: str, fact: Fact[Any]) -> str:
    return (f"echo '@@{nonce} begin {fact.name}'\n"
            f"( {fact.command}\n) 2>&1\n"
            f"echo \"@@{nonce} end {fact.name} $?\"\n")


#: the value of ``gather`` under this name: why a stopped CT's root could not be mounted
OFFLINE_FAILED = "ct.offline_failed"

#: ``inroot PATH``: does PATH, symlinks followed, stay in the container's root? Always inside it;
#: on a mounted root a symlink such as /srv -> /etc would otherwise read the *host's* files.
INROOT = ('inroot() { [ -z "$R" ] && return 0; case "$(readlink -m -- "$1")" in "$R"|"$R"/*) return 0;; '
          'esac; return 1; }')


def _offline(facts: list[Fact[Any]], vmid: int, nonce: str) -> str:
    """The offline facts of a stopped CT, on its root filesystem mounted with `pct mount`.

    PVE prints ``mounted CT N in '/var/lib/lxc/N/rootfs'`` (pve-container src/PVE/CLI/pct.pm:380
    at 94f5585) and holds the CT's lock ``mounted`` until `pct unmount`, which the trap always runs.
    """
    v = int(vmid)
    body = "".join(_section(nonce, f) for f in facts)
    return (f"m=$(pct mount {v} 2>&1)\n"
            f"R=$(printf '%s\\n' \"$m\" | sed -n \"s/^mounted CT [0-9]* in '\\(.*\\)'$/\\1/p\" | head -n1)\n"
            f"if [ -n \"$R\" ] && [ -d \"$R\" ]; then\n"
            f"R=$(readlink -f -- \"$R\")\n"
            f"trap 'pct unmount {v} >/dev/null 2>&1' EXIT HUP INT TERM\n"
            f"{INROOT}\n{body}"
            f"pct unmount {v} >/dev/null 2>&1; trap - EXIT HUP INT TERM\n"
            f"else echo \"@@{nonce} offline-failed $(printf '%s' \"$m\" | head -n1)\"; fi")


def build_script(facts: Iterable[Fact[Any]], vmid: int | None, ct_running: bool, nonce: str,
                 mount_stopped: bool = False) -> str:
    facts = list(facts)
    host = [f for f in facts if f.where == "host"]
    ct = [f for f in facts if f.where == "ct"]
    parts = ["set +e", "export LC_ALL=C"]
    parts += [_section(nonce, f) for f in host]
    if ct and vmid is not None and ct_running:
        marker = f"__PROVISION_CT_{nonce}__"
        inner = f"set +e\nexport LC_ALL=C\nR=\n{INROOT}\n" + "".join(_section(nonce, f) for f in ct)
        parts.append(f"pct exec {int(vmid)} -- bash -s <<'{marker}'\n{inner}{marker}")
    elif vmid is not None and mount_stopped and any(f.offline for f in ct):
        parts.append(_offline([f for f in ct if f.offline], vmid, nonce))
    return "\n".join(parts) + "\n"


def parse_output(output: str, facts: Iterable[Fact[Any]], nonce: str) -> dict[str, Any]:
    """Split the script output into sections and run each fact's ``process``."""
    by_name = {f.name: f for f in facts}
    raw: dict[str, tuple[str, int]] = {}
    current: str | None = None
    buf: list[str] = []
    begin, end = f"@@{nonce} begin ", f"@@{nonce} end "
    failed = f"@@{nonce} offline-failed"
    values: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith(failed):
            values[OFFLINE_FAILED] = line[len(failed):].strip() or "pct mount failed"
        elif line.startswith(begin):
            current, buf = line[len(begin):].strip(), []
        elif line.startswith(end) and current is not None:
            name, _, code = line[len(end):].rpartition(" ")
            raw[name] = ("\n".join(buf), int(code) if code.lstrip("-").isdigit() else 1)
            current = None
        elif current is not None:
            buf.append(line)
    for name, fact in by_name.items():
        if name in raw:
            out, code = raw[name]
            values[name] = fact.process(out, code)
    return values


def gather(ssh: SSH, facts: Iterable[Fact[Any]], *, vmid: int | None, ct_running: bool,
           timeout: float = 120, mount_stopped: bool = False) -> dict[str, Any]:
    """Run every fact in one SSH round trip; facts that could not run are absent.

    ``mount_stopped`` (doctor): a stopped CT's offline facts are read through `pct mount`.
    """
    facts = list(facts)
    nonce = secrets.token_hex(4)
    script = build_script(facts, vmid, ct_running, nonce, mount_stopped=mount_stopped)
    result = ssh.run("bash -s", stdin=script.encode(), timeout=timeout)
    values = parse_output(result.stdout, facts, nonce)
    missing_host = [f.name for f in facts if f.where == "host" and f.name not in values]
    if missing_host:
        raise RemoteError("gathering host facts failed", command="bash -s (facts script)",
                          exit_code=result.exit_code, output=result.stderr or result.stdout,
                          host=ssh.target.host)
    return values


def kv(output: str) -> dict[str, str]:
    """Parse ``key=value`` lines."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out
