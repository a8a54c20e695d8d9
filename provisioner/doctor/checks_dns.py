"""DNS checks: an immutable /etc/resolv.conf (the container will not start again), PVE's
opt-out marker, and whether the names the setup needs resolve inside the container."""

from __future__ import annotations

from ..facts.services import RESOLV_FACT, ResolvFacts
from .context import DoctorContext
from .facts import Resolution
from .findings import Evidence, Finding, fail, ok, warn

MARKER = "/etc/.pve-ignore.resolv.conf"


def check_resolv(d: DoctorContext) -> list[Finding]:
    """Also on a stopped CT (read through `pct mount`): the flag is what keeps it from starting."""
    if not d.access.ssh_ok:
        return []
    r: ResolvFacts | None = d.fact(RESOLV_FACT.name)
    if r is None:
        return []
    vmid = d.vmid
    if d.ct_running:
        ev = Evidence(d.in_ct(f"sh -c 'lsattr -d /etc/resolv.conf; ls -l {MARKER}'"), d.raw_output(RESOLV_FACT.name))
    else:
        root = f"/var/lib/lxc/{vmid}/rootfs"
        ev = Evidence(d.on_host(f"sh -c 'pct mount {vmid}; lsattr -d {root}/etc/resolv.conf; "
                                f"ls -l {root}{MARKER}; pct unmount {vmid}'"), d.raw_output(RESOLV_FACT.name))
    if r.immutable and r.ignored:
        # PVE does not write an ignored file at all (pve-container src/PVE/LXC/Setup/Base.pm:739-743,
        # 883-885@94f5585): the flag cannot stop a start
        return [ok("dns.immutable", f"/etc/resolv.conf is immutable, but {MARKER} makes PVE leave it alone "
                   "(harmless)", ev)]
    if r.immutable and not d.ct_running:
        return [fail("dns.immutable", f"/etc/resolv.conf is immutable (chattr +i): CT {vmid} cannot start", ev,
                     fix="doctor --fix clears it through `pct mount` (or `provision up`, which also starts it); to "
                         f"keep your own resolv.conf create {MARKER} in the container instead",
                     fixable=True,
                     detail="PVE rewrites resolv.conf at every start by rename(); on an immutable file that fails "
                            "('close (rename) atomic file ... Operation not permitted', or only 'startup for "
                            f"container '{vmid}' failed') and the container stays stopped")]
    if r.immutable:
        return [fail("dns.immutable", "/etc/resolv.conf is immutable (chattr +i)", ev,
                     fix=f"doctor --fix clears it from the host (`chattr -i` on the container's file); to keep your "
                         f"own resolv.conf create {MARKER} in the container instead",
                     fixable=True,
                     detail="PVE rewrites resolv.conf at every start by rename(); on an immutable file that fails "
                            "and the container does not start again: the task says only \"startup for container "
                            f"'{vmid}' failed\" (the cause is in the debug log: `pct start {vmid} --debug`) (stopped: `pct mount {vmid}`, "
                            f"`chattr -i /var/lib/lxc/{vmid}/rootfs/etc/resolv.conf`, `pct unmount {vmid}`)")]
    if not r.lsattr_ok:
        return [warn("dns.immutable", "could not read the attributes of /etc/resolv.conf (lsattr failed)", ev,
                     fix="check on the host: lsattr the container's /etc/resolv.conf")]
    findings = [ok("dns.immutable", "/etc/resolv.conf is not immutable", ev)]
    if not r.pve_managed and not r.ignored and r.exists:
        findings.append(warn("dns.pve_ignore", f"/etc/resolv.conf has custom content but no {MARKER}", ev,
                             fix=f"pct exec {vmid} -- touch {MARKER}  (PVE then leaves your file alone), or set "
                                 "container.nameserver in the host file",
                             detail="it has no '# --- BEGIN PVE ---' section, so PVE replaces the whole file at "
                                    "the next container start"))
    else:
        findings.append(ok("dns.pve_ignore", "resolv.conf is PVE's" if r.pve_managed and not r.ignored
                           else f"{MARKER} present: PVE leaves resolv.conf alone", ev))
    return findings


def check_resolution(d: DoctorContext) -> list[Finding]:
    if not d.ct_facts:
        return []
    ct: Resolution | None = d.fact("doctor.ct_dns")
    host: Resolution | None = d.fact("doctor.host_dns")
    if ct is None:
        return []
    lines = [f"nameservers: {' '.join(ct.nameservers) or '(none)'}"]
    lines += [f"{n}: container {'ok' if v else 'FAILS'}" + (f", host {'ok' if host.names.get(n) else 'FAILS'}"
                                                          if host and n in host.names else "")
              for n, v in sorted(ct.names.items())]
    names = " ".join(sorted(ct.names))
    ev = Evidence(d.in_ct(f"sh -c 'for h in {names}; do getent ahosts $h | head -1; done'"), "\n".join(lines))
    if not ct.nameservers:
        return [fail("dns.resolve", "no nameserver in the container's /etc/resolv.conf", ev,
                     fix="set container.nameserver in the host file and run `provision up` (or fix the host's DNS)")]
    bad = sorted(n for n, v in ct.names.items() if not v)
    if not bad:
        return [ok("dns.resolve", f"names resolve in the container ({names})", ev)]
    host_too = [n for n in bad if host is not None and host.names.get(n) is False]
    if len(host_too) == len(bad):
        return [warn("dns.resolve", f"{', '.join(bad)} resolve neither in the container nor on the host", ev,
                     fix="check the host's network and DNS (this looks like no internet access, not a "
                         "container problem); installs and model downloads need it",
                     detail="a container that cannot resolve names cannot install packages or download models")]
    return [fail("dns.resolve", f"{', '.join(bad)} do not resolve in the container (the host resolves them)", ev,
                 fix=f"check `pct exec {d.vmid} -- cat /etc/resolv.conf`; set container.nameserver "
                     "(e.g. your router's address) and run `provision up`",
                 detail="the container's resolver does not answer; apt and model downloads fail")]


CHECKS = [check_resolv, check_resolution]
