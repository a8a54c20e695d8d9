"""Service checks: llama-server's unit and /health, the model file, the context Claude Code needs,
model + KV cache against VRAM, port conflicts, the gateway, one end-to-end request and the gateway's
error rate over the last minute."""

from __future__ import annotations

import json

from ..facts.services import (
    GATEWAY_UNIT,
    LLAMA_UNIT,
    LLAMA_USER,
    SIDECAR_SUFFIX,
    ModelFacts,
    ServiceFacts,
    UnitState,
    model_paths,
)
from ..operations.units import kv_tokens, slot_layout
from .context import DoctorContext
from .facts import Hashed, ServerProbe, Vram
from .findings import Evidence, Finding, fail, ok, warn
from .gguf import CACHE_BYTES, kv_cache_bytes, read_metadata, shape_from_metadata
from ..config.models import claude_code_models, claude_slots, models_max, router_mode, serving

CLAUDE_CODE_MIN_CTX = 32768
MIB = 1024 * 1024


def _sf(d: DoctorContext) -> ServiceFacts | None:
    if not d.ct_facts or d.cfg.model is None:
        return None
    return d.fact("services.ct")


def _unit_finding(d: DoctorContext, unit: str, sf: ServiceFacts, fid: str) -> Finding:
    st = sf.units.get(unit, UnitState("unknown", "not-found"))
    ev = Evidence(d.in_ct(f"systemctl status {unit}.service"), f"{unit}.service: {st.active} ({st.enabled})")
    if st.active == "active":
        return ok(fid, f"{unit}.service is active ({st.enabled})", ev)
    if st.enabled == "not-found" or (st.active in ("inactive", "unknown") and not st.enabled):
        return fail(fid, f"{unit}.service is not installed", ev, fix="`provision up FILE` installs it")
    if st.active == "activating":
        return warn(fid, f"{unit}.service is starting (or restarting after a failure)", ev,
                    fix=f"watch `pct exec {d.vmid} -- journalctl -u {unit} -f`")
    return fail(fid, f"{unit}.service is {st.active}", ev,
                fix=f"doctor --fix restarts it (`pct exec {d.vmid} -- systemctl restart {unit}`); if it fails again "
                    f"read `pct exec {d.vmid} -- journalctl -u {unit} -n 50`", fixable=True)


def check_units(d: DoctorContext) -> list[Finding]:
    sf = _sf(d)
    if sf is None:
        return []
    out = [_unit_finding(d, LLAMA_UNIT, sf, "services.llama_unit")]
    if d.cfg.gateway.enabled:
        out.append(_unit_finding(d, GATEWAY_UNIT, sf, "services.gateway_unit"))
    return out


def check_llama_health(d: DoctorContext) -> list[Finding]:
    sf = _sf(d)
    if sf is None:
        return []
    code = sf.health.get("llama", 0)
    url = f"http://127.0.0.1:{d.cfg.server.port}/health"
    ev = Evidence(d.in_ct(f"curl -s -o /dev/null -w '%{{http_code}}' {url}"), str(code))
    if code == 200:
        return [ok("services.llama_health", "llama-server /health answers 200", ev)]
    if code == 503:
        return [warn("services.llama_health", "llama-server is still loading the model (/health 503)", ev,
                     fix="wait; a large model takes minutes from a slow disk")]
    return [fail("services.llama_health", f"llama-server /health does not answer ({code or 'no connection'})", ev,
                 fix=f"see services.llama_unit; `pct exec {d.vmid} -- journalctl -u {LLAMA_UNIT} -n 50`")]


def _model_facts(d: DoctorContext) -> ModelFacts | None:
    return d.fact("model.host") or d.fact("model.ct")


def check_model_file(d: DoctorContext) -> list[Finding]:
    if d.cfg.model is None or d.plan is None or not d.access.ssh_ok:
        return []
    mf = _model_facts(d)
    probe: ServerProbe | None = d.fact("doctor.server")
    where = d.cfg.model.host_dir if d.cfg.model.location == "host" else d.cfg.model.dir
    path = f"{where}/{d.cfg.model.filename}"
    state = mf.files.get("model") if mf else None
    readable = probe.readable.get("model") if probe else None
    def there(cmd: str, file: str) -> str:
        """``cmd file`` where the file lives, as the user would type it."""
        if d.cfg.model.location == "host":  # type: ignore[union-attr]
            return d.on_host(f"{cmd} {file}")
        if d.ct_running:
            return d.in_ct(f"{cmd} {file}")
        # read through `pct mount` (doctor/runner.py)
        return d.on_host(f"sh -c 'pct mount {d.vmid}; {cmd} /var/lib/lxc/{d.vmid}/rootfs{file}; pct unmount {d.vmid}'")

    ev = Evidence(there("ls -l", path),
                  (f"{path}: {state.size} bytes" if state else f"{path}: missing") +
                  ("" if readable is None else f"\nreadable by {LLAMA_USER} in the container: "
                   f"{'yes' if readable else 'NO'}"))
    if mf is None:  # a stopped CT whose root could not be read (pct mount failed): unknown, not missing
        return []
    if mf.outside:
        return [warn("services.model_file", f"{where} leads out of CT {d.vmid}'s root filesystem (a symlink); "
                     "not followed while the container is stopped", ev,
                     fix=f"start the container (`pct start {d.vmid}`) and run doctor again")]
    if state is None:
        return [fail("services.model_file", f"the model file {path} is missing", ev,
                     fix="`provision up FILE` downloads (or pushes) it")]
    if readable is False:
        ct_path = model_paths(d.cfg, d.cfg.model.dir)["model"]
        return [fail("services.model_file", f"{LLAMA_USER} cannot read {ct_path} in the container", ev,
                     fix=f"pct exec {d.vmid} -- chmod a+r {ct_path} (and a+x on its directories); for a host "
                         "bind mount in an unprivileged container, the file must be readable by others on the host")]
    findings = [ok("services.model_file", f"model file present ({state.size / MIB / 1024:.1f} GiB)"
                   + ("" if readable is None else " and readable"), ev)]
    return findings + _model_verified(d, path, state, there)


def _model_verified(d: DoctorContext, path: str, state, there) -> list[Finding]:
    """The file against its sidecar: size and mtime always; the sha256 itself with --deep."""
    side = state.sidecar
    hashed: Hashed | None = (d.fact("doctor.model_sha") or {}).get("model")
    up = "`provision up FILE` verifies it and fetches it again if it is wrong (the file stays until then)"
    if side is None:
        return [warn("services.model_verified", f"{path} was never verified (no sidecar {path}{SIDECAR_SUFFIX})",
                     Evidence(there("ls -l", path + SIDECAR_SUFFIX), "missing"), fix=up)]
    ev = Evidence(there("cat", path + SIDECAR_SUFFIX), f"verified: size {side.get('size')}, mtime {side.get('mtime')}, "
                  f"sha256 {side.get('sha256')}\nnow: size {state.size}, mtime {state.mtime}")
    if side.get("size") != state.size or side.get("mtime") != state.mtime:
        return [fail("services.model_verified", f"{path} changed since it was verified (size or mtime differ)", ev,
                     fix=up)]
    if hashed is None:
        return [ok("services.model_verified", "model file unchanged since it was verified (size and mtime; "
                   "`doctor --deep` hashes it)", ev)]
    ev = Evidence(there("sha256sum", path), ev.output + f"\nsha256 now: {hashed.sha256} ({hashed.size / MIB / 1024:.1f} GiB "
                  f"read in {hashed.seconds:.1f} s)")
    want = d.cfg.model.sha256 if d.cfg.model else None
    if hashed.sha256 != side.get("sha256") or (want and hashed.sha256 != want):
        # size and mtime still match, so `up` alone would not look again: its record goes first
        forget = there("rm", path + SIDECAR_SUFFIX)
        return [fail("services.model_verified", f"{path} is not the file that was verified: its sha256 is "
                     f"{hashed.sha256[:12]}…, not {(want or side.get('sha256') or '?')[:12]}…", ev,
                     fix=f"{forget}; then {up}",
                     detail="changed in place with the same size and mtime; llama-server serves whatever it reads")]
    return [ok("services.model_verified", f"model file sha256 verified ({hashed.size / MIB / 1024:.1f} GiB "
               f"read in {hashed.seconds:.1f} s)", ev)]


def _shape(d: DoctorContext):
    probe: ServerProbe | None = d.fact("doctor.server")
    if probe is None or not probe.gguf_head:
        return None
    try:
        return shape_from_metadata(read_metadata(probe.gguf_head))
    except ValueError:
        return None


def slot_context(d: DoctorContext) -> tuple[int | None, str]:
    """The context each slot gets, and where that number came from."""
    probe: ServerProbe | None = d.fact("doctor.server")
    props = probe.props if probe else None
    if props:
        dgs = props.get("default_generation_settings") or {}
        n = dgs.get("n_ctx") or props.get("n_ctx")
        if isinstance(n, int) and n > 0:
            return n, "llama-server /props (per slot)"
    s = d.cfg.server
    shape = _shape(d)
    total = s.ctx_size or (shape.n_ctx_train if shape else None)
    if total is None:
        return None, "unknown"
    per_slot = slot_layout(d.cfg)[1] or total // s.parallel
    trained = shape.n_ctx_train if shape else None
    capped = trained is not None and per_slot > trained and not any(
        kv.endswith(f"context_length=int:{per_slot}") or ".context_length=" in kv for kv in s.override_kv)
    if capped:
        return trained, "the model's training context (llama-server caps each slot to it)"
    return per_slot, f"server.ctx_size {s.ctx_size} / server.parallel {s.parallel}"


def check_context(d: DoctorContext) -> list[Finding]:
    if d.cfg.model is None or not d.cfg.clients.claude_code or d.plan is None or not d.access.ssh_ok:
        return []
    if router_mode(d.cfg):
        return []  # check_models: each model a Claude Code slot uses
    n, source = slot_context(d)
    ev = Evidence(d.in_ct(f"curl -s http://127.0.0.1:{d.cfg.server.port}/props") if "props" in source
                  else "host file: server.ctx_size, server.parallel", f"context per slot: {n} (from {source})")
    if n is None:
        return [warn("services.context", "cannot tell the context size (no /props, no GGUF header)", ev,
                     fix=f"set server.ctx_size: {CLAUDE_CODE_MIN_CTX} explicitly")]
    if n < CLAUDE_CODE_MIN_CTX:
        shape = _shape(d)
        fix = f"set server.ctx_size: {CLAUDE_CODE_MIN_CTX * d.cfg.server.parallel} (server.parallel: " \
              f"{d.cfg.server.parallel}) and run `provision up FILE`"
        if shape and shape.n_ctx_train and shape.n_ctx_train < CLAUDE_CODE_MIN_CTX:
            fix += (f"; the model was trained for {shape.n_ctx_train} tokens: use a model with ≥ 32K context, or "
                    f"lift the cap with server.override_kv: ['{shape.arch}.context_length=int:{CLAUDE_CODE_MIN_CTX}']")
        return [fail("services.context", f"context per slot is {n}, below the {CLAUDE_CODE_MIN_CTX} Claude Code needs",
                     ev, fix=fix,
                     detail="Claude Code's system prompt alone is ~24K tokens: every request fails at once with "
                            "'Prompt is too long'")]
    return [ok("services.context", f"context per slot {n} ≥ {CLAUDE_CODE_MIN_CTX} (Claude Code)", ev)]


def estimate(d: DoctorContext) -> tuple[int, int, int] | None:
    """(model bytes, KV-cache bytes, context used) or None when the inputs are unknown."""
    mf = _model_facts(d)
    shape = _shape(d)
    state = mf.files.get("model") if mf else None
    if state is None or shape is None:
        return None
    s = d.cfg.server
    n_ctx = kv_tokens(d.cfg) or (shape.n_ctx_train or 0)  # the background slot's share too
    return state.size, kv_cache_bytes(shape, n_ctx, s.cache_type_k, s.cache_type_v), n_ctx


def check_vram(d: DoctorContext) -> list[Finding]:
    if d.cfg.model is None or d.plan is None or not d.cfg.gpu.enabled or not d.ct_facts:
        return []
    if router_mode(d.cfg):
        return []  # check_models sums what can be resident at once
    vram: list[Vram] = d.fact("doctor.vram") or []
    est = estimate(d)
    if not vram or est is None:
        return []
    model_b, kv_b, n_ctx = est
    sf = _sf(d)
    llama_up = bool(sf and sf.units.get(LLAMA_UNIT, UnitState("", "")).active == "active")
    free = sum(v.free_mib for v in vram) + (sum(v.used_mib for v in vram) if llama_up else 0)
    need = (model_b + kv_b) / MIB
    s = d.cfg.server
    ev = Evidence(d.on_host("nvidia-smi --query-gpu=memory.total,memory.used,memory.free --format=csv"),
                  "\n".join(f"GPU {v.index}: total {v.total_mib} MiB, used {v.used_mib}, free {v.free_mib}" for v in vram)
                  + f"\nmodel file {model_b / MIB:.0f} MiB + KV cache {kv_b / MIB:.0f} MiB "
                    f"({n_ctx} tokens, k {s.cache_type_k}, v {s.cache_type_v}, "
                    f"{CACHE_BYTES[s.cache_type_k]:.3f}/{CACHE_BYTES[s.cache_type_v]:.3f} bytes per element)"
                  + f"\navailable to llama-server: {free} MiB" + (" (its own use counted as available)" if llama_up else ""))
    if need > free:
        return [warn("services.vram", f"model + KV cache ≈ {need:.0f} MiB > {free} MiB of VRAM", ev,
                     fix="lower server.ctx_size, use cache_type_k/v: q4_0, or a smaller quantisation; with "
                         "server.fit on, llama-server moves layers to the CPU (slow)",
                     detail="an estimate: compute buffers add a few hundred MiB on top")]
    return [ok("services.vram", f"model + KV cache ≈ {need:.0f} MiB fits in {free} MiB of VRAM", ev)]


_EXPECTED = {"server": ("llama-server",), "gateway": ("python", "provision-gatew", "provision-gateway")}


def check_ports(d: DoctorContext) -> list[Finding]:
    if d.cfg.model is None or not d.ct_facts:
        return []
    probe: ServerProbe | None = d.fact("doctor.server")
    if probe is None:
        return []
    ports = {"server": d.cfg.server.port}
    if d.cfg.gateway.enabled:
        ports["gateway"] = d.cfg.gateway.port
    ev = Evidence(d.in_ct("ss -ltnp"), "\n".join(f"{ln.address}:{ln.port} {ln.process}" for ln in probe.listeners)
                  or "(nothing listening on " + ", ".join(str(p) for p in ports.values()) + ")")
    conflicts = []
    for role, port in ports.items():
        for ln in probe.listeners:
            if ln.port == port and ln.process and not any(f'(("{name}' in ln.process for name in _EXPECTED[role]):
                conflicts.append(f"port {port} ({role}) is held by {ln.process}")
    if conflicts:
        return [fail("services.ports", "; ".join(conflicts), ev,
                     fix="stop that program in the container, or move ours with server.port / gateway.port and "
                         "run `provision up`",
                     detail="our service cannot bind its port and keeps failing")]
    return [ok("services.ports", "no other program holds " + ", ".join(f"{p}" for p in ports.values()), ev)]


def check_gateway(d: DoctorContext) -> list[Finding]:
    if d.cfg.model is None or not d.cfg.gateway.enabled or not d.ct_facts:
        return []
    health = d.probes.get("gateway.health")
    e2e = d.probes.get("gateway.e2e")
    sf = _sf(d)
    inside = sf.health.get("gateway", 0) if sf else 0
    out: list[Finding] = []
    if health is None:
        out.append(warn("services.gateway_health", "could not tell the gateway's address from here",
                        Evidence(d.in_ct(f"curl -s http://127.0.0.1:{d.cfg.gateway.port}/health"), str(inside)),
                        fix="set clients.base_url in the host file"))
        return out
    ev = Evidence(f"curl -s {health.url}", health.error or f"{health.status} {health.body[:200]}")
    if health.ok:
        out.append(ok("services.gateway_health", f"gateway {health.url} answers 200 ({health.seconds * 1000:.0f} ms)", ev))
    elif inside == 200:
        out.append(fail("services.gateway_health", f"the gateway answers inside the container but not at {health.url}",
                        ev, fix="check gateway.host (0.0.0.0 to listen on the network), the PVE firewall, and "
                                "clients.base_url"))
    else:
        out.append(fail("services.gateway_health", f"gateway /health fails: {health.error or health.status}", ev,
                        fix="see services.gateway_unit and services.llama_health"))
    if e2e is not None:
        ev2 = Evidence(f"curl -s {e2e.url} -H 'x-api-key: ...' -d '{{\"max_tokens\": 8, ...}}'",
                       e2e.error or f"{e2e.status} {e2e.body[:300]}")
        if e2e.ok and _is_message(e2e.body):
            out.append(ok("services.e2e", f"a tiny Messages request round-trips ({e2e.seconds:.1f} s)", ev2))
        else:
            fix = "check the gateway key (gateway.api_key) and `journalctl -u provision-gateway`" \
                if e2e.status in (401, 403) else \
                f"read `pct exec {d.vmid} -- journalctl -u {GATEWAY_UNIT} -u {LLAMA_UNIT} -n 50`"
            out.append(fail("services.e2e", f"a tiny Messages request fails ({e2e.error or e2e.status})", ev2, fix=fix))
    return out + _gateway_error_rate(d)


#: a warning above this share of server errors (5xx) among the last minute's requests
ERROR_RATE_WARN = 0.05


def _gateway_error_rate(d: DoctorContext) -> list[Finding]:
    """The last minute's error rate, from the gateway's /metrics (``recent_requests`` by status class)."""
    from ..gateway.metrics import parse  # the gateway's own reader of its format

    probe = d.probes.get("gateway.metrics")
    if probe is None or probe.status in (0, 401, 403):
        return []  # no answer or the wrong key: services.gateway_health / services.e2e say so
    ev = Evidence(f"curl -s {probe.url} -H 'x-api-key: ...' | grep recent_requests",
                  probe.error or "\n".join(line for line in probe.body.splitlines()
                                            if line.startswith("provision_gateway_recent_requests")))
    if probe.status == 404:
        return [warn("services.gateway_errors", "the gateway has no /metrics (an older version)", ev,
                     fix="`provision up FILE` installs the current gateway")]
    counts = {labels.get("class"): value for name, labels, value in _parse_or_empty(parse, probe.body)
              if name == "provision_gateway_recent_requests"}
    if not probe.ok or not counts:
        return [warn("services.gateway_errors", f"the gateway's /metrics answered {probe.status} without "
                     "recent_requests", ev, fix=f"read `pct exec {d.vmid} -- journalctl -u {GATEWAY_UNIT} -n 50`")]
    total = int(sum(counts.values()))
    server, client = int(counts.get("5xx", 0)), int(counts.get("4xx", 0))
    if total == 0:
        return [ok("services.gateway_errors", "no client requests in the last minute", ev)]
    rate = server / total
    title = (f"last minute: {total} request{'s' if total != 1 else ''}, {server} server error"
             f"{'s' if server != 1 else ''} ({rate:.0%}), {client} refused (4xx)")
    if rate > ERROR_RATE_WARN:
        return [warn("services.gateway_errors", title, ev,
                     fix=f"see which errors in `curl {probe.url} | grep errors_total` and read "
                         f"`pct exec {d.vmid} -- journalctl -u {GATEWAY_UNIT} -u {LLAMA_UNIT} -n 100`")]
    return [ok("services.gateway_errors", title, ev)]


def _parse_or_empty(parse, text: str) -> list:
    try:
        return list(parse(text))
    except ValueError:
        return []


def _is_message(body: str) -> bool:
    try:
        return json.loads(body).get("type") == "message"
    except (ValueError, AttributeError):
        return False


def check_tools(d: DoctorContext) -> list[Finding]:
    """Can the model's chat template carry tools? Coding agents need them (llama-server /props)."""
    if d.cfg.model is None or not d.ct_facts:
        return []
    probe: ServerProbe | None = d.fact("doctor.server")
    caps = (probe.props or {}).get("chat_template_caps") if probe else None
    if not isinstance(caps, dict) or "supports_tools" not in caps:
        return []
    ev = Evidence(d.in_ct(f"curl -s http://127.0.0.1:{d.cfg.server.port}/props"),
                  "chat_template_caps: " + ", ".join(f"{k}={v}" for k, v in sorted(caps.items())
                                                     if "tool" in k))
    if caps["supports_tools"]:
        return [ok("services.tools", "the model's chat template supports tools", ev)]
    from ..operations.verify import NO_TOOLS

    return [warn("services.tools", "the model's chat template has no tool support", ev,
                 fix="choose a model whose template supports tools, or give llama-server one "
                     "(server.extra_args: --chat-template-file PATH)",
                 detail=NO_TOOLS.removeprefix("warning: "))]


def check_models(d: DoctorContext) -> list[Finding]:
    """Several models (router mode): every model's files, the context of each model a Claude Code
    slot uses, and what can be resident at once (the models_max largest) against the GPUs' memory."""
    from ..facts.services import model_roles
    from ..operations.vram import budget

    cfg = d.cfg
    if not router_mode(cfg) or d.plan is None or not d.access.ssh_ok:
        return []
    out: list[Finding] = []
    mf = _model_facts(d)
    probe: ServerProbe | None = d.fact("doctor.server")
    base = cfg.model.host_dir if cfg.model.location == "host" else cfg.model.dir
    missing = [f"{base}/{spec.filename} ({m.model_id})" for role, m, spec in model_roles(cfg)
               if not (mf and role in mf.files)]
    unreadable = [f"{spec.filename} ({m.model_id})" for role, m, spec in model_roles(cfg)
                  if probe and probe.readable.get(role) is False]
    ev = Evidence((d.on_host if cfg.model.location == "host" else d.in_ct)(f"ls -l {base}"),
                  "\n".join(f"{m.model_id}: {spec.filename} " + (f"{mf.files[role].size} bytes" if mf and role in
                                                                 mf.files else "missing")
                            for role, m, spec in model_roles(cfg)))
    if missing:
        out.append(fail("services.models", f"model files missing: {', '.join(missing)}", ev,
                        fix="`provision up FILE` downloads (or pushes) them"))
    elif unreadable:
        out.append(fail("services.models", f"{LLAMA_USER} cannot read {', '.join(unreadable)} in the container", ev,
                        fix="make the files readable by others (chmod a+r, a+x on the directories)"))
    else:
        out.append(ok("services.models", f"{len(cfg.models)} models, every file present", ev))
    if cfg.clients.claude_code:
        small = []
        for m in claude_code_models(cfg):
            v = serving(cfg, m)
            shape = None
            if mf:
                from ..operations.vram import shape_of

                shape = shape_of(mf.files.get(next(r for r, e, sp in model_roles(cfg) if sp is m)))
            total = v.ctx_size or (shape.n_ctx_train if shape and shape.n_ctx_train else 0)
            per_slot = total // v.parallel if total else None
            if per_slot is not None and per_slot < CLAUDE_CODE_MIN_CTX:
                small.append(f"{m.model_id}: {per_slot}")
        slots = ", ".join(f"{k} → {a}" for k, a in claude_slots(cfg).items())
        ev2 = Evidence("host file: models[].ctx_size / parallel, server.*", f"Claude Code slots: {slots}")
        out.append(fail("services.context", f"context per slot below {CLAUDE_CODE_MIN_CTX}: {'; '.join(small)}", ev2,
                        fix="raise that model's ctx_size (and override_kv for a model trained shorter)")
                   if small else ok("services.context", f"every model Claude Code uses has ≥ {CLAUDE_CODE_MIN_CTX} "
                                                        f"tokens per slot ({slots})", ev2))
    vram: list[Vram] = d.fact("doctor.vram") or []
    if cfg.gpu.enabled and vram and mf:
        total = sum(v.total_mib for v in vram)
        b = budget(cfg, mf, total)
        ev3 = Evidence(d.on_host("nvidia-smi --query-gpu=memory.total,memory.used,memory.free --format=csv"),
                       "\n".join(f"GPU {v.index}: total {v.total_mib} MiB, used {v.used_mib}, free {v.free_mib}"
                                 for v in vram) + "\n" + b.figures())
        if not b.resident:
            pass
        elif b.fits:
            out.append(ok("services.vram", f"{len(b.resident)} of {len(cfg.models)} models at once "
                                           f"≈ {b.need_mib:.0f} MiB fit in {total} MiB", ev3))
        else:
            out.append(fail("services.vram", f"the {models_max(cfg)} largest models at once need ≈ {b.need_mib:.0f} "
                                             f"MiB > {total} MiB; does not fit: {', '.join(b.over())}", ev3,
                            fix="lower server.models_max, a model's ctx_size or cache types, or quantise smaller",
                            detail="an estimate: compute buffers add a few hundred MiB per model"))
    return out


CHECKS = [check_units, check_llama_health, check_model_file, check_context, check_tools, check_vram, check_models, check_ports,
          check_gateway]
