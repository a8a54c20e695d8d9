"""Facts for the model, the services, their health and the resolv.conf trap.

Everything here is shell run in the one facts round trip (see ``facts/base.py``):
container facts inside the one ``pct exec``, host facts (the model on the host)
beside them. Each fact prints simple ``kind value...`` lines parsed into typed
records, so a converged system plans nothing without another command.

The same ``inputs_snippet`` computes a service's "inputs digest" here and after a
restart (``operations/services.py`` records it), so both sides always agree.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import HostFile
from .base import Fact

# -- where things live in the container ---------------------------------------------------------
LLAMA_ROOT = "/opt/provision/llama.cpp/current"
LLAMA_BIN = f"{LLAMA_ROOT}/bin/llama-server"
CONF_DIR = "/etc/provision"
SERVER_KEY = f"{CONF_DIR}/llama-server.key"
GATEWAY_KEY = f"{CONF_DIR}/gateway.key"
GATEWAY_CONF = f"{CONF_DIR}/gateway.json"
UNIT_DIR = "/etc/systemd/system"
LLAMA_UNIT = "llama-server"
#: llama-server's pre-start check: a CUDA build refuses a mismatched userspace or no GPU (no CPU fallback)
GPU_CHECK = "/usr/local/bin/provision-llama-gpu-check"  # an existing 0755 dir: it runs as the llama user
GATEWAY_UNIT = "provision-gateway"
STATE_DIR = "/var/lib/provision"
VERIFY_FLAG = f"{STATE_DIR}/verify-pending"
GATEWAY_ROOT = "/opt/provision/gateway"
GATEWAY_VENV = f"{GATEWAY_ROOT}/venv"
GATEWAY_INSTALLED = f"{GATEWAY_ROOT}/installed.json"
LLAMA_USER = "llama"
GATEWAY_USER = "provision-gw"
SIDECAR_SUFFIX = ".provision.json"


def unit_path(name: str) -> str:
    return f"{UNIT_DIR}/{name}.service"


def recorded_path(unit: str) -> str:
    """Where the inputs digest of ``unit`` at its last (re)start is kept."""
    return f"{STATE_DIR}/{unit}.inputs"


def model_paths(cfg: HostFile, base: str) -> dict[str, str]:
    """role ("model", "draft") -> the file's path under ``base``."""
    if cfg.model is None:
        return {}
    out = {"model": f"{base}/{cfg.model.filename}"}
    if cfg.model.draft is not None:
        out["draft"] = f"{base}/{cfg.model.draft.filename}"
    return out


def service_inputs(cfg: HostFile) -> dict[str, list[str]]:
    """unit -> the files whose content makes the running service what it is."""
    ct_models = model_paths(cfg, cfg.model.dir) if cfg.model else {}
    sidecars = [p + SIDECAR_SUFFIX for p in ct_models.values()]
    out = {LLAMA_UNIT: [unit_path(LLAMA_UNIT), SERVER_KEY, GPU_CHECK, *sidecars]}
    if cfg.gateway.enabled:
        out[GATEWAY_UNIT] = [unit_path(GATEWAY_UNIT), GATEWAY_CONF, GATEWAY_KEY, SERVER_KEY, GATEWAY_INSTALLED]
    return out


def inputs_snippet(unit: str, files: list[str]) -> str:
    """Shell printing one line: the digest of ``files`` (+ the llama-server binary for that unit)."""
    parts = [f"sha256sum {' '.join(shlex.quote(f) for f in files)} 2>/dev/null"]
    if unit == LLAMA_UNIT:
        parts.append(f"readlink -f {LLAMA_BIN} 2>/dev/null; stat -L -c '%s %Y' {LLAMA_BIN} 2>/dev/null")
    return "{ " + "; ".join(parts) + "; } | sha256sum | cut -c1-64"


# -- records --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileState:
    size: int
    mtime: int
    #: the sidecar ``<file>.provision.json`` (size, mtime, sha256, source), if readable
    sidecar: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelFacts:
    files: dict[str, FileState] = field(default_factory=dict)
    #: free bytes in the models directory (or its nearest existing parent)
    avail: int | None = None
    dir_exists: bool = False


@dataclass(frozen=True)
class UnitState:
    active: str  # active | inactive | failed | activating | ...
    enabled: str  # enabled | disabled | not-found | ...


@dataclass(frozen=True)
class ServiceFacts:
    #: path -> sha256 of each managed file that exists
    files: dict[str, str] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    #: what was recorded at the last (re)start: unit -> inputs digest
    recorded: dict[str, str] = field(default_factory=dict)
    #: the inputs digest now: unit -> digest
    inputs: dict[str, str] = field(default_factory=dict)
    #: HTTP status of each /health ("llama", "gateway"); 0 = no answer
    health: dict[str, int] = field(default_factory=dict)
    gateway_installed: dict[str, Any] = field(default_factory=dict)
    users: frozenset[str] = frozenset()
    systemd_version: int = 0
    verify_pending: bool = False
    have_curl: bool = False
    ip: str | None = None

    def healthy(self, gateway: bool) -> bool:
        ok = self.health.get("llama") == 200 and self.units.get(LLAMA_UNIT, UnitState("", "")).active == "active"
        if gateway:
            ok = ok and self.health.get("gateway") == 200 and \
                self.units.get(GATEWAY_UNIT, UnitState("", "")).active == "active"
        return ok


@dataclass(frozen=True)
class ResolvFacts:
    exists: bool
    immutable: bool
    ignored: bool  # /etc/.pve-ignore.resolv.conf exists
    pve_managed: bool  # the file carries PVE's "# --- BEGIN PVE ---" block
    lsattr_ok: bool = True


# -- model files ----------------------------------------------------------------------------------

def model_command(cfg: HostFile, base: str) -> str:
    lines = [f"d={shlex.quote(base)}", 'if [ -d "$d" ]; then echo dir 1; fi',
             'p="$d"; while [ ! -d "$p" ]; do p=$(dirname "$p"); done',
             'echo "avail $(df -P -B1 "$p" 2>/dev/null | awk \'NR==2{print $4}\')"']
    for role, path in model_paths(cfg, base).items():
        q = shlex.quote(path)
        side = shlex.quote(path + SIDECAR_SUFFIX)
        lines.append(f"if [ -f {q} ]; then echo \"file {role} $(stat -c '%s %Y' {q})\"; "
                     f"[ -f {side} ] && echo \"sidecar {role} $(head -c 4096 {side} | tr -d '\\n')\"; fi")
    return "\n".join(lines)


def parse_model(output: str, code: int) -> ModelFacts:
    sizes: dict[str, tuple[int, int]] = {}
    sidecars: dict[str, dict[str, Any]] = {}
    avail: int | None = None
    exists = False
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "dir":
            exists = True
        elif kind == "avail" and rest.strip().isdigit():
            avail = int(rest.strip())
        elif kind == "file":
            role, size, mtime = (rest.split() + ["", "", ""])[:3]
            if size.isdigit() and mtime.isdigit():
                sizes[role] = (int(size), int(mtime))
        elif kind == "sidecar":
            role, _, text = rest.partition(" ")
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                sidecars[role] = data
    files = {r: FileState(s, m, sidecars.get(r)) for r, (s, m) in sizes.items()}
    return ModelFacts(files=files, avail=avail, dir_exists=exists)


def model_facts(cfg: HostFile) -> list[Fact[Any]]:
    """The model files where they are downloaded: on the host (host_dir) or in the CT (dir)."""
    if cfg.model is None:
        return []
    if cfg.model.location == "host":
        return [Fact("model.host", model_command(cfg, cfg.model.host_dir), parse_model, where="host")]
    return [Fact("model.ct", model_command(cfg, cfg.model.dir), parse_model, where="ct")]


# -- services -------------------------------------------------------------------------------------

def _health(url: str, name: str) -> str:
    return (f"echo \"health {name} $(curl -s -o /dev/null -m 3 -w '%{{http_code}}' {shlex.quote(url)} "
            f"2>/dev/null || true)\"")


def services_command(cfg: HostFile) -> str:
    managed = [unit_path(LLAMA_UNIT), unit_path(GATEWAY_UNIT), GATEWAY_CONF, SERVER_KEY, GATEWAY_KEY, GPU_CHECK]
    lines = [f"for f in {' '.join(managed)}; do [ -f \"$f\" ] && echo \"file $f $(sha256sum < \"$f\" | cut -c1-64)\"; done",
             (f"for u in {LLAMA_UNIT} {GATEWAY_UNIT}; do echo \"unit $u $(systemctl is-active $u.service 2>/dev/null"
             f" | head -1) $(systemctl is-enabled $u.service 2>/dev/null | head -1 || echo not-found)\"; done"),
             (f"for u in {LLAMA_UNIT} {GATEWAY_UNIT}; do [ -f {STATE_DIR}/$u.inputs ] && "
             f"echo \"recorded $u $(head -c 64 {STATE_DIR}/$u.inputs)\"; done"),
             f"[ -f {GATEWAY_INSTALLED} ] && echo \"installed $(tr -d '\\n' < {GATEWAY_INSTALLED})\"",
             f"for u in {LLAMA_USER} {GATEWAY_USER}; do getent passwd $u >/dev/null && echo \"user $u\"; done",
             "echo \"systemd $(systemctl --version 2>/dev/null | awk 'NR==1{print $2}')\"",
             f"[ -e {VERIFY_FLAG} ] && echo verify-pending",
             "command -v curl >/dev/null && echo have-curl",
             "echo \"ip $(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4,a,\"/\"); print a[1]; exit}')\""]
    for unit, files in service_inputs(cfg).items():
        lines.append(f"echo \"inputs {unit} $({inputs_snippet(unit, files)})\"")
    local = lambda host: "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    lines.append(_health(f"http://{local(cfg.server.host)}:{cfg.server.port}/health", "llama"))
    if cfg.gateway.enabled:
        lines.append(_health(f"http://{local(cfg.gateway.host)}:{cfg.gateway.port}/health", "gateway"))
    lines.append("true")
    return "\n".join(lines)


def parse_services(output: str, code: int) -> ServiceFacts:
    files: dict[str, str] = {}
    units: dict[str, UnitState] = {}
    recorded: dict[str, str] = {}
    inputs: dict[str, str] = {}
    health: dict[str, int] = {}
    installed: dict[str, Any] = {}
    users: set[str] = set()
    systemd, pending, curl, ip = 0, False, False, None
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        words = rest.split()
        if kind == "file" and len(words) == 2:
            files[words[0]] = words[1]
        elif kind == "unit" and words:
            units[words[0]] = UnitState(words[1] if len(words) > 1 else "unknown",
                                        words[2] if len(words) > 2 else "not-found")
        elif kind == "recorded" and len(words) == 2:
            recorded[words[0]] = words[1]
        elif kind == "installed":
            try:
                data = json.loads(rest)
            except ValueError:
                data = {}
            if isinstance(data, dict):
                installed.update(data)
        elif kind == "inputs" and len(words) == 2:
            inputs[words[0]] = words[1]
        elif kind == "health" and words:
            health[words[0]] = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        elif kind == "user" and words:
            users.add(words[0])
        elif kind == "systemd" and words and words[0].isdigit():
            systemd = int(words[0])
        elif kind == "verify-pending":
            pending = True
        elif kind == "have-curl":
            curl = True
        elif kind == "ip" and words:
            ip = words[0]
    return ServiceFacts(files=files, units=units, recorded={k: str(v) for k, v in recorded.items()},
                        inputs=inputs, health=health, gateway_installed=installed, users=frozenset(users),
                        systemd_version=systemd, verify_pending=pending, have_curl=curl, ip=ip)


def services_facts(cfg: HostFile) -> list[Fact[Any]]:
    return [Fact("services.ct", services_command(cfg), parse_services, where="ct")]


# -- resolv.conf ----------------------------------------------------------------------------------

RESOLV_COMMAND = r"""f=/etc/resolv.conf
if [ -e "$f" ] || [ -L "$f" ]; then echo exists; fi
if [ -f "$f" ] && [ ! -L "$f" ]; then
  a=$(lsattr -d "$f" 2>/dev/null) && { echo "attrs ${a%% *}"; } || echo lsattr-failed
fi
[ -e /etc/.pve-ignore.resolv.conf ] && echo ignored
grep -q '^# --- BEGIN PVE ---' "$f" 2>/dev/null && echo pve-managed
true"""


def parse_resolv(output: str, code: int) -> ResolvFacts:
    words = output.split()
    attrs = next((ln.split()[1] for ln in output.splitlines() if ln.startswith("attrs ") and len(ln.split()) > 1), "")
    return ResolvFacts(exists="exists" in words, immutable="i" in attrs, ignored="ignored" in words,
                       pve_managed="pve-managed" in words, lsattr_ok="lsattr-failed" not in words)


RESOLV_FACT: Fact[ResolvFacts] = Fact("resolv.ct", RESOLV_COMMAND, parse_resolv, where="ct")
