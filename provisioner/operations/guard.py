"""The host guard (``driver.follow_host``): the host keeps its GPU containers in step with its driver.

After a host driver upgrade and reboot (often unattended upgrades, the reboot days later) every GPU
container's userspace no longer matches the loaded module. The guard, installed on the Proxmox
host by the GPU host step and needing no workstation at run time, closes that gap:

- ``templates/host/provision-guard.sh.j2`` -> /usr/local/sbin/provision-guard: the logic (why a
  hookscript plus a boot unit is said at its top);
- ``templates/host/provision-guard-hook.sh.j2`` -> /var/lib/vz/snippets/provision-guard, set as
  each managed container's ``hookscript`` (root-only: set with ``pct set`` over SSH);
- ``templates/host/provision-guard.service.j2``: the boot unit (after the modules, before
  pve-guests.service);
- ``templates/apt/provision-guard-dpkg.conf.j2``: a DPkg::Post-Invoke hook that notes a driver on
  disk waiting for a reboot (``driver.reboot_pending`` in status and doctor);
- per container (written by the driver step): ``ct-<vmid>.conf`` (mode, packages) and
  ``ct-<vmid>.sync.sh``: the apt prelude plus the *same* userspace transaction `up` runs
  (``driver.userspace_lib``, templates/apt/nvidia-userspace.sh.j2), ending in ``nv_sync``.

Modes: ``sync`` (default) moves the userspace to the loaded version, then starts llama-server;
``refuse`` leaves it (llama-server's pre-start check keeps it stopped, with the reason);
``off``: no hookscript, nothing happens.
"""

from __future__ import annotations

import hashlib
import shlex

from ..engine.context import ApplyContext, PlanContext
from ..engine.lock import ct_lock_stem, lock_base
from ..engine.plan import Change
from ..errors import RefusedError
from ..facts.guard import (DPKG_HOOK_PATH, GUARD, GUARD_BIN, SNIPPET_PATH, SNIPPET_VOLID, STATE_DIR, UNIT,
                           UNIT_PATH, UNIT_WANTS_LINK, GuardState)
from ..facts.nvidia import BOOT_UNIT, DRIVER
from ..facts.pve import MARKER_TAG
from ..facts.services import LLAMA_UNIT
from ..templating import render
from . import apt
from .container import CONTRIBUTORS, OwnedKeys
from .driver import host_version, userspace_lib

HOST_STEP = "gpu.host"
CT_STEP = "driver"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def wanted(ctx: PlanContext) -> bool:
    """The guard follows this container: a GPU container whose userspace we manage, mode not off."""
    return ctx.cfg.driver.follow_host != "off" and DRIVER.name in ctx.facts and bool(host_version(ctx))


def host_files() -> dict[str, tuple[str, str]]:
    """path -> (text, mode) of every file the guard installs on the host."""
    return {
        GUARD_BIN: (render("host/provision-guard.sh.j2", state_dir=STATE_DIR, marker_tag=MARKER_TAG), "0755"),
        SNIPPET_PATH: (render("host/provision-guard-hook.sh.j2", volid=SNIPPET_VOLID, guard_bin=GUARD_BIN), "0755"),
        UNIT_PATH: (render("host/provision-guard.service.j2", guard_bin=GUARD_BIN, uvm_unit=BOOT_UNIT), "0644"),
        DPKG_HOOK_PATH: (render("apt/provision-guard-dpkg.conf.j2", guard_bin=GUARD_BIN), "0644"),
    }


def ct_files(ctx: PlanContext) -> dict[str, str]:
    """``ct-<vmid>.conf`` / ``ct-<vmid>.sync.sh`` contents (the vmid is filled in at apply time)."""
    packages = list(ctx.cfg.driver.packages)
    # the run lock `provision up` and `provision host` take for this container (engine/lock.py), less the
    # vmid and ".lock" (the guard appends them): the guard never moves a userspace while a run holds it
    lock_prefix = lock_base(ct_lock_stem(ctx.pve.node or ctx.cfg.proxmox.node))
    conf = (f"# Written by provision for the host guard ({GUARD_BIN})\n"
            f"follow_host={ctx.cfg.driver.follow_host}\npackages={' '.join(packages)}\n"
            f"llama_unit={LLAMA_UNIT}.service\nlock_prefix={lock_prefix}\n")
    sync = ("#!/bin/bash\n# Written by provision: run by the host guard in the container as `bash -s -- VERSION`:\n"
            "# the apt prelude and the driver userspace transaction `provision up` uses, then nv_sync.\n"
            + apt.prelude_for(ctx.cfg) + userspace_lib(packages) + 'ver="$1"\nset -e\nnv_sync\n')
    return {"conf": conf, "sync.sh": sync}


#: what the next boot does to the managed containers, per ``driver.follow_host`` mode
AFTER_REBOOT = {"sync": "the guard moves each managed container to it as it starts",
                "refuse": "llama-server will refuse to start until `provision up` moves the container",
                "off": "nothing moves the containers: run `provision up` after the reboot"}


def reboot_pending(ctx: PlanContext) -> str | None:
    """``NVIDIA module X on disk, Y loaded: ...`` when a driver upgrade waits for a reboot (the
    note the guard's dpkg hook leaves), else None; `status` and `doctor` say it the same way."""
    state: GuardState | None = ctx.facts.get(GUARD.name)
    if state is None or state.pending is None:
        return None
    ondisk, loaded = state.pending
    mode = ctx.cfg.driver.follow_host
    return (f"NVIDIA module {ondisk} on disk, {loaded} loaded: a reboot is pending; after it "
            f"{AFTER_REBOOT[mode]} (driver.follow_host: {mode})")


def _enable(actx: ApplyContext) -> None:
    script = (f"if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable {UNIT}; "
              f"else mkdir -p {shlex.quote(UNIT_WANTS_LINK.rsplit('/', 1)[0])} && "
              f"ln -sfn {shlex.quote(UNIT_PATH)} {shlex.quote(UNIT_WANTS_LINK)}; fi")
    actx.ssh.run(script).check(f"enabling {UNIT}", step=HOST_STEP)


def host_changes(ctx: PlanContext) -> list[Change]:
    """The GPU host step's share: the guard's host files, and its boot unit enabled."""
    state: GuardState | None = ctx.fact(GUARD.name) if GUARD.name in ctx.facts else None
    if state is None or not wanted(ctx):
        return []
    files = host_files()
    stale = {p: t for p, t in files.items() if _sha(t[0]) != state.files.get(p)}
    if not stale and state.unit_enabled:
        return []

    def apply(actx: ApplyContext) -> None:
        actx.ssh.run(f"mkdir -p {shlex.quote(STATE_DIR)} /var/lib/vz/snippets").check("guard directories",
                                                                                     step=HOST_STEP)
        for path, (text, mode) in stale.items():
            actx.ssh.put(text.encode(), path, mode=mode)
        _enable(actx)

    diff: dict[str, tuple[object, object]] = {p: ("differs" if state.files.get(p) else None, "written")
                                              for p in stale}
    diff[f"{UNIT} enabled"] = (state.unit_enabled, True)
    return [Change(HOST_STEP, "write", "host",
                   f"host guard: driver.follow_host={ctx.cfg.driver.follow_host} at boot and container start",
                   apply, diff=diff)]


def ct_changes(ctx: PlanContext) -> list[Change]:
    """The driver step's share: this container's guard files (mode, packages, the transaction)."""
    state: GuardState | None = ctx.fact(GUARD.name) if GUARD.name in ctx.facts else None
    if state is None or not ctx.cfg.driver.manage_userspace or host_version(ctx) is None:
        return []
    files = ct_files(ctx)
    if ctx.vmid is not None and all(state.ct_files.get(f"ct-{ctx.vmid}.{k}") == _sha(v) for k, v in files.items()):
        return []

    def apply(actx: ApplyContext) -> None:
        assert actx.vmid is not None
        actx.ssh.run(f"mkdir -p {shlex.quote(STATE_DIR)}").check("guard directory", step=CT_STEP)
        for kind, text in files.items():
            actx.ssh.put(text.encode(), f"{STATE_DIR}/ct-{int(actx.vmid)}.{kind}",
                         mode="0755" if kind == "sync.sh" else "0644")

    target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
    return [Change(CT_STEP, "write", target, f"host guard files for this container "
                   f"(driver.follow_host={ctx.cfg.driver.follow_host})", apply,
                   diff={f"{STATE_DIR}/ct-<vmid>.{k}": (None if ctx.vmid is None else "differs", "written")
                         for k in files})]


def remove_script(vmid: int) -> str:
    """`down`: this container's guard files; the guard itself once no managed container is left."""
    files = " ".join(shlex.quote(p) for p in host_files())
    return (f"rm -f {STATE_DIR}/ct-{int(vmid)}.conf {STATE_DIR}/ct-{int(vmid)}.sync.sh\n"
            f"if ! ls {STATE_DIR}/ct-*.conf >/dev/null 2>&1 && [ -e {GUARD_BIN} ]; then\n"
            f"  if [ -d /run/systemd/system ]; then systemctl disable {UNIT} >/dev/null 2>&1; fi\n"
            f"  rm -f {shlex.quote(UNIT_WANTS_LINK)} {files}\n"
            "  echo 'host guard removed (no managed GPU container left)'\n"
            "fi\n")


def owns_hookscript(key: str, value: str) -> bool:
    return key == "hookscript" and value == SNIPPET_VOLID


def hookscript_keys(ctx: PlanContext) -> OwnedKeys:
    """The container step's contributor: our hookscript while the guard follows this container."""
    if DRIVER.name not in ctx.facts:  # GPU facts not gathered (`--only container`): keep what is there
        current = dict(ctx.pve.ct.config) if ctx.pve.ct is not None else {}
        return OwnedKeys(desired={k: v for k, v in current.items() if owns_hookscript(k, v)}, owns=owns_hookscript)
    if not wanted(ctx):
        return OwnedKeys(desired={}, owns=owns_hookscript)
    theirs = ctx.pve.ct.config.get("hookscript") if ctx.pve.ct is not None else None
    if theirs and theirs != SNIPPET_VOLID:
        # A CT has one hookscript (pve-container 94f5585 src/PVE/LXC/Config.pm:703: one `hookscript`
        # option, a single volume id): setting ours would silently drop the user's own.
        raise RefusedError(
            f"the container has its own hookscript {theirs}; the host guard (driver.follow_host: "
            f"{ctx.cfg.driver.follow_host}) needs the hookscript slot and will not replace it",
            vmid=ctx.vmid, step="container",
            fix=("set driver.follow_host: off (then run `provision up` after each host driver upgrade), or "
                 f"move what your hookscript does elsewhere and remove it (pct set {ctx.vmid} --delete hookscript)"))
    return OwnedKeys(desired={"hookscript": SNIPPET_VOLID}, owns=owns_hookscript)


if hookscript_keys not in CONTRIBUTORS:
    CONTRIBUTORS.append(hookscript_keys)
