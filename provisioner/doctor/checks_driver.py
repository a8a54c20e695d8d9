"""Driver checks: the container's NVIDIA userspace against the host module, pins and holds,
and no kernel-module packages inside the container."""

from __future__ import annotations

from ..errors import ProvisionError
from ..facts.nvidia_ct import DRIVER_CT, PIN_PATH, DriverUserspace
from ..operations.driver import FORBIDDEN, DriverStep, host_version, not_in_repository, repository_fix
from .context import DoctorContext, sharing
from .facts import CT_PKGS, CT_SMI, SmiRun
from .findings import Evidence, Finding, fail, ok, warn

MISMATCH = "Driver/library version mismatch"


def _inputs(d: DoctorContext) -> tuple[str, DriverUserspace] | None:
    if not d.ct_facts or d.plan is None:
        return None
    try:
        version = host_version(sharing(d.plan))
    except ProvisionError:
        return None
    ct = d.fact(DRIVER_CT.name)
    if version is None or ct is None:
        return None
    return version, ct


def driver_changes(d: DoctorContext) -> list:
    """The driver step's plan now; `doctor --fix` applies exactly these."""
    try:
        return DriverStep().plan(d.plan)  # type: ignore[arg-type]
    except ProvisionError:
        return []


def explain_smi(run: SmiRun, host: str) -> str:
    """nvidia-smi's outcome in plain words."""
    if MISMATCH in run.output:
        lib = next((ln.split(":", 1)[1].strip() for ln in run.output.splitlines()
                    if ln.startswith("NVML library version")), "another version")
        return (f"nvidia-smi says 'Driver/library version mismatch': the container's NVIDIA libraries are "
                f"{lib}, the host's kernel module is {host}. They must be the same release; this usually "
                "happens after the host driver was upgraded (or an apt upgrade moved the container's packages)")
    if "couldn't communicate with the NVIDIA driver" in run.output:
        return ("nvidia-smi cannot reach the driver: /dev/nvidiactl or /dev/nvidia0 is missing in the container "
                "or not usable (see container.devices and container.node_access)")
    return f"nvidia-smi exited with {run.exit_code}"


def check_userspace(d: DoctorContext) -> list[Finding]:
    got = _inputs(d)
    if got is None:
        return []
    version, ct = got
    smi: SmiRun | None = d.fact(CT_SMI.name)
    libs = {"libnvidia-ml.so": ct.nvml_libs, "libcuda.so": ct.cuda_libs}
    lines = [f"host module: {version}"] + [f"{k}.{', '.join(v) or '(none)'}" for k, v in libs.items()]
    if smi is not None and smi.present:
        lines += ["$ nvidia-smi", smi.output]
    ev = Evidence(d.in_ct("sh -c 'ls /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.* /usr/lib/x86_64-linux-gnu/libcuda.so.*; "
                          "nvidia-smi'"), "\n".join(lines))
    wrong = {k: v for k, v in libs.items() if v != [version]}
    smi_bad = smi is not None and smi.present and smi.exit_code not in (0, None)
    fix = (f"doctor --fix (or `provision up`): re-pin to {version} and reinstall "
           f"{', '.join(d.cfg.driver.packages)} at {version}")
    absent = not_in_repository(d.plan, version)  # type: ignore[arg-type]
    if wrong or (smi_bad and MISMATCH in (smi.output if smi else "")):
        have = "; ".join(f"{k}.{','.join(v) or '(missing)'}" for k, v in wrong.items()) or "libraries"
        detail = explain_smi(smi, version) if smi_bad and smi else \
            "the libraries must carry exactly the host module's version"
        if absent:  # re-pinning cannot work: say what can
            return [fail("driver.userspace", f"container userspace does not match the host module {version} ({have})",
                         ev, fix=repository_fix(d.plan, version), fixable=False,  # type: ignore[arg-type]
                         detail=f"{absent}. {detail}")]
        return [fail("driver.userspace", f"container userspace does not match the host module {version} ({have})",
                     ev, fix=fix, fixable=True, detail=detail)]
    if smi is not None and not smi.present and "nvidia-driver-cuda" in d.cfg.driver.packages:
        return [fail("driver.userspace", "nvidia-smi is not installed in the container", ev, fix=fix, fixable=True)]
    if smi_bad and smi is not None:
        return [fail("driver.userspace", f"nvidia-smi fails in the container (exit {smi.exit_code})", ev,
                     fix="check container.devices and container.node_access, then `pct exec "
                         f"{d.vmid} -- nvidia-smi`", detail=explain_smi(smi, version))]
    return [ok("driver.userspace", f"container userspace {version} matches the host module; nvidia-smi works", ev)]


def check_pins(d: DoctorContext) -> list[Finding]:
    got = _inputs(d)
    if got is None:
        return []
    version, ct = got
    held = sorted(n for n, p in ct.packages.items() if p.installed and p.held)
    ev = Evidence(d.in_ct(f"sh -c 'cat {PIN_PATH}; apt-mark showhold'"),
                  f"pin file: {'present' if ct.pin_sha256 else 'missing'} (sha256 {ct.pin_sha256 or '-'})\n"
                  f"held: {' '.join(held) or '(none)'}\npinning packages: {' '.join(ct.pinning_packages) or '(none)'}")
    changes = [c for c in driver_changes(d) if c.action in ("write", "install")]
    pin = [c for c in changes if "pin" in c.summary]
    unheld = [p for p in d.cfg.driver.packages if ct.installed(p) and not ct.installed(p).held]  # type: ignore[union-attr]
    problems = []
    if pin:
        problems.append(f"the apt pin is missing or not for {version}")
    if unheld:
        problems.append(f"not held: {', '.join(unheld)}")
    if not problems:
        return [ok("driver.pins", f"driver packages pinned to {version} and held", ev)]
    return [warn("driver.pins", "; ".join(problems), ev,
                 fix=f"doctor --fix (or `provision up`) writes {PIN_PATH} for {version} and holds the packages",
                 fixable=True,
                 detail="without the pin and holds an `apt upgrade` in the container moves the userspace away "
                        "from the host module")]


def check_no_kernel_packages(d: DoctorContext) -> list[Finding]:
    if not d.ct_facts:
        return []
    pkgs = dict(d.fact(CT_PKGS.name) or {})
    ct: DriverUserspace | None = d.fact(DRIVER_CT.name)
    if ct is not None:
        pkgs.update({n: p for n, p in ct.packages.items() if p.installed})
    bad = sorted(n for n in pkgs if FORBIDDEN.match(n))
    ev = Evidence(d.in_ct("dpkg -l 'dkms' '*-dkms' 'nvidia-open' 'cuda-drivers*' 'linux-image-*' 'proxmox-kernel-*'"),
                  "\n".join(f"ii  {n} {pkgs[n].version}" for n in bad) or "(none installed)")
    if not bad:
        return [ok("driver.no_kernel_packages", "no dkms, kernel or kernel-module packages in the container", ev)]
    return [fail("driver.no_kernel_packages", f"kernel-side packages installed in the container: {', '.join(bad)}", ev,
                 fix=f"pct exec {d.vmid} -- apt-get purge -y {' '.join(bad)} "
                     "(then `provision up` reinstalls the userspace alone)",
                 detail="a container shares the host's kernel: DKMS here cannot build or load a module, it only "
                        "breaks apt runs, and metapackages like nvidia-open pull the wrong driver pieces")]


CHECKS = [check_userspace, check_pins, check_no_kernel_packages]
