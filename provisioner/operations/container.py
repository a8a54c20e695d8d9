"""The container itself: create it, converge its Proxmox config, start it.

Diffing happens after PVE's normalisation: tags are compared as a sorted,
lower-cased set; property strings (``net0``, ``features``, ``mpN``, ``devN``) are
compared key by key, ignoring what PVE adds on its own (``hwaddr``, ``type=veth``).

Root-only keys (``devN``, bind mounts, features on a privileged CT) go through
the API when logged in as root@pam with a password, else through ``pct set``
over SSH as root (a token never counts as root, not even ``root@pam!x``).
"""

from __future__ import annotations

import re
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
        want["nameserver"] = _dns_list(c.nameserver)
    if c.searchdomain:
        want["searchdomain"] = _dns_list(c.searchdomain)
    for i, m in enumerate(c.mounts):
        want[f"mp{i}"] = f"{m.host},mp={m.path}" + (",ro=1" if m.read_only else "") + \
            (",backup=1" if m.backup else "")
    for contributor in CONTRIBUTORS:
        want.update(contributor(ctx).desired)
    return want


def split_tags(value: str) -> set[str]:
    """PVE's tag list (``;``, ``,`` or spaces between tags) as a set of lower-cased tags."""
    return {t.strip().lower() for t in value.replace(",", ";").replace(" ", ";").split(";") if t.strip()}


def merged_tags(current: str, desired: str) -> str:
    """The container's own tags plus ours: a tag someone set (in the UI, or before we adopted the CT)
    is never removed; the host file's tags and the marker are added."""
    return ";".join(sorted(split_tags(current) | split_tags(desired)))


def _flags(value: str | None) -> dict[str, str]:
    """A ``features`` value as flag -> value (``nesting=1,keyctl=0`` -> {nesting: 1, keyctl: 0})."""
    return dict(p.split("=", 1) for p in (value or "").split(",") if "=" in p)


def is_root_only(key: str, value: str | None, unprivileged: bool, current: str | None = None) -> bool:
    """PVE's rule (pve-container src/PVE/LXC.pm:1655-1756 check_ct_modify_config_perm@94f5585):
    devN, bind/device mounts, any feature change on a privileged CT, and on an unprivileged one
    any flag but ``nesting`` that differs between ``current`` and ``value`` — compared flag by
    flag (``old // ''`` vs ``new // ''``), so *removing* ``keyctl`` is root-only too. ``value``
    None is a delete (judged by the old flags alone)."""
    if key.startswith("dev") or key == "hookscript":  # hookscript: pve-container src/PVE/LXC.pm:1736-1738
        return True
    if key.startswith("mp") or key == "rootfs":
        return (value if value is not None else current or "").split(",", 1)[0].startswith("/")
    if key == "features":
        if not unprivileged:
            return True
        old, new = _flags(current), _flags(value)
        if value is None:  # delete
            return bool(set(old) - {"nesting"})
        if not current:  # new container, or none set yet
            return bool(set(new) - {"nesting"})
        return any(old.get(f, "") != new.get(f, "") for f in set(old) | set(new) if f != "nesting")
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


def _dns_list(value: str) -> str:
    """pve-common's split_list (``[;,\\s]+``) joined by spaces: how PVE stores a DNS list."""
    return " ".join(p for p in re.split(r"[;,\s]+", value.strip()) if p)


def same(key: str, current: str | None, desired: str, version: str) -> bool:
    if current is None:
        return False
    if key == "tags":
        return split_tags(current) == split_tags(desired)
    if key == "description":
        return current.strip() == desired.strip()
    if key in ("nameserver", "searchdomain"):
        # PVE stores split_list(value) joined by single spaces (pve-container src/PVE/LXC.pm:933-955
        # verify_nameserver_list/verify_searchdomain_list@94f5585)
        return _dns_list(current) == _dns_list(desired)
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
        later: dict[str, bool] = {"restart": False}
        changes = self._converge(ctx, later)
        restart = self._pending_restart(ctx, changes)
        if restart:
            later["restart"] = True  # the update leaves what it leaves pending to this restart
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

    def _converge(self, ctx: PlanContext, later: dict[str, bool] | None = None) -> list[Change]:
        ct = ctx.pve.ct
        assert ct is not None
        version = ctx.pve.version
        want = desired_config(ctx)
        want["description"] = description(ctx, ct.config.get("description"))
        want["tags"] = merged_tags(ct.config.get("tags", ""), want["tags"])
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
            _note_root_path(ctx, set_keys, deletes, dict(ct.config))
            diff = {k: (effective.get(k), v) for k, v in set_keys.items()}
            diff.update({k: (effective.get(k), None) for k in deletes})

            def apply(actx: ApplyContext, set_keys=set_keys, deletes=deletes) -> None:
                update_config(actx, set_keys, deletes)
                if ct.running:
                    settle_pending(actx, restart_planned=bool(later and later["restart"]))

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

        # GET config already shows pending values, and no deleted key: the value in force comes from /pending
        diff = {k: (ct.pending_was.get(k, ct.config.get(k) if k not in ct.pending else None),
                    "(deleted)" if k in ct.pending_delete else ct.pending.get(k)) for k in keys}
        return Change(STEP, "restart", f"ct {ct.vmid}", f"restart to apply pending {', '.join(keys)}", apply,
                      diff=diff, refresh=True)

    def _start_change(self, ctx: PlanContext, *, created: bool) -> Change:
        def apply(actx: ApplyContext) -> None:
            start_container(actx)

        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
        return Change(STEP, "start", target, "start the container", apply, refresh=True)


def _note_root_path(ctx: PlanContext, keys: dict[str, str], deletes: list[str], current: dict[str, str]) -> None:
    """Say which path root-only keys take (the preflight the user reads in the plan)."""
    unpriv = _unprivileged(ctx, current)
    root = sorted([k for k, v in keys.items() if is_root_only(k, v, unpriv, current.get(k))] +
                  [k for k in deletes if is_root_only(k, None, unpriv, current.get(k))])
    if not root:
        return
    if ctx.root_path == "api":
        ctx.notes.append(f"{', '.join(root)}: root-only keys, set through the API as root@pam")
    else:
        ctx.notes.append(f"{', '.join(root)}: root-only keys (an API token never counts as root), "
                         "set with `pct set` over SSH as root")


def _unprivileged(ctx: PlanContext, current: dict[str, str]) -> bool:
    """The CT's own flag when it exists (PVE judges by it), else what the host file creates."""
    if ctx.pve.ct is not None and "unprivileged" in current:
        return current.get("unprivileged") == "1"
    return ctx.cfg.container.unprivileged


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
    # PVE judges a PUT against the config's main section, not its pending values (LXC.pm:1655)
    current = dict(actx.plan.pve.ct.config) if actx.plan.pve.ct else {}
    unpriv = _unprivileged(actx.plan, current)
    root_set = {k: v for k, v in keys.items() if is_root_only(k, v, unpriv, current.get(k))}
    root_del = [k for k in deletes if is_root_only(k, None, unpriv, current.get(k))]
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
        text = "\n".join(t for t in (result.stderr.strip(), result.stdout.strip()) if t)
        head, errors = pve_errors(text)
        if errors:  # PVE's per-key reasons, in the message itself (not an output tail)
            raise ProxmoxError(f"pct set {int(vmid)}: {head}", errors=errors, vmid=vmid, step=STEP,
                               fix=HOTPLUG_FIX.replace("VMID", str(int(vmid)))
                               if any("hotplug" in v for v in errors.values()) else None)
        raise RemoteError("pct set failed", command=cmd, exit_code=result.exit_code, output=text, vmid=vmid,
                          step=STEP)


#: PVE writes nothing when a hot-plug fails (pve-container src/PVE/API2/LXC/Config.pm:259 at 94f5585:
#: "don't write to config if we get any errors"), so the way out is a fix or a stopped container
HOTPLUG_FIX = ("nothing was written; fix the cause PVE names above, or stop the container "
               "(`pct stop VMID`) and run `provision up` again: a stopped container takes the key at its next start")
_KEY_LINE = re.compile(r"^([a-z][a-z0-9_-]*): (.+)$")


def pve_errors(text: str) -> tuple[str, dict[str, str]]:
    """``pct``'s parameter errors (``400 Parameter verification failed.`` then ``key: reason`` lines)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = next((ln for ln in lines if re.match(r"^\d{3} ", ln)), lines[0] if lines else "failed")
    errors = {}
    for ln in lines:
        m = _KEY_LINE.match(ln)
        if m and not ln.startswith(("pct ", "usage")):
            errors[m.group(1)] = m.group(2)
    return head, errors


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
            if any("hotplug" in str(v) for v in exc.errors.values()):
                exc.fix = exc.fix or HOTPLUG_FIX.replace("VMID", str(ct.vmid))
                exc.vmid, exc.step = ct.vmid, STEP
            raise
    pct_set(actx, ct.vmid, root_set, root_del)


def pending_keys(actx: ApplyContext, vmid: int) -> list[str]:
    """What PVE left pending, read now (``GET .../pending``): one call."""
    items = actx.pve.get(actx.pve.ct(vmid, "pending")) or []
    return sorted(str(p["key"]) for p in items if "pending" in p or p.get("delete"))


def settle_pending(actx: ApplyContext, *, restart_planned: bool) -> None:
    """After a PUT on a running CT: re-read ``/pending`` and restart now when allowed, else say so.

    Which keys stay pending is PVE's call, per version: ``features``, ``nameserver``,
    ``searchdomain`` and edits of an existing ``devN``/``mpN`` on both, a *new* ``devN`` on 8.4
    too (pve-container src/PVE/LXC/Config.pm:1624-1747 vmconfig_hotplug_pending@94f5585: only
    the FASTPLUG keys, cpu/memory, netN, new mpN and — 9.x only — new devN are applied live;
    stable-bookworm @6475873 has no devN branch). The plan read the pending list before the PUT,
    so without this the run would go on as if the GPU were already in the container."""
    vmid = actx.vmid
    keys = pending_keys(actx, vmid)
    if not keys or restart_planned:
        return
    devs = [k for k in keys if k.startswith("dev")]
    if actx.plan.allow_restart or actx.cfg.container.restart == "when-needed":
        restart_container(actx)
        actx.plan.notes.append(f"CT {vmid}: restarted in this run to apply {', '.join(keys)} (PVE kept them pending)")
        return
    actx.plan.notes.append(
        f"CT {vmid}: PVE keeps {', '.join(keys)} pending until the container restarts"
        + (f"; until then the container has no {', '.join(devs)} (its GPU nodes): what follows in this run "
           "cannot use the GPU" if devs else "")
        + "; run `provision up --restart` (or set container.restart: when-needed)")


def template_version(name: str) -> tuple[tuple[int, ...], str]:
    """Sort key: the version in ``debian-12-standard_12.12-1_amd64.tar.zst`` as numbers, so that
    12.12-1 is newer than 12.9-1 (a lexical sort says otherwise)."""
    m = re.search(r"_(\d+(?:[.-]\d+)*)_[^_]*$", name.rsplit("/", 1)[-1])
    nums = tuple(int(x) for x in re.split(r"[.-]", m.group(1))) if m else ()
    return nums, name


def resolve_template(actx: ApplyContext) -> str:
    """The volid of the configured template, downloading it first when missing."""
    c = actx.cfg.container
    pve = actx.pve
    if ":" in c.template:
        return c.template
    storage_path = f"/nodes/{pve.node}/storage/{c.template_storage}/content"
    prefix = c.template + "_"

    def pick(volids: list[str]) -> str | None:
        found = sorted((v for v in volids if v.split("/", 1)[-1].startswith(prefix) or v.endswith("/" + c.template)),
                       key=template_version)
        return found[-1] if found else None

    volid = pick([e["volid"] for e in pve.get(storage_path, content="vztmpl") or []])
    if volid:
        return volid
    index = pve.get(f"/nodes/{pve.node}/aplinfo") or []
    names = sorted((e["template"] for e in index if str(e.get("template", "")).startswith(prefix)),
                   key=template_version)
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


def _claim_next_vmid(actx: ApplyContext, tries: int = 5) -> int:
    """``vmid: auto``: the next free vmid, with its run lock held before the container exists.

    Another run that finds the new container by hostname locks it by vmid (engine/lock.py),
    so it waits for this one. Two runs handed the same id: the second gets the lock only
    after the first created it, sees the id taken and asks again.
    """
    pve = actx.pve
    lock = actx.state.get("lock")
    vmid = int(pve.get("/cluster/nextid"))
    for _ in range(tries):
        if lock is None:
            return vmid
        lock.claim(vmid)
        again = int(pve.get("/cluster/nextid"))
        if again == vmid:
            return vmid
        lock.release(vmid)
        vmid = again
    raise ProxmoxError(f"no free vmid stayed free for {tries} tries (other runs are creating containers)",
                       step=STEP, fix="set container.vmid, or run again")


def create_container(actx: ApplyContext, want: dict[str, str]) -> None:
    c = actx.cfg.container
    pve = actx.pve
    ostemplate = resolve_template(actx)
    vmid = actx.plan.vmid or _claim_next_vmid(actx)
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
    except TaskFailed:
        # An immutable /etc/resolv.conf stops every start, but PVE's text for it never reaches the
        # task (operations/resolv.py): look at the file itself, fix it from the host, retry once.
        from .resolv import fix_on_host
        if not fix_on_host(actx, vmid):
            raise
        upid = actx.pve.post(actx.pve.ct(vmid, "status/start"))
        actx.pve.wait_task(upid, what=f"starting CT {vmid}", timeout=actx.cfg.proxmox.task_timeout)


def restart_container(actx: ApplyContext) -> None:
    """Reboot the CT; a reboot that stopped it and could not start it again is not left so.

    The resolv step removed an immutable resolv.conf before this (engine/steps.py). Should the
    start half still fail (the facts could not see the flag, e.g. `--only container`), the CT
    is stopped: look through `pct mount`, and start it again once the flag is gone.
    """
    vmid = actx.vmid
    actx.status(f"restarting CT {vmid} to apply pending changes")
    timeout = actx.cfg.proxmox.task_timeout
    try:
        upid = actx.pve.post(actx.pve.ct(vmid, "status/reboot"))
        actx.pve.wait_task(upid, what=f"restarting CT {vmid}", timeout=timeout)
    except TaskFailed:
        from .resolv import fix_on_host

        status = (actx.pve.get(actx.pve.ct(vmid, "status/current")) or {}).get("status")
        if status == "running" or not fix_on_host(actx, vmid):
            raise
        upid = actx.pve.post(actx.pve.ct(vmid, "status/start"))
        actx.pve.wait_task(upid, what=f"starting CT {vmid}", timeout=timeout)


__all__ = ["CONTRIBUTORS", "ContainerStep", "OwnedKeys", "desired_config", "has_marker", "is_root_only",
           "same", "start_container"]
