"""The few facts only doctor needs (everything else comes from ``provisioner.facts``).

Each is a ``Fact`` like the engine's, gathered in the same single SSH round trip:

| fact name          | where | value |
| ---                | ---   | ---   |
| ``doctor.vram``    | host  | ``list[Vram]`` (memory per GPU from nvidia-smi) |
| ``doctor.host_dns``| host  | :class:`Resolution` for the names the container needs |
| ``doctor.host_tools`` | host | ``set[str]`` of tools present (``pct``, ``pvesh``) |
| ``doctor.ct_nodes``| ct    | :class:`CtNodes` (device nodes as the container sees them) |
| ``doctor.ct_smi``  | ct    | :class:`SmiRun` (``nvidia-smi`` exit code and output) |
| ``doctor.ct_pkgs`` | ct    | ``dict[str, Package]``: dkms / kernel packages in the container |
| ``doctor.ct_llama``| ct    | :class:`LlamaLinks` (``ldd llama-server``) |
| ``doctor.ct_dns``  | ct    | :class:`Resolution` |
| ``doctor.server``  | ct    | :class:`ServerProbe` (/props, GGUF header, model readability, ports) |
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config.schema import HostFile
from ..facts.base import Fact
from ..facts.nvidia_ct import Package, parse_packages
from ..facts.services import GATEWAY_KEY, LLAMA_BIN, LLAMA_USER, SERVER_KEY, model_paths
from ..redact import register

#: bytes of the model file read when /props cannot be asked (metadata comes first in a GGUF)
GGUF_PREFIX_BYTES = 128 * 1024


@dataclass(frozen=True)
class Vram:
    index: int
    total_mib: int
    used_mib: int
    free_mib: int


@dataclass(frozen=True)
class CtNode:
    path: str
    uid: int
    gid: int
    mode: int
    major: int
    minor: int


@dataclass(frozen=True)
class CtNodes:
    nodes: dict[str, CtNode] = field(default_factory=dict)
    #: group ids of the service user (``id -G llama``); empty when the user does not exist
    service_groups: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SmiRun:
    present: bool
    exit_code: int | None = None
    output: str = ""


@dataclass(frozen=True)
class LlamaLinks:
    binary: bool
    #: soname -> resolved path ("not found" when missing)
    libs: dict[str, str] = field(default_factory=dict)
    raw: str = ""


@dataclass(frozen=True)
class Resolution:
    #: name -> resolved
    names: dict[str, bool] = field(default_factory=dict)
    nameservers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    process: str


@dataclass(frozen=True)
class ServerProbe:
    props_status: int = 0
    props: dict[str, Any] | None = None
    #: the first bytes of the model file (its GGUF metadata)
    gguf_head: bytes | None = None
    #: role -> readable by the service user
    readable: dict[str, bool] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    #: the gateway key read from the container (registered for redaction), when not configured locally
    gateway_key: str | None = None


# -- parsing ----------------------------------------------------------------------------------------

def parse_vram(output: str, code: int) -> list[Vram]:
    out = []
    for line in output.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) == 4 and all(c.isdigit() for c in cols):
            i, t, u, f = (int(c) for c in cols)
            out.append(Vram(i, t, u, f))
    return out


def parse_ct_nodes(output: str, code: int) -> CtNodes:
    nodes: dict[str, CtNode] = {}
    groups: frozenset[int] = frozenset()
    for line in output.splitlines():
        p = line.split()
        if len(p) == 7 and p[0] == "node":
            try:
                nodes[p[1]] = CtNode(p[1], int(p[2]), int(p[3]), int(p[4], 8), int(p[5], 16), int(p[6], 16))
            except ValueError:
                continue
        elif p[:1] == ["groups"]:
            groups = frozenset(int(g) for g in p[1:] if g.isdigit())
    return CtNodes(nodes, groups)


def parse_smi(output: str, code: int) -> SmiRun:
    lines = output.splitlines()
    if lines[:1] == ["missing"]:
        return SmiRun(False)
    rc = next((int(ln[3:]) for ln in reversed(lines) if ln.startswith("rc=") and ln[3:].lstrip("-").isdigit()), None)
    body = "\n".join(ln for ln in lines if not ln.startswith("rc="))
    return SmiRun(True, rc, body)


def parse_ct_pkgs(output: str, code: int) -> dict[str, Package]:
    return {n: p for n, p in parse_packages(output).items() if p.installed}


def parse_ldd(output: str, code: int) -> LlamaLinks:
    lines = output.splitlines()
    if "binary 1" not in lines:
        return LlamaLinks(False)
    libs: dict[str, str] = {}
    raw = []
    for line in lines:
        if not line.startswith("ldd "):
            continue
        text = line[4:].strip()
        raw.append(text)
        name, sep, where = text.partition("=>")
        if sep:
            libs[name.strip()] = where.strip().split(" (", 1)[0].strip()
    return LlamaLinks(True, libs, "\n".join(raw))


def parse_resolution(output: str, code: int) -> Resolution:
    names: dict[str, bool] = {}
    ns: list[str] = []
    for line in output.splitlines():
        p = line.split()
        if len(p) == 3 and p[0] == "resolve":
            names[p[1]] = p[2] == "ok"
        elif len(p) == 2 and p[0] == "ns":
            ns.append(p[1])
    return Resolution(names, ns)


def parse_server(output: str, code: int) -> ServerProbe:
    status, props, head, key = 0, None, None, None
    readable: dict[str, bool] = {}
    listeners: list[Listener] = []
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "props_status" and rest.strip().isdigit():
            status = int(rest.strip())
        elif word == "props" and rest.strip():
            try:
                data = json.loads(rest)
                props = data if isinstance(data, dict) else None
            except ValueError:
                props = None
        elif word == "gguf" and rest.strip():
            try:
                head = base64.b64decode(rest.strip())
            except ValueError:
                head = None
        elif word in ("readable", "unreadable") and rest.strip():
            readable[rest.strip()] = word == "readable"
        elif word == "listen":
            p = rest.split(None, 1)
            if p:
                addr, _, port = p[0].rpartition(":")
                if port.isdigit():
                    listeners.append(Listener(addr, int(port), p[1] if len(p) > 1 else ""))
        elif word == "gwkey" and rest.strip():
            key = register(rest.strip())
    return ServerProbe(status, props if status == 200 else None, head, readable, listeners, key)


# -- commands ---------------------------------------------------------------------------------------

VRAM = Fact("doctor.vram",
            "command -v nvidia-smi >/dev/null 2>&1 || exit 0\n"
            "nvidia-smi --query-gpu=index,memory.total,memory.used,memory.free --format=csv,noheader,nounits",
            parse_vram)

HOST_TOOLS = Fact("doctor.host_tools",
                  "for t in pct pvesh pveversion; do command -v $t >/dev/null 2>&1 && echo $t; done; true",
                  lambda out, code: set(out.split()))

CT_NODES = Fact("doctor.ct_nodes",
                "for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c \"$n\" ] && "
                "stat -c 'node %n %u %g %a %t %T' \"$n\"; done\n"
                f"echo \"groups $(id -G {LLAMA_USER} 2>/dev/null)\"\ntrue",
                parse_ct_nodes, where="ct")

CT_SMI = Fact("doctor.ct_smi",
              "command -v nvidia-smi >/dev/null 2>&1 || { echo missing; exit 0; }\n"
              "timeout 20 nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader 2>&1 | head -n 8\n"
              "echo \"rc=${PIPESTATUS[0]}\"",
              parse_smi, where="ct")

CT_PKGS = Fact("doctor.ct_pkgs",
               "dpkg-query -W -f='pkg ${Package} ${Version} ${db:Status-Abbrev}\\n' dkms '*-dkms' 'nvidia-open' "
               "'nvidia-kernel-*' 'cuda-drivers*' 'linux-image-*' 'linux-headers-*' 'proxmox-kernel-*' "
               "'pve-kernel-*' 2>/dev/null; true",
               parse_ct_pkgs, where="ct")

CT_LLAMA = Fact("doctor.ct_llama",
                f"b={LLAMA_BIN}\n[ -x \"$b\" ] || exit 0\necho 'binary 1'\n"
                "ldd \"$b\" 2>&1 | sed 's/^/ldd /'\ntrue",
                parse_ldd, where="ct")


def names_to_resolve(cfg: HostFile) -> list[str]:
    """Names the container must resolve: NVIDIA's repository, Debian, Hugging Face for hub models."""
    names = [urlsplit(cfg.driver.repo_url).hostname or "", "deb.debian.org"]
    if cfg.model is not None and cfg.model.repo and cfg.model.location == "container":
        names.append("huggingface.co")
    return [n for n in dict.fromkeys(names) if n and not n.replace(".", "").isdigit()]


def resolve_command(names: list[str]) -> str:
    """Resolve each name in parallel (bounded by `timeout`), plus the nameservers in use."""
    quoted = " ".join(shlex.quote(n) for n in names)
    return ("grep -s '^nameserver' /etc/resolv.conf | awk '{print \"ns\", $2}'\n"
            f"for h in {quoted}; do ( if timeout 4 getent ahosts \"$h\" >/dev/null 2>&1; then "
            "echo \"resolve $h ok\"; else echo \"resolve $h fail\"; fi ) & done; wait; true")


def host_dns_fact(cfg: HostFile) -> Fact[Resolution]:
    return Fact("doctor.host_dns", resolve_command(names_to_resolve(cfg)), parse_resolution)


def ct_dns_fact(cfg: HostFile) -> Fact[Resolution]:
    return Fact("doctor.ct_dns", resolve_command(names_to_resolve(cfg)), parse_resolution, where="ct")


def server_command(cfg: HostFile) -> str:
    """/props (key sent through curl's config on stdin, never argv), GGUF head, readability, ports."""
    port = cfg.server.port
    host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host
    lines = [f"k={SERVER_KEY}",
             "hdr() { [ -r \"$k\" ] && printf 'header = \"Authorization: Bearer %s\"\\n' \"$(cat \"$k\")\"; true; }",
             "if command -v curl >/dev/null 2>&1; then",
             f"  body=$(hdr | curl -s -m 5 -K - -w '\\n%{{http_code}}' http://{host}:{port}/props 2>/dev/null)",
             "  echo \"props_status $(printf '%s' \"$body\" | tail -n1)\"",
             "  echo \"props $(printf '%s' \"$body\" | sed '$d' | tr -d '\\n')\"",
             "fi"]
    paths = model_paths(cfg, cfg.model.dir) if cfg.model else {}
    for role, path in paths.items():
        q = shlex.quote(path)
        lines.append(f"if id {LLAMA_USER} >/dev/null 2>&1; then runuser -u {LLAMA_USER} -- test -r {q}; "
                     f"else test -r {q}; fi && echo 'readable {role}' || echo 'unreadable {role}'")
    if "model" in paths:
        q = shlex.quote(paths["model"])
        lines.append(f"[ -r {q} ] && echo \"gguf $(head -c {GGUF_PREFIX_BYTES} {q} | base64 -w0)\"")
    ports = {port, cfg.gateway.port} if cfg.gateway.enabled else {port}
    pattern = "|".join(f":{p}$" for p in sorted(ports))
    lines.append(f"ss -Hltnp 2>/dev/null | awk '$4 ~ /({pattern})/ {{print \"listen\", $4, $6}}'")
    if cfg.gateway.enabled and cfg.gateway.api_key is None:
        lines.append(f"[ -r {GATEWAY_KEY} ] && echo \"gwkey $(head -n1 {GATEWAY_KEY})\"")
    lines.append("true")
    return "\n".join(lines)


def server_fact(cfg: HostFile) -> Fact[ServerProbe]:
    return Fact("doctor.server", server_command(cfg), parse_server, where="ct")


@dataclass(frozen=True)
class Hashed:
    """``--deep``: a model file's sha256 computed now, and how long reading it took."""

    sha256: str
    size: int
    seconds: float


def parse_hashes(output: str, code: int) -> dict[str, Hashed]:
    out: dict[str, Hashed] = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 5 and words[0] == "sha" and len(words[2]) == 64 and words[3].isdigit():
            try:
                out[words[1]] = Hashed(words[2], int(words[3]), float(words[4]))
            except ValueError:
                continue
    return out


def hash_fact(cfg: HostFile) -> Fact[dict[str, Hashed]] | None:
    """``doctor --deep``: sha256 of every model file, where it lives (reads every byte of it)."""
    if cfg.model is None:
        return None
    host = cfg.model.location == "host"
    base = cfg.model.host_dir if host else cfg.model.dir
    r = "" if host else '"$R"'
    lines = []
    for role, path in model_paths(cfg, base).items():
        q = f"{r}{shlex.quote(path)}"
        guard = "" if host else f"inroot {q} && "
        lines.append(f"if {guard}[ -f {q} ]; then t0=$(date +%s.%N); s=$(sha256sum {q} | cut -c1-64); "
                     f"echo \"sha {role} $s $(stat -c %s {q}) $(awk -v a=\"$t0\" -v b=\"$(date +%s.%N)\" "
                     "'BEGIN{printf \"%.1f\", b-a}')\"; fi")
    lines.append("true")
    return Fact("doctor.model_sha", "\n".join(lines), parse_hashes, where="host" if host else "ct", offline=not host)


def doctor_facts(cfg: HostFile, *, deep: bool = False) -> list[Fact[Any]]:
    """Every fact of doctor's own, for this host file (``deep``: also hash the model files)."""
    facts: list[Fact[Any]] = [VRAM, HOST_TOOLS, host_dns_fact(cfg), CT_NODES, CT_SMI, CT_PKGS, CT_LLAMA,
                              ct_dns_fact(cfg)]
    if cfg.model is not None:
        facts.append(server_fact(cfg))
    hashed = hash_fact(cfg) if deep else None
    if hashed is not None:
        facts.append(hashed)
    return facts
