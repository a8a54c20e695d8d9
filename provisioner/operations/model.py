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
from ..config.schema import HostFile, ModelFile
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError
from ..facts.services import FileState, ModelFacts, model_facts
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


def model_specs(cfg: HostFile) -> list[tuple[str, ModelFile]]:
    """(role, spec) for the main model and the draft model, if any."""
    if cfg.model is None:
        return []
    out: list[tuple[str, ModelFile]] = [("model", cfg.model)]
    if cfg.model.draft is not None:
        out.append(("draft", cfg.model.draft))
    return out


def source_of(spec: ModelFile, where: str) -> dict[str, Any]:
    if spec.path:
        try:
            return local_source(spec)
        except OSError as exc:
            raise ConfigError(f"cannot read the local model file {spec.path}: {exc.strerror}",
                              key=f"{where}.path", fix="check the path on this machine") from None
    return hub_source(spec)


def why_fetch(spec: ModelFile, state: FileState | None, source: dict[str, Any]) -> str | None:
    """Why the file must be (re)fetched, or None when it is present and verified."""
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
    """Download (or push) the model and the draft model, verify them, skip when verified."""

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
        base = base_dir(cfg)
        target = "host" if where == "host" else f"ct {ctx.vmid}"
        changes: list[Change] = []
        for role, spec in model_specs(cfg):
            key = "model" if role == "model" else "model.draft"
            source = source_of(spec, key)
            state = facts.files.get(role) if facts else None
            reason = why_fetch(spec, state, source)
            dest = f"{base}/{spec.filename}"
            if reason is None:
                ctx.notes.append(f"{key} {dest}: present and verified (sha256 {state.sidecar['sha256'][:12]}…)"
                                 if state and state.sidecar else f"{key} {dest}: present")
                continue
            what = f"{spec.repo}/{spec.file}@{spec.revision}" if spec.repo else str(source["path"])
            action = "push" if spec.path else "download"
            before = f"{state.size} bytes" if state else None
            after = f"{source['size']} bytes from {what}" if spec.path else what
            changes.append(Change(STEP, action, target, f"{action} {key} {spec.filename}: {reason}",
                                  self._apply(role, key, spec, dest, where),
                                  diff={dest: (before, after)}))
        if changes:
            changes[-1].refresh = True  # the services step must see the new sidecars
        return changes

    @staticmethod
    def _apply(role: str, key: str, spec: ModelFile, dest: str, where: str):
        def apply(actx: ApplyContext) -> None:
            vmid = actx.vmid if where == "ct" else None
            run = runner(actx, where)
            ctx_kw = {"vmid": vmid, "step": STEP}
            if spec.path:
                sha, size = push_local(actx.ssh, run, spec, dest, vmid=vmid, status=actx.status)
            else:
                token = read_secret(spec.token, f"{key}.token") if spec.token else None
                script = fetch_script(spec, dest, token=token, install_curl=where == "ct")
                sha, size = run_fetch(run, script, f"downloading {spec.filename}", actx.status, **ctx_kw)
            actx.plan.notes.append(f"{key} {dest}: {size} bytes, sha256 {sha}")

        return apply
