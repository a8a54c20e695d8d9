"""The services in the container: llama-server and the gateway, as systemd units.

Every file is compared by sha256 with what the container has (facts), so an
unchanged config writes nothing. A service is (re)started only when something it
runs from changed: its unit, its config or key, the llama-server binary (the
``current`` build), the model (its sidecar), the gateway's installed wheel. The
"inputs digest" of those is recorded at each (re)start and compared on the next run.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable

from .. import __version__
from ..config import read_secret
from ..config.schema import HostFile, Secret
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..gpu_access import GPU_GID, GPU_GROUP
from ..errors import ProvisionError
from ..facts.services import (
    CONF_DIR,
    GATEWAY_INSTALLED,
    GATEWAY_KEY,
    GATEWAY_ROOT,
    GATEWAY_UNIT,
    GATEWAY_USER,
    GATEWAY_VENV,
    LLAMA_BIN,
    LLAMA_UNIT,
    LLAMA_USER,
    MODELS_PRESET,
    MODELS_RELOAD,
    SERVER_KEY,
    STATE_DIR,
    VERIFY_FLAG,
    ServiceFacts,
    UnitState,
    inputs_snippet,
    recorded_path,
    reload_snippet,
    service_inputs,
)
from ..config.models import router_mode
from ..redact import register
from .apt import prelude as apt_prelude
from .model_transfer import Progress, stream_file
from .scripts import render
from .service_step import ModelServiceStep
from .units import desired_units, local_host
from .wheel import build_wheelhouse, source_sha

STEP = "services"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def llama_rebuild_planned(ctx: PlanContext) -> bool:
    """Will the llama step build a new llama-server in this run? (Facts are not re-gathered after it.)"""
    from ..facts.llama import LLAMA_CT
    from .llama import build_spec

    have = ctx.fact(LLAMA_CT.name)
    if have is None:  # the llama step is not part of this run, or the CT is not running yet
        return False
    try:
        spec = build_spec(ctx)
    except ProvisionError:
        return False  # the llama step reports it
    return have.hash != spec.hash or not have.binary


def check_vram(ctx: PlanContext) -> None:
    """Several models: refuse before any unit is written when the ones that can be loaded at once
    do not fit the GPUs' memory (operations/vram.py says why one model is never refused)."""
    from .passthrough import selected_gpus
    from .vram import budget

    cfg = ctx.cfg
    if not cfg.gpu.enabled:
        return
    try:
        gpus = selected_gpus(ctx)
    except ProvisionError:
        return  # the GPU step reports a bad gpu.select
    vram = sum(g.memory_mib or 0 for g in gpus)
    if not vram:
        return
    files = ctx.fact("model.host") or ctx.fact("model.ct")
    b = budget(cfg, files, vram)
    if b.resident and not b.fits:
        from ..errors import ConfigError

        raise ConfigError(f"the models that can be loaded at once need ≈ {b.need_mib:.0f} MiB of VRAM, more than "
                          f"the {vram} MiB of {', '.join(g.name for g in gpus)}; does not fit: "
                          f"{', '.join(b.over())}\n" + b.figures(), key="server.models_max",
                          fix="lower server.models_max (fewer models loaded at once; the router swaps them), "
                              "a model's ctx_size or cache_type_k/v (q8_0, q4_0), or use a smaller quantisation")
    ctx.notes.append("VRAM: " + b.figures().replace("\n", "; "))


def _key_owner(path: str) -> str:
    return f"root:{LLAMA_USER}" if path == SERVER_KEY else f"root:{GATEWAY_USER}"


class ServicesStep(ModelServiceStep):
    name = STEP

    def __init__(self, cfg: HostFile) -> None:
        super().__init__(cfg)
        if router_mode(cfg) and cfg.gpu.enabled:
            # the VRAM check's inputs, in the same round trip (also when --only leaves the GPU steps out)
            from ..facts.gpu_claims import CLAIMS
            from ..facts.nvidia import DRIVER, GPUS
            from ..facts.services import model_facts

            self.facts = [*self.facts, DRIVER, GPUS, CLAIMS, *model_facts(cfg)]

    def plan_model(self, ctx: PlanContext) -> list[Change]:
        cfg = ctx.cfg
        if router_mode(cfg):
            check_vram(ctx)
        sf: ServiceFacts = ctx.fact("services.ct") or ServiceFacts()
        target = f"ct {ctx.vmid}"
        changes: list[Change] = []
        touched: set[str] = set()  # files (and the install) this run changes

        users = [LLAMA_USER] + ([GATEWAY_USER] if cfg.gateway.enabled else [])
        missing = [u for u in users if u not in sf.users]
        # llama must be in the group the GPU nodes belong to (gpu_access.py) before it first starts
        no_gpu_group = LLAMA_USER in sf.users and GPU_GID not in sf.user_groups.get(LLAMA_USER, frozenset())
        if missing or no_gpu_group:
            diff: dict[str, tuple[object, object]] = {}
            if missing:
                diff["users"] = (None, ", ".join(missing))
            diff[f"{LLAMA_USER} in group {GPU_GROUP} ({GPU_GID})"] = (False if no_gpu_group else None, True)
            what = f"create system users {', '.join(missing)}" if missing else \
                f"add {LLAMA_USER} to {GPU_GROUP} (gid {GPU_GID}, the GPU nodes' group)"
            changes.append(Change(STEP, "create", target, what, self._users(users), diff=diff))

        keys = [(SERVER_KEY, cfg.server.api_key, "server.api_key")]
        if cfg.gateway.enabled:
            keys.append((GATEWAY_KEY, cfg.gateway.api_key, "gateway.api_key"))
        for path, secret, where in keys:
            change = self._key(path, secret, where, sf, target)
            if change:
                changes.append(change)
                touched.add(path)

        if cfg.gateway.enabled:
            want = {"version": __version__, "source_sha": source_sha()}
            have = {k: sf.gateway_installed.get(k) for k in want}
            if have != want:
                changes.append(Change(STEP, "install", target,
                                      f"install provision {__version__} into {GATEWAY_VENV}", self._install(want),
                                      diff={"gateway venv": (have.get("version"),
                                                             f"{__version__} ({want['source_sha'][:12]})")}))
                touched.add(GATEWAY_INSTALLED)

        for path, content in desired_units(cfg, sf.systemd_version).items():
            before = sf.files.get(path)
            if before != sha(content):
                changes.append(Change(STEP, "write", target, f"write {path}", self._write(path, content),
                                      diff={path: (before[:12] if before else None, sha(content)[:12])}))
                touched.add(path)

        if not router_mode(cfg) and MODELS_PRESET in sf.files:
            changes.append(Change(STEP, "remove", target, f"remove {MODELS_PRESET} (one model: no router mode)",
                                  lambda a: a.ct().run(f"rm -f {MODELS_PRESET} {STATE_DIR}/{MODELS_RELOAD}").check(
                                      f"removing {MODELS_PRESET}", vmid=a.vmid, step=STEP),
                                  diff={MODELS_PRESET: ("present", None)}))

        if llama_rebuild_planned(ctx):
            touched.add(LLAMA_BIN)
        restarts = []
        for unit, inputs in service_inputs(cfg).items():
            change = self._restart(unit, inputs, sf, touched, target, regrouped=no_gpu_group,
                                   record_reload=router_mode(cfg) and unit == LLAMA_UNIT, cfg=cfg)
            if change:
                restarts.append(change)
        if router_mode(cfg) and not any(c.diff.get(LLAMA_UNIT) for c in restarts):
            change = self._reload(cfg, sf, touched, target)
            if change:
                restarts.append(change)
        if not cfg.gateway.enabled and sf.units.get(GATEWAY_UNIT, UnitState("", "")).active == "active":
            restarts.append(Change(STEP, "stop", target, f"stop and disable {GATEWAY_UNIT} (gateway.enabled: false)",
                                   lambda a: a.ct().run(f"systemctl disable --now {GATEWAY_UNIT}.service").check(
                                       f"stopping {GATEWAY_UNIT}", vmid=a.vmid, step=STEP)))
        if restarts:
            restarts[-1].refresh = True  # verify plans from fresh unit states
        return changes + restarts

    # -- pieces ---------------------------------------------------------------------------------

    @staticmethod
    def _users(users: list[str]) -> Callable[[ApplyContext], None]:
        def apply(actx: ApplyContext) -> None:
            script = render("scripts/users.sh.j2", users=users, llama_user=LLAMA_USER, conf_dir=CONF_DIR,
                            state_dir=STATE_DIR, gpu_group=GPU_GROUP, gpu_gid=GPU_GID)
            actx.ct().run(script).check("creating the service users", vmid=actx.vmid, step=STEP)
        return apply

    @staticmethod
    def _key(path: str, secret: Secret | None, where: str, sf: ServiceFacts, target: str) -> Change | None:
        """The key file: from the configured secret, or generated once and then kept."""
        current = sf.files.get(path)
        if secret is None:
            if current is not None:
                return None
            summary, value = f"generate a key into {path}", None
        else:
            value = read_secret(secret, where)
            if current == sha(value + "\n"):
                return None
            summary = f"write {where} into {path}"

        def apply(actx: ApplyContext) -> None:
            key = value if value is not None else register(secrets.token_urlsafe(32))
            actx.ct().put((key + "\n").encode(), path, mode="0640", owner=_key_owner(path))

        return Change(STEP, "write", target, summary, apply, diff={path: ("present" if current else None, "0640 key")})

    @staticmethod
    def _install(want: dict[str, str]) -> Callable[[ApplyContext], None]:
        def apply(actx: ApplyContext) -> None:
            house = build_wheelhouse()
            ct = actx.ct()
            remote = f"{GATEWAY_ROOT}/{house.name}"
            # put()/cat create missing parents 0700; the gateway's user must traverse these
            ct.run(f"install -d -m 0755 /opt/provision {GATEWAY_ROOT}").check(
                f"creating {GATEWAY_ROOT}", vmid=actx.vmid, step=STEP)
            progress = Progress(f"pushing {house.name}", actx.status)
            stream_file(actx.ssh, house, remote + ".part", vmid=actx.vmid, on_bytes=progress.bytes)
            installed = dict(want, wheelhouse_sha256=hashlib.sha256(house.read_bytes()).hexdigest())
            script = render("scripts/gateway-install.sh.j2", root=GATEWAY_ROOT, venv=GATEWAY_VENV,
                            wheelhouse=remote + ".part", version=__version__, installed=GATEWAY_INSTALLED,
                            installed_json=json.dumps(installed, sort_keys=True), apt_prelude=apt_prelude())
            ct.run(script, timeout=1800, on_line=lambda ln: ln.startswith("status ") and actx.status(ln[7:])) \
                .check("installing the gateway", vmid=actx.vmid, step=STEP)
        return apply

    @staticmethod
    def _write(path: str, content: str) -> Callable[[ApplyContext], None]:
        def apply(actx: ApplyContext) -> None:
            ct = actx.ct()
            ct.put(content.encode(), path, mode="0644")
            if path.endswith(".service"):
                ct.run("systemctl daemon-reload").check("systemctl daemon-reload", vmid=actx.vmid, step=STEP)
        return apply

    @staticmethod
    def _reload(cfg: HostFile, sf: ServiceFacts, touched: set[str], target: str) -> Change | None:
        """Router mode: a changed preset or model file reaches the running router without a restart.

        ``GET /models?reload=1`` re-reads the preset: a model whose section is unchanged keeps its
        process, a changed or removed one is unloaded, a new one is listed (tools/server/server-models.cpp:
        861-981, the route at :2022-2024). A model whose file changed under the same section is unloaded
        explicitly (``POST /models/unload``); its next request loads the new file.
        """
        models = {m.model_id for m in cfg.models}
        preset_changed = MODELS_PRESET in touched or sf.reload_now.get("preset") != sf.reload_was.get("preset")
        refreshed = sorted(a for a in models if a in sf.reload_was and sf.reload_now.get(a) != sf.reload_was[a])
        added = sorted(a for a in models if a not in sf.reload_was)
        removed = sorted(a for a in sf.reload_was if a != "preset" and a not in models)
        if not (preset_changed or refreshed or added or removed):
            return None
        reasons = ([f"add {', '.join(added)}"] if added else []) + \
            ([f"unload {', '.join(removed)}"] if removed else []) + \
            ([f"new files of {', '.join(refreshed)}"] if refreshed else []) + \
            (["preset changed"] if preset_changed and not (added or removed) else [])
        url = f"http://{local_host(cfg.server.host)}:{cfg.server.port}"

        def apply(actx: ApplyContext) -> None:
            unload = "".join(
                f"curl -s -o /dev/null -H @\"$h\" -H 'content-type: application/json' "
                f"-d '{{\"model\": \"{alias}\"}}' {url}/models/unload || true\n" for alias in refreshed)
            script = (f"set -e\nh=$(mktemp); trap 'rm -f \"$h\"' EXIT; chmod 600 \"$h\"\n"
                      f"printf 'Authorization: Bearer %s\\n' \"$(head -n1 {SERVER_KEY})\" > \"$h\"\n"
                      f"code=$(curl -s -o /dev/null -w '%{{http_code}}' -m 120 -H @\"$h\" '{url}/models?reload=1')\n"
                      f"[ \"$code\" = 200 ] || {{ echo \"error: llama-server's reload answered HTTP $code\" >&2; exit 3; }}\n"
                      f"{unload}install -d -m 0755 {STATE_DIR}\n"
                      f"{{ {reload_snippet(cfg)}; }} > {STATE_DIR}/{MODELS_RELOAD}\n"
                      f"touch {VERIFY_FLAG}\n")
            actx.ct().run(script).check("reloading llama-server's models", vmid=actx.vmid, step=STEP)

        return Change(STEP, "reload", target, f"reload llama-server's models without a restart ({'; '.join(reasons)})",
                      apply, diff={"models": (", ".join(sorted(a for a in sf.reload_was if a != "preset")) or None,
                                              ", ".join(m.model_id for m in cfg.models))})

    @staticmethod
    def _restart(unit: str, inputs: list[str], sf: ServiceFacts, touched: set[str], target: str,
                 regrouped: bool = False, record_reload: bool = False,
                 cfg: HostFile | None = None) -> Change | None:
        state = sf.units.get(unit, UnitState("inactive", "not-found"))
        # the binary is in the digest through inputs_snippet; a rebuild planned in this run shows up here
        changed = sorted((set(inputs) | ({LLAMA_BIN} if unit == LLAMA_UNIT else set())) & touched)
        reasons = []
        if regrouped and unit == LLAMA_UNIT and state.active == "active":
            reasons.append(f"{LLAMA_USER} joins {GPU_GROUP}; a running process keeps its old groups")
        if changed:
            reasons.append("changed: " + ", ".join("the llama-server build" if p == LLAMA_BIN else p.rsplit("/", 1)[-1]
                                                   for p in changed))
        elif sf.recorded.get(unit) != sf.inputs.get(unit) and state.active == "active":
            reasons.append("what it runs from changed since it started (binary, model or files)")
        if state.active != "active":
            reasons.append(f"it is {state.active}")
        if state.enabled != "enabled":
            reasons.append(f"it is {state.enabled} at boot")
        if not reasons:
            return None
        action = "restart" if state.active == "active" else "start"

        def apply(actx: ApplyContext) -> None:
            script = (f"set -e\nsystemctl daemon-reload\nsystemctl enable -q {unit}.service\n"
                      f"systemctl reset-failed {unit}.service 2>/dev/null || true\n"
                      f"systemctl restart {unit}.service\n"
                      f"install -d -m 0755 {STATE_DIR}\n"
                      f"{inputs_snippet(unit, inputs)} > {recorded_path(unit)}\n"
                      + (f"{{ {reload_snippet(cfg)}; }} > {STATE_DIR}/{MODELS_RELOAD}\n" if record_reload else "")
                      + f"touch {VERIFY_FLAG}\n")
            actx.ct().run(script).check(f"{action}ing {unit}", vmid=actx.vmid, step=STEP)

        return Change(STEP, action, target, f"{action} {unit} ({'; '.join(reasons)})", apply,
                      diff={unit: (state.active, "active")})
