"""Container checks: it exists and runs, its devN entries match the host, nothing is left pending,
and the device nodes inside are the host's and usable by the service user."""

from __future__ import annotations

import re

from ..errors import ProvisionError
from ..facts.nvidia import DEVICES, DRIVER, DeviceNodes
from ..facts.services import LLAMA_USER
from ..gpu_access import GPU_GID, GPU_GROUP, can_open, dev_options
from ..operations.gpu_exclusive import shared_with
from ..operations.passthrough import desired_device_paths, owns_dev
from .context import DoctorContext, sharing
from .facts import CT_NODES, CtNodes
from .findings import Evidence, Finding, fail, ok, warn

_DEV_KEY = re.compile(r"^dev(\d+)$")
NOBODY = 65534


def dev_path(value: str) -> str:
    first = value.split(",", 1)[0]
    return first.removeprefix("path=")


def check_exists(d: DoctorContext) -> list[Finding]:
    if d.plan is None or not d.access.api_ok:
        return []
    ev = Evidence(d.on_host(f"pct status {d.vmid}" if d.vmid else "pct list"),
                  f"status: {d.ct.status}" if d.ct else "no such container")
    if d.ct is None:
        what = f"CT {d.vmid}" if d.vmid else f"a container tagged 'provision' named {d.cfg.container.hostname}"
        return [fail("container.exists", f"{what} does not exist on node {d.cfg.proxmox.node}", ev,
                     fix="run `provision up FILE` to create it, or pass --vmid of an existing container")]
    if not d.ct.running:
        return [fail("container.running", f"CT {d.ct.vmid} is {d.ct.status}", ev,
                     fix=f"start it: `pct start {d.ct.vmid}` on the host (if it fails, the error names the cause: "
                         "a missing /dev/nvidia-uvm or an immutable /etc/resolv.conf; doctor checks both)",
                     detail="container checks (driver, CUDA, services) need it running")]
    return [ok("container.running", f"CT {d.ct.vmid} is running", ev)]


def check_exec(d: DoctorContext) -> list[Finding]:
    """The container runs, but commands in it (``pct exec``) gave nothing back."""
    if not d.ct_facts or d.fact(CT_NODES.name) is not None:
        return []
    return [fail("container.exec", f"could not run commands in CT {d.vmid} (pct exec)",
                 Evidence(d.in_ct("true"), "(no output from the container part of the facts script)"),
                 fix=f"run `pct exec {d.vmid} -- true` on the host to see the error; a container still booting "
                     "or without bash cannot be checked",
                 detail="the driver, CUDA, DNS and service checks need it; they are skipped")]


def _effective(d: DoctorContext) -> dict[str, str]:
    ct = d.ct
    assert ct is not None
    eff = dict(ct.config)
    eff.update(ct.pending)
    for k in ct.pending_delete:
        eff.pop(k, None)
    return eff


def check_devices(d: DoctorContext) -> list[Finding]:
    if d.ct is None or not d.cfg.gpu.enabled or not d.access.ssh_ok:
        return []
    drv = d.fact(DRIVER.name)
    if drv is None or not drv.loaded:
        return []
    # What this container needs for its GPUs whoever else holds them; a GPU that another managed
    # container holds too is its own finding (container.gpu_exclusive), not a reason to stop here.
    conflict: ProvisionError | None = None
    try:
        desired_device_paths(d.plan)  # type: ignore[arg-type]
    except ProvisionError as exc:
        conflict = exc
    try:
        want = desired_device_paths(sharing(d.plan))  # type: ignore[arg-type]
    except ProvisionError as exc:  # ConfigError from gpu.select
        return [fail("container.devices", f"cannot tell which GPUs to pass through: {exc}",
                     fix=getattr(exc, "fix", None) or "fix gpu.select")]
    eff = _effective(d)
    have = {dev_path(v): k for k, v in eff.items() if _DEV_KEY.match(k)}
    host: DeviceNodes = d.fact(DEVICES.name) or DeviceNodes()
    ev = Evidence(d.on_host(f"pct config {d.ct.vmid} | grep ^dev"),
                  "\n".join(f"{k}: {v}" for k, v in sorted(eff.items()) if _DEV_KEY.match(k)) or "(no devN)")
    findings: list[Finding] = []
    missing = [p for p in want if p not in have]
    if missing:
        findings.append(fail(
            "container.devices", f"CT {d.ct.vmid} has no devN entry for {', '.join(missing)}", ev,
            fix="doctor --fix (or `provision up`) adds them: " +
                " ".join(f"pct set {d.ct.vmid} --{k} {v}" for k, v in _new_entries(d, missing).items()),
            fixable=conflict is None,
            detail="a devN was removed by hand or never added; the container cannot use the GPU without it"))
    absent = [p for p in have if p.startswith("/dev/nvidia") and not host.has(p)]
    if absent:
        findings.append(fail(
            "container.devices", f"devN entries point at nodes missing on the host: {', '.join(absent)}", ev,
            fix="create them on the host (see host.device_nodes); PVE refuses to start the container until then",
            # vm_start and every config PUT stat each devN first (pve-container src/PVE/LXC.pm:777,
            # src/PVE/LXC/Tools.pm:157-167@94f5585)
            detail=f"starting the container, and every config change, fails with 'Device {absent[0]} does not exist'"))
    extra = [p for p, k in have.items() if owns_dev(k, eff[k]) and p not in want]
    if extra and not findings:
        findings.append(warn("container.devices", f"devN entries not asked for by the host file: {', '.join(extra)}",
                             ev, fix="`provision up` removes them (or add the GPUs to gpu.select)"))
    if not findings:
        findings.append(ok("container.devices", f"devN entries match the host's nodes ({len(want)} nodes)", ev))
    if conflict is not None:
        findings.append(fail("container.gpu_exclusive", getattr(conflict, "message", str(conflict)), ev,
                             fix=getattr(conflict, "fix", None)))
    else:
        for minor, holders in sorted(shared_with(d.plan).items()):  # type: ignore[arg-type]
            who = ", ".join(f"CT {c.vmid}" + (f" ({c.hostname})" if c.hostname else "") for c in holders)
            findings.append(warn("container.gpu_exclusive", f"/dev/nvidia{minor} is shared with {who}, which asked "
                                 "for it (gpu.share: true)", ev,
                                 fix="nothing to do if both models fit in its memory; otherwise give that "
                                     "container another GPU (its gpu.select) or take the GPU away there",
                                 detail="both llama-servers load their models into the same GPU memory; "
                                        "one fails with out-of-memory when they do not fit together"))
    return findings



def _new_entries(d: DoctorContext, missing: list[str]) -> dict[str, str]:
    from ..operations.passthrough import DEV_OPTIONS

    eff = _effective(d)
    taken = {int(m.group(1)) for k in eff if (m := _DEV_KEY.match(k))}
    free = (i for i in range(256) if i not in taken)
    return {f"dev{next(free)}": f"{p},{DEV_OPTIONS}" for p in missing}


def check_pending(d: DoctorContext) -> list[Finding]:
    ct = d.ct
    if ct is None or not d.access.api_ok:
        return []
    keys = sorted(set(ct.pending) | set(ct.pending_delete))
    ev = Evidence(d.on_host(f"pct pending {ct.vmid}"),
                  "\n".join([f"{k}: {ct.config.get(k)} -> {ct.pending.get(k, '(delete)')}" for k in keys])
                  or "(nothing pending)")
    if not keys:
        return [ok("container.pending", "no configuration changes waiting for a restart", ev)]
    return [warn("container.pending", f"pending until the container restarts: {', '.join(keys)}", ev,
                 fix=f"`provision up FILE --restart` (or `pct reboot {ct.vmid}` on the host)",
                 detail="PVE keeps edits of devN and features pending on a running container")]


def check_node_access(d: DoctorContext) -> list[Finding]:
    """Inside the CT: each passed node exists, has the host's major:minor, and the service user may open it."""
    if not d.ct_facts or not d.cfg.gpu.enabled:
        return []
    nodes: CtNodes | None = d.fact(CT_NODES.name)
    host: DeviceNodes = d.fact(DEVICES.name) or DeviceNodes()
    if nodes is None:
        return []
    ct = d.ct
    assert ct is not None
    configured = [dev_path(v) for k, v in ct.config.items() if _DEV_KEY.match(k) and dev_path(v).startswith("/dev/nvidia")]
    if not configured:
        return []
    ev = Evidence(d.in_ct("stat -c '%n %u %g %a %t:%T' /dev/nvidia*"),
                  "\n".join(f"{n.path} uid={n.uid} gid={n.gid} mode={n.mode:o} {n.major}:{n.minor}"
                            for n in nodes.nodes.values()) or "(no /dev/nvidia* nodes)")
    unpriv = ct.config.get("unprivileged") == "1"
    absent = [p for p in configured if p not in nodes.nodes]
    stale = [p for p in configured if p in nodes.nodes and p in host.nodes
             and (nodes.nodes[p].major, nodes.nodes[p].minor) != host.nodes[p]]
    findings: list[Finding] = []
    if absent or stale:
        findings.append(fail(
            "container.node_access",
            ("missing in the container: " + ", ".join(absent) if absent else "") +
            ("; " if absent and stale else "") +
            ("major:minor differs from the host: " + ", ".join(stale) if stale else ""), ev,
            fix=f"restart the container so PVE recreates the nodes: `pct reboot {ct.vmid}` on the host",
            detail="nodes are made at container start with the host's numbers; nvidia-uvm's major is dynamic "
                   "and can change when the host reboots or the module reloads"))
    blocked, nobody = [], []
    # no service user yet (the services step has not run): judge by the groups it will get
    groups = nodes.service_groups or frozenset({GPU_GID})
    for p in configured:
        n = nodes.nodes.get(p)
        if n is None:
            continue
        if not can_open(n.mode, n.gid, groups):
            blocked.append(p)
        if unpriv and (n.uid == NOBODY or n.gid == NOBODY):
            nobody.append(p)
    if blocked:
        findings.append(fail(
            "container.node_access", f"user {LLAMA_USER} cannot open {', '.join(blocked)}", ev,
            fix=f"`provision up FILE --restart` writes every devN with {dev_options()} and puts {LLAMA_USER} in "
                f"group {GPU_GROUP} (gid {GPU_GID}); by hand: `pct set {ct.vmid} --devN {blocked[0]},{dev_options()}`, "
                f"`groupadd -g {GPU_GID} {GPU_GROUP}; usermod -aG {GPU_GROUP} {LLAMA_USER}` in the container, "
                "then restart it",
            detail="llama-server runs as an unprivileged user and needs read-write access to every GPU node; PVE "
                   "makes each node 0660 root:root unless the devN says mode=/gid= (it does not copy the host's "
                   "0666)"))
    elif nobody:
        findings.append(warn(
            "container.node_access", f"owned by nobody/nogroup in this unprivileged container: {', '.join(nobody)}",
            ev, fix="use devN entries with uid=0,gid=0 (`provision up` does) instead of lxc.mount.entry binds",
            detail="unmapped owners: the container cannot chown or chmod these nodes; access relies on the "
                   "host's mode"))
    if not findings:
        later = "" if nodes.service_groups else \
            f" (once the services step creates it in group {GPU_GROUP}, gid {GPU_GID})"
        findings.append(ok("container.node_access",
                           f"{len(configured)} device nodes present with the host's numbers and usable by "
                           f"{LLAMA_USER}{later}", ev))
    return findings


CHECKS = [check_exists, check_exec, check_devices, check_pending, check_node_access]
