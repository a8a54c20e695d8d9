"""The model: a GGUF from Hugging Face or a local file, on the host or in the container.

Default location is the host (``model.location: host``): the file lives in
``model.host_dir`` and is bind-mounted read-only at ``model.dir`` in the
container. It survives re-creating the container, stays out of container
backups and snapshots (bind mounts are skipped by vzdump), and the container's
root disk need not hold 20 GB. ``location: container`` keeps everything inside the CT.

A file counts as present when its sidecar ``<file>.provision.json`` (size, mtime,
sha256, source) matches the file's size and mtime and the configured source:
re-runs compare two numbers instead of re-hashing gigabytes.
"""

from __future__ import annotations

import shlex
from typing import Any

from ..config import read_secret
from ..config.models import router_mode
from ..config.schema import HostFile, ModelFile
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError
from ..facts.services import SHAPE_SUFFIX, SIDECAR_SUFFIX, FileState, ModelFacts, model_facts, model_roles
from . import container
from .model_transfer import (
    fetch_script,
    hub_source,
    local_source,
    push_local,
    run_fetch,
)
from .scripts import runner

STEP = "model"
#: the highest mount slot, so the user's own mounts (mp0, mp1, ...) never collide with ours
MODEL_MOUNT_KEY = "mp255"


def model_specs(cfg: HostFile) -> list[tuple[str, str, ModelFile]]:
    """(role, host-file key, spec) for every model file: each entry's and its draft's."""
    listed = len(cfg.models) > 1
    out = []
    for role, m, spec in model_roles(cfg):
        where = f"models[{cfg.models.index(m)}]" if listed else "model"
        out.append((role, where if spec is m else f"{where}.draft", spec))
    return out


def source_of(spec: ModelFile, where: str) -> dict[str, Any]:
    if spec.path:
        try:
            return local_source(spec)
        except OSError as exc:
            raise ConfigError(f"cannot read the local model file {spec.path}: {exc.strerror}",
                              key=f"{where}.path", fix="check the path on this machine") from None
    return hub_source(spec)


def why_fetch(spec: ModelFile, state: FileState | None, source: dict[str, Any],
              upstream: dict[str, str] | None = None) -> str | None:
    """Why the file must be (re)fetched, or None when it is present and verified.

    ``upstream`` (``up --refresh-models``): what the hub says the unpinned revision is now."""
    if state is None:
        return "missing"
    side = state.sidecar
    if side is None:
        return "present but never verified"
    if side.get("size") != state.size or side.get("mtime") != state.mtime:
        return "changed since it was verified"
    if spec.sha256 and side.get("sha256") != spec.sha256:
        return "its sha256 differs from the configured sha256"
    if side.get("source") != source:
        return "the configured source changed"
    if upstream and upstream.get("sha256") and upstream["sha256"] != side.get("sha256"):
        return (f"{spec.revision} moved upstream: sha256 {str(side.get('sha256'))[:12]}… → {upstream['sha256'][:12]}…"
                + (f" (commit {upstream['commit'][:12]})" if upstream.get("commit") else ""))
    return None


def base_dir(cfg: HostFile) -> str:
    assert cfg.model is not None
    return cfg.model.host_dir if cfg.model.location == "host" else cfg.model.dir


def _mount(ctx: PlanContext) -> container.OwnedKeys:
    """The read-only bind mount of the host's models directory (root-only: the container step handles that)."""
    m = ctx.cfg.model
    host_dir = m.host_dir if m else None

    def owns(key: str, value: str) -> bool:
        return key.startswith("mp") and host_dir is not None and value.split(",", 1)[0] == host_dir

    if m is None or m.location != "host":
        return container.OwnedKeys({}, owns)
    return container.OwnedKeys({MODEL_MOUNT_KEY: f"{m.host_dir},mp={m.dir},ro=1"}, owns)


if _mount not in container.CONTRIBUTORS:
    container.CONTRIBUTORS.append(_mount)


class ModelHostDirStep:
    """Before the container starts: the bind mount's source must exist on the host."""

    name = "model.host_dir"

    def __init__(self, cfg: HostFile) -> None:
        self.facts = model_facts(cfg) if cfg.model and cfg.model.location == "host" else []

    def plan(self, ctx: PlanContext) -> list[Change]:
        m = ctx.cfg.model
        if m is None or m.location != "host":
            return []
        facts: ModelFacts | None = ctx.fact("model.host")
        if facts is not None and facts.dir_exists:
            return []

        def apply(actx: ApplyContext) -> None:
            q = shlex.quote(m.host_dir)
            # parents 0755 too: an unprivileged CT's mapped root must traverse them for the bind mount
            actx.ssh.run(f"umask 022 && mkdir -p {q} && chmod 0755 {q}").check(f"creating {m.host_dir}",
                                                                   host=actx.ssh.target.host, step=self.name)

        return [Change(self.name, "create", "host", f"create the models directory {m.host_dir}", apply,
                       diff={m.host_dir: (None, "directory 0755")})]


class ModelStep:
    """Download (or push) every model and draft model, verify them, skip when verified.

    Also: read each file's GGUF header once (``<file>.provision-shape.json``, the VRAM check's
    input), with ``up --refresh-models`` re-fetch an unpinned model whose upstream file changed,
    and with ``up --prune`` delete files we fetched that no model lists any more.
    """

    name = STEP

    def __init__(self, cfg: HostFile) -> None:
        self.facts = model_facts(cfg)

    def plan(self, ctx: PlanContext) -> list[Change]:
        cfg = ctx.cfg
        if cfg.model is None:
            ctx.notes.append("no model configured (model:): llama-server and the gateway are not installed")
            return []
        where = "host" if cfg.model.location == "host" else "ct"
        facts: ModelFacts | None = ctx.fact("model.host" if where == "host" else "model.ct")
        upstream: dict[str, dict[str, str]] = ctx.fact("model.upstream") or {}
        base = base_dir(cfg)
        target = "host" if where == "host" else f"ct {ctx.vmid}"
        changes: list[Change] = []
        for role, key, spec in model_specs(cfg):
            source = source_of(spec, key)
            state = facts.files.get(role) if facts else None
            reason = why_fetch(spec, state, source, upstream.get(role))
            dest = f"{base}/{spec.filename}"
            if reason is None:
                ctx.notes.append(f"{key} {dest}: present and verified (sha256 {state.sidecar['sha256'][:12]}…)"
                                 if state and state.sidecar else f"{key} {dest}: present")
                if state is not None and state.shape is None and router_mode(cfg):
                    changes.append(Change(STEP, "inspect", target, f"read the GGUF header of {spec.filename}",
                                          self._inspect(dest, where), diff={dest + SHAPE_SUFFIX: (None, "shape")}))
                continue
            what = f"{spec.repo}/{spec.file}@{spec.revision}" if spec.repo else str(source["path"])
            action = "push" if spec.path else "download"
            before = f"{state.size} bytes" if state else None
            after = f"{source['size']} bytes from {what}" if spec.path else what
            fresh = role in upstream and state is not None  # a refresh: a new file over a verified one
            changes.append(Change(STEP, action, target, f"{action} {key} {spec.filename}: {reason}",
                                  self._apply(role, key, spec, dest, where, fresh),
                                  diff={dest: (before, after)}))
        changes += self._prune(ctx, cfg, facts, base, where, target)
        if changes:
            changes[-1].refresh = True  # the services step must see the new sidecars
        return changes

    @staticmethod
    def _prune(ctx: PlanContext, cfg: HostFile, facts: ModelFacts | None, base: str, where: str,
               target: str) -> list[Change]:
        """Files we downloaded (they carry our sidecar) that no model lists: deleted with ``--prune``."""
        wanted = {spec.filename for _, _, spec in model_specs(cfg)}
        stale = sorted(name for name in (facts.ours if facts else {}) if name not in wanted)
        if not stale:
            return []
        if not ctx.prune:
            ctx.notes.append(f"no model lists {', '.join(stale)} in {base} any more: `provision up --prune` "
                             "deletes "+ ("it" if len(stale) == 1 else "them"))
            return []
        assert facts is not None
        out = []
        for name in stale:
            path = f"{base}/{name}"
            q = shlex.quote(path)

            def apply(actx: ApplyContext, q: str = q, path: str = path) -> None:
                # only what our sidecar vouches for, and never a file a process still maps (another
                # container sharing model.host_dir may serve it: its llama-server maps the file)
                script = (f"set -e\n[ -f {q}{SIDECAR_SUFFIX} ] || {{ echo 'error: {path} has no sidecar: not ours' >&2; exit 3; }}\n"
                          f"id=$(stat -L -c '%d:%i' {q})\n"
                          "for m in /proc/[0-9]*/map_files/*; do [ \"$(stat -L -c '%d:%i' \"$m\" 2>/dev/null)\" = \"$id\" ] && "
                          f"{{ echo \"error: {path} is mapped by process ${{m#/proc/}}\" >&2; exit 4; }}; done 2>/dev/null || true\n"
                          f"rm -f {q} {q}{SIDECAR_SUFFIX} {q}{SHAPE_SUFFIX}\n")
                runner(actx, where)(script).check(f"deleting {path}", vmid=actx.vmid if where == "ct" else None,
                                                  step=STEP)

            out.append(Change(STEP, "delete", target, f"delete {path}: no model lists it (--prune)", apply,
                              diff={path: (f"{facts.ours[name]} bytes", None)}))
        return out

    @staticmethod
    def _apply(role: str, key: str, spec: ModelFile, dest: str, where: str, fresh: bool = False):
        def apply(actx: ApplyContext) -> None:
            vmid = actx.vmid if where == "ct" else None
            run = runner(actx, where)
            ctx_kw = {"vmid": vmid, "step": STEP}
            if spec.path:
                sha, size = push_local(actx.ssh, run, spec, dest, vmid=vmid, status=actx.status)
            else:
                token = read_secret(spec.token, f"{key}.token") if spec.token else None
                script = fetch_script(spec, dest, token=token, install_curl=where == "ct", fresh=fresh)
                sha, size = run_fetch(run, script, f"downloading {spec.filename}", actx.status, **ctx_kw)
            actx.plan.notes.append(f"{key} {dest}: {size} bytes, sha256 {sha}")
            write_shape(run, dest, vmid=vmid)

        return apply

    @staticmethod
    def _inspect(dest: str, where: str):
        def apply(actx: ApplyContext) -> None:
            write_shape(runner(actx, where), dest, vmid=actx.vmid if where == "ct" else None)
        return apply


#: bytes of a GGUF read for its header (the key/value section comes first: doctor/gguf.py)
HEADER_BYTES = 256 * 1024


def write_shape(run, dest: str, *, vmid: int | None) -> None:
    """Read ``dest``'s GGUF header once and keep its numbers beside it (``<file>.provision-shape.json``)."""
    import base64
    import json

    from ..doctor.gguf import read_metadata, shape_from_metadata

    q = shlex.quote(dest)
    got = run(f"head -c {HEADER_BYTES} {q} | base64 -w0")
    got.check(f"reading the header of {dest}", vmid=vmid, step=STEP)
    try:
        shape = shape_from_metadata(read_metadata(base64.b64decode(got.stdout.strip() or "")))
    except ValueError:
        shape = None
    data = {"arch": None} if shape is None else dict(shape.__dict__)
    text = json.dumps(data, sort_keys=True)
    run(f"cat > {q}{SHAPE_SUFFIX}.tmp <<'__PROVISION_SHAPE__'\n{text}\n__PROVISION_SHAPE__\n"
        f"chmod 0644 {q}{SHAPE_SUFFIX}.tmp && mv -f {q}{SHAPE_SUFFIX}.tmp {q}{SHAPE_SUFFIX}\n").check(
        f"writing {dest}{SHAPE_SUFFIX}", vmid=vmid, step=STEP)
