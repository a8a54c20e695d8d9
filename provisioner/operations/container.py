"""The container itself: create it, converge its Proxmox config, start it.

Diffing happens after PVE's normalisation: tags are compared as a sorted,
lower-cased set; property strings (``net0``, ``features``, ``mpN``, ``devN``) are
compared key by key, ignoring what PVE adds on its own (``hwaddr``, ``type=veth``).

Root-only keys (``devN``, bind mounts, features on a privileged CT) go through
the API when logged in as root@pam with a password, else through ``pct set``
over SSH as root (a token never counts as root, not even ``root@pam!x``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable

from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ProxmoxError, RefusedError, RemoteError, TaskFailed
from ..facts.pve import MARKER_LINE, MARKER_TAG, has_marker
from ..pveschema import parse_boolean
from ..pveschema.propstring import split_property_string
from ..pveschema.propstring import resolve_format  # noqa: E402

STEP = "container"


@dataclass(frozen=True)
class OwnedKeys:
    """Config keys another step wants (e.g. devN for the GPU), and which current keys it owns."""

    desired: dict[str, str]
    owns: Callable[[str, str], bool]


#: other steps add their config keys here (the GPU step adds devN)
CONTRIBUTORS: list[Callable[[PlanContext], OwnedKeys]] = []


# -- desired state ------------------------------------------------------------------------------

def _bool(v: bool) -> str:
    return "1" if v else "0"


def net0_value(ctx: PlanContext) -> str:
    n = ctx.cfg.container.network
    parts = [f"name={n.name}", f"bridge={n.bridge}", f"ip={n.ip}"]
    if n.gateway:
        parts.append(f"gw={n.gateway}")
    if n.vlan:
        parts.append(f"tag={n.vlan}")
    if n.firewall:
        parts.append("firewall=1")
    if n.hwaddr:
        parts.append(f"hwaddr={n.hwaddr.upper()}")
    return ",".join(parts)


def features_value(ctx: PlanContext) -> str:
    f = ctx.cfg.container.features
    on = [name for name in ("fuse", "keyctl", "nesting") if getattr(f, name)]
    return ",".join(f"{name}=1" for name in on)


def description(ctx: PlanContext, current: str | None = None) -> str:
    """The user's description plus our marker line (kept when adopting a foreign CT)."""
    base = ctx.cfg.container.description.strip()
    if current is not None and not ctx.cfg.container.description:
        base = "\n".join(ln for ln in current.strip().splitlines() if MARKER_LINE not in ln).strip()
    return (base + "\n" if base else "") + f"{MARKER_LINE} (do not remove this line)"


def desired_config(ctx: PlanContext) -> dict[str, str]:
    c = ctx.cfg.container
    tags = sorted({t.lower() for t in c.tags} | {MARKER_TAG})
    want = {
        "hostname": c.hostname,
        "cores": str(c.cores),
        "memory": str(c.memory_mb),
        "swap": str(c.swap_mb),
        "onboot": _bool(c.onboot),
        "tags": ";".join(tags),
        "net0": net0_value(ctx),
    }
    feats = features_value(ctx)
    if feats:
        want["features"] = feats
    if c.nameserver:
        want["nameserver"] = c.nameserver
    if c.searchdomain:
        want["searchdomain"] = c.searchdomain
    for i, m in enumerate(c.mounts):
        want[f"mp{i}"] = f"{m.host},mp={m.path}" + (",ro=1" if m.read_only else "") + \
            (",backup=1" if m.backup else "")
    for contributor in CONTRIBUTORS:
        want.update(contributor(ctx).desired)
    return want


def is_root_only(key: str, value: str, unprivileged: bool) -> bool:
    """PVE's rule: devN, bind mounts, and features on a privileged CT (or beyond nesting)."""
    if key.startswith("dev") or key == "hookscript":  # hookscript: pve-container src/PVE/LXC.pm:1736-1738
        return True
    if key.startswith("mp") or key == "rootfs":
        return value.split(",", 1)[0].startswith("/")
    if key == "features":
        names = {p.split("=", 1)[0] for p in value.split(",") if p.endswith("=1")}
        return (not unprivileged and bool(value)) or bool(names - {"nesting"})
    return False


# -- comparing ------------------------------------------------------------------------------------

_IGNORED_SUBKEYS = {"net": {"hwaddr", "type"}}
_DEFAULT_FALSE = {"firewall", "ro", "backup", "nesting", "keyctl", "fuse", "deny-write", "quota",
                  "replicate", "shared", "acl"}


def _norm_props(key: str, value: str, version: str) -> dict[str, str] | None:
    try:
        fmt = resolve_format(key, version)
        parsed = split_property_string(fmt, value)
    except (KeyError, ValueError):
        return None
    out = {}
    for k, v in parsed.items():
        b = parse_boolean(v) if k in _DEFAULT_FALSE else None
        v = b if b is not None else v
        if k in _DEFAULT_FALSE and v == "0":
            continue
        if k == "backup" and key.startswith("mp"):
            continue  # PVE defaults backup off for bind mounts and may omit it
        if k == "hwaddr":
            v = v.upper()
        out[k] = v
    ignored = next((s for p, s in _IGNORED_SUBKEYS.items() if key.startswith(p)), set())
    return {k: v for k, v in out.items() if k not in ignored}


def same(key: str, current: str | None, desired: str, version: str) -> bool:
    if current is None:
        return False
    if key == "tags":
        norm = lambda s: sorted({t.strip().lower() for t in s.replace(",", ";").replace(" ", ";").split(";")
                                 if t.strip()})
        return norm(current) == norm(desired)
    if key == "description":
        return current.strip() == desired.strip()
    if key.startswith(("net", "mp", "dev")) or key == "features":
        a, b = _norm_props(key, current, version), _norm_props(key, desired, version)
        if a is not None and b is not None:
            if key.startswith("net"):
                # keys we do not manage (hwaddr when not configured, mtu, ...) may stay as PVE set them
                return all(a.get(k) == v for k, v in b.items()) and \
                    not ({"gw", "tag", "firewall"} & (set(a) - set(b)))
            return a == b
    return current.strip() == desired.strip()


# -- the step -----------------------------------------------------------------------------------

class ContainerStep:
    name = STEP

    def plan(self, ctx: PlanContext) -> list[Change]:
        ct = ctx.pve.ct
        if ct is None:
            return [self._create(ctx), self._start_change(ctx, created=True)]
        if not ct.ours and not ctx.cfg.container.adopt:
            raise RefusedError(
                f"CT {ct.vmid} exists but was not created by provision (no '{MARKER_TAG}' tag and marker "
                "line in its description); refusing to touch it",
                vmid=ct.vmid, step=STEP,
                fix="choose a free container.vmid, or set container.adopt: true to take it over")
        changes = self._converge(ctx)
        restart = self._pending_restart(ctx, changes)
        if restart:
            changes.append(restart)
        if not ct.running:
            changes.append(self._start_change(ctx, created=False))
        return changes

    # create ------------------------------------------------------------------------------------

    def _create(self, ctx: PlanContext) -> Change:
        c = ctx.cfg.container
        want = desired_config(ctx)
        _note_root_path(ctx, want, [], {})
        diff = {k: (None, v) for k, v in want.items()}
        diff.update({"unprivileged": (None, _bool(c.unprivileged)),
                     "rootfs": (None, f"{c.storage}:{c.disk_gb}")})
        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (next free id)"

        def apply(actx: ApplyContext) -> None:
            create_container(actx, want)

        return Change(STEP, "create", target, f"create container {c.hostname} from {c.template}",
                      apply, diff=diff, refresh=True)

    # converge ----------------------------------------------------------------------------------

    def _converge(self, ctx: PlanContext) -> list[Change]:
        ct = ctx.pve.ct
        assert ct is not None
        version = ctx.pve.version
        want = desired_config(ctx)
        want["description"] = description(ctx, ct.config.get("description"))
        # what the config will be once pending values apply
        effective = dict(ct.config)
        effective.update(ct.pending)
        for k in ct.pending_delete:
            effective.pop(k, None)
        set_keys = {k: v for k, v in want.items() if not same(k, effective.get(k), v, version)}
        owned = [c(ctx) for c in CONTRIBUTORS]
        deletes = sorted(k for k, v in effective.items()
                         if k not in want and (any(o.owns(k, v) for o in owned) or
                                               (k.startswith("mp") and _is_our_mount(ctx, v))))
        changes: list[Change] = []
        unpriv = effective.get("unprivileged", "0") == "1"
        if unpriv != ctx.cfg.container.unprivileged:
            ctx.notes.append(
                f"CT {ct.vmid} is {'un' if unpriv else ''}privileged but the host file says "
                f"unprivileged: {str(ctx.cfg.container.unprivileged).lower()}; PVE cannot change this on an "
                "existing container (back it up and re-create it to switch)")
        if set_keys or deletes:
            _note_root_path(ctx, set_keys, deletes, effective)
            diff = {k: (effective.get(k), v) for k, v in set_keys.items()}
            diff.update({k: (effective.get(k), None) for k in deletes})

            def apply(actx: ApplyContext, set_keys=set_keys, deletes=deletes) -> None:
                update_config(actx, set_keys, deletes)

            changes.append(Change(STEP, "update", f"ct {ct.vmid}",
                                  f"set {', '.join(sorted(set_keys)) or '-'}; delete {', '.join(deletes) or '-'}",
                                  apply, diff=diff, refresh=True))
        disk = _rootfs_gb(effective.get("rootfs", ""))
        if disk is not None and disk < ctx.cfg.container.disk_gb:
            size = f"{ctx.cfg.container.disk_gb}G"

            def grow(actx: ApplyContext) -> None:
                upid = actx.pve.put(actx.pve.ct(actx.vmid, "resize"), disk="rootfs", size=size)
                if isinstance(upid, str) and upid.startswith("UPID:"):
                    actx.pve.wait_task(upid, what="resizing the root disk", timeout=actx.cfg.proxmox.task_timeout)

            changes.append(Change(STEP, "resize", f"ct {ct.vmid}", f"grow the root disk to {size}", grow,
                                  diff={"rootfs size": (f"{disk}G", size)}))
        elif disk is not None and disk > ctx.cfg.container.disk_gb:
            ctx.notes.append(f"root disk is {disk}G, larger than container.disk_gb ({ctx.cfg.container.disk_gb}); "
                             "disks are never shrunk")
        return changes

    def _pending_restart(self, ctx: PlanContext, changes: list[Change]) -> Change | None:
        ct = ctx.pve.ct
        assert ct is not None
        if not ct.running or not (ct.pending or ct.pending_delete):
            return None
        keys = sorted(set(ct.pending) | set(ct.pending_delete))
        if not (ctx.allow_restart or ctx.cfg.container.restart == "when-needed"):
            ctx.notes.append(f"CT {ct.vmid}: {', '.join(keys)} stay pending until the container restarts; "
                             "run `provision up --restart` (or set container.restart: when-needed)")
            return None

        def apply(actx: ApplyContext) -> None:
            restart_container(actx)

        return Change(STEP, "restart", f"ct {ct.vmid}", f"restart to apply pending {', '.join(keys)}", apply,
                      diff={k: (ct.config.get(k), ct.pending.get(k)) for k in keys}, refresh=True)

    def _start_change(self, ctx: PlanContext, *, created: bool) -> Change:
        def apply(actx: ApplyContext) -> None:
            start_container(actx)

        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
        return Change(STEP, "start", target, "start the container", apply, refresh=True)


def _note_root_path(ctx: PlanContext, keys: dict[str, str], deletes: list[str], current: dict[str, str]) -> None:
    """Say which path root-only keys take (the preflight the user reads in the plan)."""
    unpriv = ctx.cfg.container.unprivileged
    root = sorted([k for k, v in keys.items() if is_root_only(k, v, unpriv)] +
                  [k for k in deletes if is_root_only(k, current.get(k, ""), unpriv)])
    if not root:
        return
    if ctx.root_path == "api":
        ctx.notes.append(f"{', '.join(root)}: root-only keys, set through the API as root@pam")
    else:
        ctx.notes.append(f"{', '.join(root)}: root-only keys (an API token never counts as root), "
                         "set with `pct set` over SSH as root")


def _is_our_mount(ctx: PlanContext, value: str) -> bool:
    """A bind mount of a path we manage (e.g. the models dir), no longer wanted."""
    path = value.split(",", 1)[0]
    model = ctx.cfg.model
    return bool(model and model.location == "host" and path == model.host_dir)


def _rootfs_gb(value: str) -> int | None:
    for part in value.split(","):
        if part.startswith("size="):
            size = part[5:]
            mult = {"T": 1024, "G": 1, "M": 1 / 1024}.get(size[-1:].upper())
            if mult is None:
                return None
            try:
                return int(float(size[:-1]) * mult)
            except ValueError:
                return None
    return None


# -- applying -----------------------------------------------------------------------------------

def _split_root(actx: ApplyContext, keys: dict[str, str], deletes: list[str]
                ) -> tuple[dict[str, str], list[str], dict[str, str], list[str]]:
    """(api set, api delete, root set, root delete) by who may change each key."""
    if actx.plan.root_path == "api":
        return keys, deletes, {}, []
    unpriv = actx.cfg.container.unprivileged
    current = actx.plan.pve.ct.config if actx.plan.pve.ct else {}
    root_set = {k: v for k, v in keys.items() if is_root_only(k, v, unpriv)}
    root_del = [k for k in deletes if is_root_only(k, current.get(k, ""), unpriv)]
    api_set = {k: v for k, v in keys.items() if k not in root_set}
    api_del = [k for k in deletes if k not in root_del]
    return api_set, api_del, root_set, root_del


def pct_set(actx: ApplyContext, vmid: int, keys: dict[str, str], deletes: list[str]) -> None:
    """Set root-only keys as root over SSH (`pct set` acts as root@pam)."""
    if not keys and not deletes:
        return
    args = [f"--{k} {shlex.quote(v)}" for k, v in sorted(keys.items())]
    if deletes:
        args.append(f"--delete {shlex.quote(','.join(deletes))}")
    cmd = f"pct set {int(vmid)} " + " ".join(args)
    result = actx.ssh.run(cmd)
    if not result.ok:
        raise RemoteError("pct set failed", command=cmd, exit_code=result.exit_code,
                          output=result.stderr or result.stdout, vmid=vmid, step=STEP)


def update_config(actx: ApplyContext, keys: dict[str, str], deletes: list[str]) -> None:
    ct = actx.plan.pve.ct
    assert ct is not None
    api_set, api_del, root_set, root_del = _split_root(actx, keys, deletes)
    if api_set or api_del:
        params: dict[str, str] = dict(api_set)
        if api_del:
            params["delete"] = ",".join(api_del)
        params["digest"] = ct.digest
        try:
            actx.pve.put(actx.pve.ct(ct.vmid, "config"), **params)
        except ProxmoxError as exc:
            if "detected modified configuration" in str(exc):
                raise ProxmoxError("the container config changed while we were planning", vmid=ct.vmid,
                                   step=STEP, fix="run `provision up` again (it re-reads the config)") from None
            raise
    pct_set(actx, ct.vmid, root_set, root_del)


def resolve_template(actx: ApplyContext) -> str:
    """The volid of the configured template, downloading it first when missing."""
    c = actx.cfg.container
    pve = actx.pve
    if ":" in c.template:
        return c.template
    storage_path = f"/nodes/{pve.node}/storage/{c.template_storage}/content"
    prefix = c.template + "_"

    def pick(volids: list[str]) -> str | None:
        found = sorted(v for v in volids if v.split("/", 1)[-1].startswith(prefix) or v.endswith("/" + c.template))
        return found[-1] if found else None

    volid = pick([e["volid"] for e in pve.get(storage_path, content="vztmpl") or []])
    if volid:
        return volid
    index = pve.get(f"/nodes/{pve.node}/aplinfo") or []
    names = sorted(e["template"] for e in index if str(e.get("template", "")).startswith(prefix))
    if not names:
        raise ProxmoxError(f"no template named {c.template} on {c.template_storage} or in the appliance index",
                           step=STEP, fix="set container.template to a name from `pveam available` or a volid")
    actx.status(f"downloading template {names[-1]}")
    upid = pve.post(f"/nodes/{pve.node}/aplinfo", storage=c.template_storage, template=names[-1])
    pve.wait_task(upid, what=f"downloading {names[-1]}", timeout=actx.cfg.proxmox.task_timeout, on_log=actx.log)
    volid = pick([e["volid"] for e in pve.get(storage_path, content="vztmpl") or []])
    if not volid:
        raise ProxmoxError(f"template {names[-1]} downloaded but not found on {c.template_storage}", step=STEP)
    return volid


def create_container(actx: ApplyContext, want: dict[str, str]) -> None:
    c = actx.cfg.container
    pve = actx.pve
    ostemplate = resolve_template(actx)
    vmid = actx.plan.vmid or int(pve.get("/cluster/nextid"))
    actx.state["vmid"] = vmid
    unpriv = c.unprivileged
    params = dict(want)
    params["description"] = description(actx.plan)
    root_set: dict[str, str] = {}
    if actx.plan.root_path != "api":
        root_set = {k: v for k, v in params.items() if is_root_only(k, v, unpriv)}
        params = {k: v for k, v in params.items() if k not in root_set}
    params.update({"vmid": str(vmid), "ostemplate": ostemplate, "rootfs": f"{c.storage}:{c.disk_gb}",
                   "unprivileged": _bool(unpriv), "start": "0"})
    actx.status(f"creating CT {vmid}")
    upid = pve.post(f"/nodes/{pve.node}/lxc", **params)
    pve.wait_task(upid, what=f"creating CT {vmid}", timeout=actx.cfg.proxmox.task_timeout, on_log=actx.log)
    pct_set(actx, vmid, root_set, [])


def start_container(actx: ApplyContext) -> None:
    vmid = actx.vmid
    actx.status(f"starting CT {vmid}")
    try:
        upid = actx.pve.post(actx.pve.ct(vmid, "status/start"))
        actx.pve.wait_task(upid, what=f"starting CT {vmid}", timeout=actx.cfg.proxmox.task_timeout)
    except TaskFailed as exc:
        # an immutable /etc/resolv.conf stops every start: fix it from the host, retry once
        from .resolv import fix_on_host, is_resolv_failure
        if not is_resolv_failure(exc):
            raise
        fix_on_host(actx, vmid)
        upid = actx.pve.post(actx.pve.ct(vmid, "status/start"))
        actx.pve.wait_task(upid, what=f"starting CT {vmid}", timeout=actx.cfg.proxmox.task_timeout)


def restart_container(actx: ApplyContext) -> None:
    vmid = actx.vmid
    actx.status(f"restarting CT {vmid} to apply pending changes")
    upid = actx.pve.post(actx.pve.ct(vmid, "status/reboot"))
    actx.pve.wait_task(upid, what=f"restarting CT {vmid}", timeout=actx.cfg.proxmox.task_timeout)


__all__ = ["CONTRIBUTORS", "ContainerStep", "OwnedKeys", "desired_config", "has_marker", "is_root_only",
           "same", "start_container"]
