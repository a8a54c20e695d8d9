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

from ..config.models import router_mode
from ..config.schema import HostFile, Model, ModelFile
from .base import Fact

# -- where things live in the container ---------------------------------------------------------
LLAMA_ROOT = "/opt/provision/llama.cpp/current"
LLAMA_BIN = f"{LLAMA_ROOT}/bin/llama-server"
CONF_DIR = "/etc/provision"
SERVER_KEY = f"{CONF_DIR}/llama-server.key"
GATEWAY_KEY = f"{CONF_DIR}/gateway.key"
GATEWAY_CONF = f"{CONF_DIR}/gateway.json"
#: router mode (several models): llama-server's --models-preset INI (templates/systemd/llama-models.ini.j2)
MODELS_PRESET = f"{CONF_DIR}/llama-models.ini"
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
#: what the model step read from a GGUF's header once (layers, heads, training context): the VRAM check's input
SHAPE_SUFFIX = ".provision-shape.json"
#: router mode: what the running router was last reconciled with (the preset and each model's files)
MODELS_RELOAD = "llama-server.models"


def unit_path(name: str) -> str:
    return f"{UNIT_DIR}/{name}.service"


def recorded_path(unit: str) -> str:
    """Where the inputs digest of ``unit`` at its last (re)start is kept."""
    return f"{STATE_DIR}/{unit}.inputs"


def model_roles(cfg: HostFile) -> list[tuple[str, Model, ModelFile]]:
    """(role, entry, file) for every model file: each entry's file and its draft's.

    The first entry's roles are ``model`` and ``draft`` (what one model always had); the others'
    are ``model.<alias>`` and ``draft.<alias>``.
    """
    out: list[tuple[str, Model, ModelFile]] = []
    for i, m in enumerate(cfg.models):
        tail = "" if i == 0 else f".{m.model_id}"
        out.append((f"model{tail}", m, m))
        if m.draft is not None:
            out.append((f"draft{tail}", m, m.draft))
    return out


def model_paths(cfg: HostFile, base: str) -> dict[str, str]:
    """role ("model", "draft", "model.<alias>", ...) -> the file's path under ``base``."""
    return {role: f"{base}/{spec.filename}" for role, _, spec in model_roles(cfg)}


def entry_paths(cfg: HostFile, m: Model, base: str) -> dict[str, str]:
    """"model" / "draft" -> the paths of one entry's files under ``base``."""
    out = {"model": f"{base}/{m.filename}"}
    if m.draft is not None:
        out["draft"] = f"{base}/{m.draft.filename}"
    return out


def service_inputs(cfg: HostFile) -> dict[str, list[str]]:
    """unit -> the files whose content makes the running service what it is (a change restarts it).

    In router mode the preset and the model files are not among them: the router takes a new
    preset with a reload that leaves the unchanged models' processes running (see reload_inputs).
    """
    ct_models = model_paths(cfg, cfg.model.dir) if cfg.model else {}
    sidecars = [p + SIDECAR_SUFFIX for p in ct_models.values()]
    llama = [unit_path(LLAMA_UNIT), SERVER_KEY, GPU_CHECK] + ([] if router_mode(cfg) else sidecars)
    out = {LLAMA_UNIT: llama}
    if cfg.gateway.enabled:
        out[GATEWAY_UNIT] = [unit_path(GATEWAY_UNIT), GATEWAY_CONF, GATEWAY_KEY, SERVER_KEY, GATEWAY_INSTALLED]
    return out


def reload_inputs(cfg: HostFile) -> dict[str, list[str]]:
    """Router mode: alias -> the files (sidecars) of that model; a change unloads just that model."""
    if not router_mode(cfg):
        return {}
    return {m.model_id: [p + SIDECAR_SUFFIX for p in entry_paths(cfg, m, m.dir).values()] for m in cfg.models}


def reload_snippet(cfg: HostFile) -> str:
    """Shell printing ``<alias> <digest>`` per model and ``preset <digest>``: what a reload reconciles."""
    lines = [f"echo \"preset $(sha256sum {MODELS_PRESET} 2>/dev/null | cut -c1-64)\""]
    for alias, files in reload_inputs(cfg).items():
        lines.append(f"echo \"{alias} $(sha256sum {' '.join(shlex.quote(f) for f in files)} 2>/dev/null "
                     f"| sha256sum | cut -c1-64)\"")
    return "; ".join(lines)


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
    #: ``<file>.provision-shape.json``: the GGUF header's numbers (doctor/gguf.py ModelShape fields)
    shape: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelFacts:
    files: dict[str, FileState] = field(default_factory=dict)
    #: free bytes in the models directory (or its nearest existing parent)
    avail: int | None = None
    dir_exists: bool = False
    #: read through `pct mount`: the directory leads out of the container's root (a symlink)
    outside: bool = False
    #: file name -> size of every GGUF in the directory that carries our sidecar (we downloaded or
    #: pushed it): what ``up --prune`` may delete when no model lists it any more
    ours: dict[str, int] = field(default_factory=dict)


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
    #: router mode: "preset" / alias -> digest now, and as the running router last took them
    reload_now: dict[str, str] = field(default_factory=dict)
    reload_was: dict[str, str] = field(default_factory=dict)
    #: HTTP status of each /health ("llama", "gateway"); 0 = no answer
    health: dict[str, int] = field(default_factory=dict)
    gateway_installed: dict[str, Any] = field(default_factory=dict)
    users: frozenset[str] = frozenset()
    #: user -> the gids it is in (``id -G``), for the users that exist
    user_groups: dict[str, frozenset[int]] = field(default_factory=dict)
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
    #: the ignore file is the one provision made (operations/resolv.py says so inside it)
    ignored_ours: bool = False


# -- model files ----------------------------------------------------------------------------------

def model_command(cfg: HostFile, base: str, *, rooted: bool = False) -> str:
    """Shell listing the model files under ``base``; ``rooted``: under ``$R`` (facts/base.py), so
    doctor can read a stopped CT's files through `pct mount`, never following a link out of it."""
    r = '"$R"' if rooted else ""
    guard = (lambda q: f"inroot {r}{q} && ") if rooted else (lambda q: "")
    lines = [f"d={r}{shlex.quote(base)}"]
    if rooted:
        lines.append('inroot "$d" || { echo outside; exit 0; }')
    lines += ['if [ -d "$d" ]; then echo dir 1; fi',
              'p="$d"; while [ ! -d "$p" ]; do p=$(dirname "$p"); done',
              'echo "avail $(df -P -B1 "$p" 2>/dev/null | awk \'NR==2{print $4}\')"']
    for role, path in model_paths(cfg, base).items():
        q = shlex.quote(path)
        side = shlex.quote(path + SIDECAR_SUFFIX)
        shape = shlex.quote(path + SHAPE_SUFFIX)
        lines.append(f"if {guard(q)}[ -f {r}{q} ]; then echo \"file {role} $(stat -c '%s %Y' {r}{q})\"; "
                     f"{guard(side)}[ -f {r}{side} ] && echo \"sidecar {role} $(head -c 4096 {r}{side} | "
                     f"tr -d '\\n')\"; "
                     f"{guard(shape)}[ -f {r}{shape} ] && echo \"shape {role} $(head -c 2048 {r}{shape} | "
                     f"tr -d '\\n')\"; fi")
    in_root = 'inroot "$s" && inroot "$f" && ' if rooted else ""
    lines.append(f'for s in "$d"/*.gguf{SIDECAR_SUFFIX}; do [ -f "$s" ] || continue; f="${{s%{SIDECAR_SUFFIX}}}"; '
                 f'{in_root}[ -f "$f" ] && echo "ours $(stat -c %s "$f") ${{f##*/}}"; done')
    return "\n".join(lines)


def parse_model(output: str, code: int) -> ModelFacts:
    sizes: dict[str, tuple[int, int]] = {}
    sidecars: dict[str, dict[str, Any]] = {}
    shapes: dict[str, dict[str, Any]] = {}
    ours: dict[str, int] = {}
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
        elif kind in ("sidecar", "shape"):
            role, _, text = rest.partition(" ")
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                (sidecars if kind == "sidecar" else shapes)[role] = data
        elif kind == "ours":
            size, _, name = rest.partition(" ")
            if size.isdigit() and name:
                ours[name] = int(size)
    files = {r: FileState(s, m, sidecars.get(r), shapes.get(r)) for r, (s, m) in sizes.items()}
    return ModelFacts(files=files, avail=avail, dir_exists=exists, ours=ours,
                      outside="outside" in output.split())


def model_facts(cfg: HostFile) -> list[Fact[Any]]:
    """The model files where they are downloaded: on the host (host_dir) or in the CT (dir)."""
    if cfg.model is None:
        return []
    if cfg.model.location == "host":
        return [Fact("model.host", model_command(cfg, cfg.model.host_dir), parse_model, where="host")]
    return [Fact("model.ct", model_command(cfg, cfg.model.dir, rooted=True), parse_model, where="ct",
                 offline=True)]


# -- services -------------------------------------------------------------------------------------

def _health(url: str, name: str) -> str:
    return (f"echo \"health {name} $(curl -s -o /dev/null -m 3 -w '%{{http_code}}' {shlex.quote(url)} "
            f"2>/dev/null || true)\"")


def services_command(cfg: HostFile) -> str:
    managed = [unit_path(LLAMA_UNIT), unit_path(GATEWAY_UNIT), GATEWAY_CONF, SERVER_KEY, GATEWAY_KEY, MODELS_PRESET,
               GPU_CHECK]
    lines = [f"for f in {' '.join(managed)}; do [ -f \"$f\" ] && echo \"file $f $(sha256sum < \"$f\" | cut -c1-64)\"; done",
             (f"for u in {LLAMA_UNIT} {GATEWAY_UNIT}; do echo \"unit $u $(systemctl is-active $u.service 2>/dev/null"
             f" | head -1) $(systemctl is-enabled $u.service 2>/dev/null | head -1 || echo not-found)\"; done"),
             (f"for u in {LLAMA_UNIT} {GATEWAY_UNIT}; do [ -f {STATE_DIR}/$u.inputs ] && "
             f"echo \"recorded $u $(head -c 64 {STATE_DIR}/$u.inputs)\"; done"),
             f"[ -f {GATEWAY_INSTALLED} ] && echo \"installed $(tr -d '\\n' < {GATEWAY_INSTALLED})\"",
             f"for u in {LLAMA_USER} {GATEWAY_USER}; do getent passwd $u >/dev/null && echo \"user $u $(id -G $u)\"; done",
             "echo \"systemd $(systemctl --version 2>/dev/null | awk 'NR==1{print $2}')\"",
             f"[ -e {VERIFY_FLAG} ] && echo verify-pending",
             "command -v curl >/dev/null && echo have-curl",
             "echo \"ip $(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4,a,\"/\"); print a[1]; exit}')\""]
    for unit, files in service_inputs(cfg).items():
        lines.append(f"echo \"inputs {unit} $({inputs_snippet(unit, files)})\"")
    if router_mode(cfg):
        lines.append(f"{{ {reload_snippet(cfg)}; }} | sed 's/^/reload-now /'")
        lines.append(f"[ -f {STATE_DIR}/{MODELS_RELOAD} ] && sed 's/^/reload-was /' {STATE_DIR}/{MODELS_RELOAD}")
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
    groups: dict[str, frozenset[int]] = {}
    reload_now: dict[str, str] = {}
    reload_was: dict[str, str] = {}
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
            groups[words[0]] = frozenset(int(g) for g in words[1:] if g.isdigit())
        elif kind == "systemd" and words and words[0].isdigit():
            systemd = int(words[0])
        elif kind == "verify-pending":
            pending = True
        elif kind == "have-curl":
            curl = True
        elif kind == "ip" and words:
            ip = words[0]
        elif kind in ("reload-now", "reload-was") and len(words) == 2:
            (reload_now if kind == "reload-now" else reload_was)[words[0]] = words[1]
    return ServiceFacts(files=files, units=units, recorded={k: str(v) for k, v in recorded.items()},
                        inputs=inputs, health=health, gateway_installed=installed, users=frozenset(users),
                        user_groups=groups,
                        systemd_version=systemd, verify_pending=pending, have_curl=curl, ip=ip,
                        reload_now=reload_now, reload_was=reload_was)


def services_facts(cfg: HostFile) -> list[Fact[Any]]:
    return [Fact("services.ct", services_command(cfg), parse_services, where="ct")]


# -- resolv.conf ----------------------------------------------------------------------------------

# under $R (facts/base.py): also read on a stopped CT's root through `pct mount`; a symlinked
# resolv.conf is never followed (lsattr is PVE's concern only for a real file, and on a mounted
# root the link's target would be the host's)
RESOLV_COMMAND = r"""f="$R/etc/resolv.conf"
if [ -e "$f" ] || [ -L "$f" ]; then echo exists; fi
if [ -f "$f" ] && [ ! -L "$f" ]; then
  a=$(lsattr -d "$f" 2>/dev/null) && { echo "attrs ${a%% *}"; } || echo lsattr-failed
  grep -q '^# --- BEGIN PVE ---' "$f" 2>/dev/null && echo pve-managed
fi
[ -e "$R/etc/.pve-ignore.resolv.conf" ] && echo ignored
grep -qs 'created by provision' "$R/etc/.pve-ignore.resolv.conf" && echo ignored-ours
true"""


def parse_resolv(output: str, code: int) -> ResolvFacts:
    words = output.split()
    attrs = next((ln.split()[1] for ln in output.splitlines() if ln.startswith("attrs ") and len(ln.split()) > 1), "")
    return ResolvFacts(exists="exists" in words, immutable="i" in attrs, ignored="ignored" in words,
                       pve_managed="pve-managed" in words, lsattr_ok="lsattr-failed" not in words,
                       ignored_ours="ignored-ours" in words)


RESOLV_FACT: Fact[ResolvFacts] = Fact("resolv.ct", RESOLV_COMMAND, parse_resolv, where="ct", offline=True)
