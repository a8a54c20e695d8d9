"""The host driver checks without a node: branch ↔ GPU generation, CUDA level, version
resolution, the plan's refusals and its reboot line, the config section, dpkg version order."""

from __future__ import annotations

import pytest

from provisioner.config.schema import HostFile
from provisioner.driver_support import cuda_level, gpu_problem, resolve
from provisioner.errors import RefusedError
from provisioner.facts.host_driver import CtUserspace, HostPackage, HostPackages, parse
from provisioner.facts.kernel import KernelModules
from provisioner.facts.nvidia import BootSetup, DriverVersion, GpuInfo
from provisioner.operations.host_driver import HostState, ManagedCt, plan
from provisioner.sim.host.packages import vercmp

BASE = {"version": 1, "proxmox": {"endpoint": "https://pve:8006", "node": "pve",
                                  "auth": {"token_id": "root@pam!p", "token_secret": {"env": "X"}}}}
#: NVIDIA's index has per-version pinning packages for some releases only (sim/repos/nvidia_graph.py [PIN])
PINNING_INDEX = ["nvidia-driver-pinning-580", "nvidia-driver-pinning-595", "nvidia-driver-pinning-595.71.05"]
REPO = {"580.95.05": "580.95.05-1", "580.105.08": "580.105.08-1", "590.44.01": "590.44.01-1",
        "595.71.05": "595.71.05-1"}


def cfg(**driver) -> HostFile:
    return HostFile.model_validate({**BASE, "host": {"driver": {"manage": True, "version": "595.71.05", **driver}}})


def state(*, gpus=(("NVIDIA GeForce RTX 4090", "8.9"),), installed: str | None = "580.95.05", loaded="580.95.05",
          kernels=("6.8.12-4-pve",), headers=("6.8.12-4-pve",), candidates=None, cts=None,
          ct_libs: dict[int, CtUserspace] | None = None, secure_boot: bool | None = False,
          mok: bool | None = None, packaged: tuple[str, ...] | None = None,
          dirs: tuple[str, ...] = ()) -> HostState:
    pk = {}
    if installed:
        for n in ("nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-kernel-open-dkms"):
            pk[n] = HostPackage(f"{installed}-1", True, True)
        if f"nvidia-driver-pinning-{installed}" in PINNING_INDEX:
            pk[f"nvidia-driver-pinning-{installed}"] = HostPackage(f"{installed}-1", True, False)
        pk["dkms"] = HostPackage("3.0.10-8", True, False)
        pk["proxmox-default-headers"] = HostPackage("1.1.0", True, False)
    for k in headers:
        pk[f"proxmox-headers-{k}"] = HostPackage(k, True, False)
    pkgs = HostPackages("debian", "12", pk, dict(REPO), None, True, {}, None, "b1",
                        candidates if candidates is not None else {k: k for k in kernels}, ct_libs or {},
                        pinning_index=list(PINNING_INDEX), secure_boot=secure_boot, mok_enrolled=mok)
    return HostState(pkgs=pkgs, driver=DriverVersion(loaded, "sys", "open") if loaded else DriverVersion(None),
                     gpus=[GpuInfo(i, n, cc, 24000, f"00000000:0{i + 1}:00.0") for i, (n, cc) in enumerate(gpus)],
                     kernels=KernelModules(kernels[0], {k: True for k in (*kernels, *dirs)}, [], packaged),
                     boot=BootSetup(True, True, True, None, None, False, "/usr/bin/nvidia-modprobe"),
                     cts=cts or [])


@pytest.mark.parametrize("version,flavour,cc,problem", [
    ("595.71.05", "open", "6.1", "580 is the last branch for Maxwell, Pascal and Volta"),
    ("590.44.01", "proprietary", "7.0", "580 is the last branch"),
    ("580.95.05", "proprietary", "6.1", None),
    ("580.95.05", "open", "6.1", "cannot use the open kernel module"),
    ("470.256.02", "proprietary", "3.5", None),
    ("535.247.01", "proprietary", "3.5", "470 is the last branch for Kepler"),
    ("565.57.01", "open", "12.0", "needs the 570 branch or newer"),
    ("580.95.05", "proprietary", "12.0", "runs only on the open kernel module"),
    ("595.71.05", "open", "8.9", None),
    ("595.71.05", "open", None, None),
])
def test_gpu_generation_per_branch(version: str, flavour: str, cc: str | None, problem: str | None) -> None:
    got = gpu_problem(version, flavour, "GPU", cc)
    assert (got is None) if problem is None else (got is not None and problem in got), got


def test_cuda_level_and_resolution() -> None:
    assert cuda_level("595.71.05") == "13.2" and cuda_level("580.95.05") == "13.0"
    assert cuda_level("575.51.03") == "12.9" and cuda_level("520.1") is None
    assert resolve("latest-580", list(REPO)) == "580.105.08"
    assert resolve("595.71.05", list(REPO)) == "595.71.05"
    assert resolve("latest-600", list(REPO)) is None and resolve("590.1.1", list(REPO)) is None


def test_plan_refuses_pascal_on_595() -> None:
    with pytest.raises(RefusedError, match="not supported by the 595 branch"):
        plan(cfg(), state(gpus=(("NVIDIA GeForce GTX 1080", "6.1"),)))


def test_plan_refuses_a_cuda_level_below_a_container_toolkit() -> None:
    REPO["575.51.03"] = "575.51.03-1"
    try:
        with pytest.raises(RefusedError, match=r"gives CUDA 12\.9, below .*CT 120 uses CUDA 13.0"):
            plan(cfg(version="575.51.03"), state(ct_libs={120: CtUserspace(["580.95.05"], ["13.0"])}))
    finally:
        del REPO["575.51.03"]


def test_plan_refuses_an_unknown_version_and_a_kernel_without_headers() -> None:
    with pytest.raises(RefusedError, match="has no driver 595.99.01"):
        plan(cfg(version="595.99.01"), state())
    st = state(kernels=("6.8.12-4-pve", "6.14.8-2-pve"), headers=("6.8.12-4-pve",),
               candidates={"6.8.12-4-pve": "6.8.12-4", "6.14.8-2-pve": None})
    with pytest.raises(RefusedError, match="6.14.8-2-pve"):
        plan(cfg(), st)


def test_upgrade_plan_builds_for_every_newer_kernel_and_says_reboot() -> None:
    st = state(kernels=("6.8.12-4-pve", "6.14.8-2-pve"), headers=("6.8.12-4-pve",),
               cts=[ManagedCt(120, "llm", True, True), ManagedCt(121, "other", True, False)],
               ct_libs={120: CtUserspace(["580.95.05"], ["13.0"])})
    hp = plan(cfg(), st, reboot=False, converge_ct=lambda a, ct, v: None)
    actions = [(c.action, c.summary) for c in hp.changes]
    assert ("install", "kernel headers and dkms (proxmox-headers-6.14.8-2-pve)") in actions  # default-headers installed
    check = next(s for a, s in actions if a == "check")
    assert "6.8.12-4-pve, 6.14.8-2-pve" in check
    assert [a for a, _ in actions].index("check") < [a for a, _ in actions].index("upgrade")
    assert "reboot" not in [a for a, _ in actions] and "lockstep" not in [a for a, _ in actions]
    assert hp.reboot_required and any(n.startswith("REBOOT REQUIRED") for n in hp.notes)
    assert hp.lockstep == {120: ("580.95.05", "595.71.05")}  # CT 121 has no GPU
    with_reboot = plan(cfg(), st, reboot=True, converge_ct=lambda a, ct, v: None)
    assert [c.action for c in with_reboot.changes][-2:] == ["reboot", "lockstep"]


def test_converged_host_plans_nothing() -> None:
    st = state(installed="595.71.05", loaded="595.71.05")
    st.pkgs.packages.pop("nvidia-driver-pinning-595.71.05")
    hp = plan(cfg(), st)
    assert [c.summary for c in hp.changes if c.summary.startswith("pin")] == [
        "pin the host's NVIDIA driver packages to 595.71.05 (nvidia-driver-pinning-595.71.05)"]
    st = state(installed="595.71.05", loaded="595.71.05")
    from provisioner.operations.driver import source_text
    from provisioner.operations.host_driver import BLACKLIST
    from provisioner.operations.passthrough import _sha
    object.__setattr__(st.pkgs, "blacklist_sha256", _sha(BLACKLIST))
    object.__setattr__(st.pkgs, "sources", {"/etc/apt/sources.list.d/cuda-debian12-x86_64.list":
                                            _sha(source_text(cfg().driver.repo_url, "debian12"))})
    st.boot = None
    hp = plan(cfg(), st)
    assert hp.changes == [] and not hp.reboot_required


def test_pin_is_ours_when_the_index_has_no_version_package() -> None:
    """NVIDIA publishes per-version pinning packages for some releases only: 580.95.05 has none."""
    from provisioner.operations.driver import pin_text
    from provisioner.operations.host_driver import USERSPACE
    from provisioner.operations.passthrough import _sha
    st = state(installed=None, loaded=None)
    hp = plan(cfg(version="580.95.05"), st)
    pins = [c for c in hp.changes if c.summary.startswith("pin")]
    assert [c.summary for c in pins] == ["pin the host's NVIDIA driver packages to 580.95.05 "
                                         "(/etc/apt/preferences.d/provision-nvidia: the index has no "
                                         "nvidia-driver-pinning-580.95.05)"]
    assert not any("nvidia-driver-pinning-580.95.05" in str(c.diff) and "installed" in str(c.diff.get(
        "nvidia-driver-pinning-580.95.05", "")) for c in hp.changes)
    object.__setattr__(st.pkgs, "pin_sha256", _sha(pin_text("580.95.05", [*USERSPACE, "nvidia-kernel-open-dkms"])))
    assert not [c for c in plan(cfg(version="580.95.05"), st).changes if c.summary.startswith("pin")]
    # a stale NVIDIA pinning package (another version's, sharing nvidia-driver-pin) is removed
    st.pkgs.packages["nvidia-driver-pinning-595.71.05"] = HostPackage("595.71.05-1", True, False)
    pins = [c for c in plan(cfg(version="580.95.05"), st).changes if c.summary.startswith("pin")]
    assert pins and pins[0].diff == {"/etc/apt/preferences.d/provision-nvidia": ("other pin", "version 580.95.05-*"),
                                     "nvidia-driver-pinning-595.71.05": ("installed", None)}


def test_secure_boot_without_an_enrolled_key_is_refused_with_the_mok_steps() -> None:
    with pytest.raises(RefusedError) as e:
        plan(cfg(), state(secure_boot=True, mok=None))
    text = str(e.value)
    assert "UEFI Secure Boot is on and DKMS's signing key is not created yet" in text
    assert "openssl req -new -x509" in text and "mokutil --import /var/lib/dkms/mok.pub" in text
    assert "Enroll MOK" in text and "mokutil --test-key /var/lib/dkms/mok.pub" in text
    with pytest.raises(RefusedError, match="is not enrolled"):
        plan(cfg(), state(secure_boot=True, mok=False))
    assert plan(cfg(), state(secure_boot=True, mok=True)).target == "595.71.05"
    assert plan(cfg(), state(secure_boot=None)).target == "595.71.05"  # cannot tell: not refused


def test_kernels_come_from_packages_not_leftover_directories() -> None:
    st = state(kernels=("6.8.12-4-pve",), packaged=("6.8.12-4-pve",), dirs=("6.99.0-1-pve",),
               candidates={"6.8.12-4-pve": "6.8.12-4", "6.99.0-1-pve": None})
    hp = plan(cfg(), st)
    assert st.build_kernels == ["6.8.12-4-pve"]
    assert any("/lib/modules/6.99.0-1-pve is left from a removed kernel" in n for n in hp.notes)
    fresh = state(installed=None, loaded=None)
    fresh.pkgs.packages.pop("proxmox-default-headers", None)
    assert ("install", "kernel headers and dkms (dkms, proxmox-default-headers)") in [
        (c.action, c.summary) for c in plan(cfg(), fresh).changes]


def test_off_unless_asked() -> None:
    hf = HostFile.model_validate(BASE)
    assert hf.host.driver.manage is False
    hp = plan(hf, state())
    assert hp.changes == [] and "never changes the host's driver" in hp.notes[0]


@pytest.mark.parametrize("driver,msg", [
    ({"manage": True}, "needs a version"),
    ({"manage": True, "version": "595"}, "pattern"),
    ({"manage": True, "version": "latest-595", "flavour": "closed"}, "open"),
])
def test_config_errors(driver: dict, msg: str) -> None:
    with pytest.raises(Exception, match=msg):
        HostFile.model_validate({**BASE, "host": {"driver": driver}})


def test_facts_parse() -> None:
    out = ("os debian 12\npkg nvidia-kernel-open-dkms 580.95.05-1 hi \npkg libcuda1 580.95.05-1 ii \n"
           "pkg nvidia-driver-pinning-580.95.05 1.0-2 ii \npkg proxmox-headers-6.8.12-4-pve 6.8.12-4 ii \n"
           "avail 580.95.05-1\navail 595.71.05-1\nkeyring 1\nboot_id abc\nheaders 6.8.12-4-pve 6.8.12-4\n"
           "headers 6.14.8-2-pve (none)\nctlib 120 580.95.05\nctcuda 120 13.0\nstate previous 570.1\n")
    pk = parse(out, 0)
    assert pk.distro == "debian12" and pk.driver == ("580.95.05", "open") and pk.packages[
        "nvidia-kernel-open-dkms"].held
    assert pk.repo == {"580.95.05": "580.95.05-1", "595.71.05": "595.71.05-1"} and pk.pinning == [
        "nvidia-driver-pinning-580.95.05"]
    assert pk.headers("6.8.12-4-pve") and pk.headers_candidate == {"6.8.12-4-pve": "6.8.12-4", "6.14.8-2-pve": None}
    assert pk.cts[120] == CtUserspace(["580.95.05"], ["13.0"]) and pk.state == {"previous": "570.1"}
    sb = parse("os debian 12\nsb SecureBoot enabled \nmok /var/lib/dkms/mok.pub is not enrolled\n"
               "pinidx nvidia-driver-pinning-580\npinidx nvidia-driver-pinning-580.105.08\nhostpin \n", 0)
    assert (sb.secure_boot, sb.mok_enrolled, sb.pin_sha256) == (True, False, None)
    assert sb.pinning_index == ["nvidia-driver-pinning-580", "nvidia-driver-pinning-580.105.08"]
    assert parse("sb SecureBoot enabled SecureBoot validation is disabled in shim \nmok missing\n", 0).secure_boot \
        is False
    assert parse("sb efivar 1\nmok missing\n", 0).secure_boot is True
    assert parse("sb EFI variables are not supported on this system \n", 0).secure_boot is False


@pytest.mark.parametrize("a,b,want", [("580.95.05-1", "595.71.05-1", -1), ("580.105.08-1", "580.95.05-1", 1),
                                      ("1.0~rc1", "1.0", -1), ("1:0.1", "2.0", 1), ("3.0.10-8+deb12u1", "3.2.0-1sim", -1),
                                      ("1.0-1", "1.0-1", 0)])
def test_dpkg_version_order(a: str, b: str, want: int) -> None:
    assert vercmp(a, b) == want
