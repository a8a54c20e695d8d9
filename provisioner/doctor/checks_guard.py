"""The host guard (driver.follow_host): a driver waiting for a reboot, the guard installed, its recent
actions and failures for this container (from its log on the host)."""

from __future__ import annotations

from ..errors import ProvisionError
from ..facts.guard import GUARD, GUARD_BIN, STATE_DIR, GuardState
from ..operations.guard import AFTER_REBOOT, host_files, wanted
from .context import DoctorContext, sharing
from .findings import Evidence, Finding, fail, ok, warn


def _wanted(d: DoctorContext) -> bool:
    try:
        return d.plan is not None and wanted(sharing(d.plan))
    except ProvisionError:
        return False


def check_reboot_pending(d: DoctorContext) -> list[Finding]:
    st: GuardState | None = d.fact(GUARD.name)
    if st is None or st.pending is None:
        return []
    ondisk, loaded = st.pending
    mode = d.cfg.driver.follow_host
    return [warn("driver.reboot_pending", f"NVIDIA module {ondisk} on disk, {loaded} loaded: containers will be "
                 "moved at the next boot", Evidence(d.on_host(f"cat {STATE_DIR}/reboot-pending"), st.reboot_pending or ""),
                 fix=f"reboot the host when convenient; after it {AFTER_REBOOT[mode]} (driver.follow_host: {mode})")]


def check_guard(d: DoctorContext) -> list[Finding]:
    st: GuardState | None = d.fact(GUARD.name)
    if st is None or not _wanted(d):
        return []
    missing = [p for p in host_files() if not st.files.get(p)]
    if missing or not st.unit_enabled:
        return [warn("guard.installed", "the host guard is not (fully) installed: " +
                     ", ".join(missing or ["provision-guard.service not enabled"]),
                     Evidence(d.on_host(f"ls -l {' '.join(host_files())}"), ""),
                     fix="provision up (the GPU host step installs it)")]
    mine = [ln for ln in st.log_tail if f"CT {d.vmid}:" in ln or " boot: " in ln]
    ev = Evidence(d.on_host(f"tail -n 20 {STATE_DIR}/guard.log"), "\n".join(mine[-10:]) or "(nothing yet)")
    last = next((ln for ln in reversed(mine) if f"CT {d.vmid}:" in ln), "")
    if "FAILED" in last:
        return [fail("guard.recent", f"the host guard could not move CT {d.vmid}'s NVIDIA userspace", ev,
                     fix=f"see {STATE_DIR}/guard.log on the host (often: the repository was unreachable); "
                         "then `provision up`, or restart the container to let the guard retry")]
    if "not moved" in last:
        return [warn("guard.recent", f"CT {d.vmid}'s userspace does not follow the host (driver.follow_host=refuse): "
                     "llama-server refuses to start", ev,
                     fix="run `provision up` for this container (or set driver.follow_host: sync)")]
    return [ok("guard.recent", f"host guard active ({GUARD_BIN}, driver.follow_host={d.cfg.driver.follow_host})", ev)]


CHECKS = [check_reboot_pending, check_guard]
