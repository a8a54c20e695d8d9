"""Driver userspace, CUDA toolkit and llama build planned from facts (no container needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provisioner.errors import ConfigError
from provisioner.facts.llama import LlamaBuild
from provisioner.facts.nvidia_ct import CudaPackages, DriverUserspace, Package
from provisioner.operations.cuda import CudaStep, resolve_backend
from provisioner.operations.driver import (DriverStep, forbidden_packages, pin_text, source_text)
from provisioner.operations.llama import LlamaStep, build_spec

from .planctx import RTX4090, ctx, host_facts

SRC = "/etc/apt/sources.list.d/cuda-debian12-x86_64.list"
REPO = "https://developer.download.nvidia.com/compute/cuda/repos"
PKGS = ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def userspace(version: str, *, held: bool = True, pinned_for: str | None = None,
              extra: dict[str, Package] | None = None) -> DriverUserspace:
    pkgs = {n: Package(n, f"{version}-1", True, held) for n in PKGS}
    pkgs.update(extra or {})
    return DriverUserspace("debian", "12", pkgs, pin_sha256=sha(pin_text(pinned_for or version, PKGS)),
                           sources={SRC: sha(source_text(REPO, "debian12"))}, keyring=True,
                           nvml_libs=[version], cuda_libs=[version])


def plan(facts: dict) -> list[tuple[str, str]]:
    return [(c.action, c.summary) for c in DriverStep().plan(ctx(facts))]


def test_matching_versions_plan_nothing() -> None:
    assert plan({**host_facts("580.95.05"), "ct.driver": userspace("580.95.05")}) == []


def test_host_upgrade_repins_then_moves_the_userspace() -> None:
    changes = plan({**host_facts("580.105.08"), "ct.driver": userspace("580.95.05")})
    assert changes == [("write", "pin NVIDIA driver packages to 580.105.08"),
                       ("install", "NVIDIA driver userspace 580.105.08 (libcuda.so, libcuda1, libnvidia-ml.so, "
                                   "libnvidia-ml1, nvidia-driver-cuda)")]


def test_unheld_package_is_reinstalled_and_held() -> None:
    changes = DriverStep().plan(ctx({**host_facts(), "ct.driver": userspace("580.95.05", held=False)}))
    assert [c.action for c in changes] == ["install"]
    assert changes[0].diff["libcuda1"] == ("580.95.05-1", "580.95.05 (held)")


def test_other_family_package_at_old_version_is_moved_too() -> None:
    extra = {"nvidia-persistenced": Package("nvidia-persistenced", "580.95.05-1", True, True)}
    facts = {**host_facts("590.44.01"), "ct.driver": userspace("590.44.01", extra=extra)}
    changes = DriverStep().plan(ctx(facts))
    assert changes[-1].diff == {"nvidia-persistenced": ("580.95.05-1", "590.44.01")}


def test_stale_nvidia_pinning_package_is_replaced() -> None:
    extra = {"nvidia-driver-pinning-580.95.05": Package("nvidia-driver-pinning-580.95.05", "1.0-1", True, False)}
    facts = {**host_facts("580.95.05"), "ct.driver": userspace("580.95.05", extra=extra)}
    assert plan(facts) == []  # the right one installed: fine
    facts = {**host_facts("580.105.08"), "ct.driver": userspace("580.105.08", extra=extra)}
    changes = DriverStep().plan(ctx(facts))
    assert [c.action for c in changes] == ["write"]
    assert changes[0].diff["nvidia-driver-pinning-580.95.05"] == ("installed", None)


def test_fresh_container_gets_repo_pin_install() -> None:
    assert [a for a, _ in plan({**host_facts(), "ct.driver": DriverUserspace("debian", "12")})] == \
        ["write", "write", "install"]


def test_unsupported_distribution() -> None:
    with pytest.raises(ConfigError, match="NVIDIA's repository has Debian 12 and 13 only"):
        DriverStep().plan(ctx({**host_facts(), "ct.driver": DriverUserspace("ubuntu", "24.04")}))


def test_no_gpu_no_driver() -> None:
    assert plan({**host_facts(gpus=[]), "ct.driver": DriverUserspace("debian", "12")}) == []


def test_pin_file() -> None:
    text = pin_text("580.95.05", PKGS)
    assert "Pin: version 580.95.05-*\nPin-Priority: 1001\n" in text  # any Debian revision
    assert ("Package: nvidia-* libnvidia-* libcuda* libnv* firmware-nvidia-* libegl-nvidia* libgles-nvidia* "
            "libglx-nvidia* libgl1-nvidia* xserver-xorg-video-nvidia* libxnvctrl* cuda-drivers*\n") in text


def test_family_is_decided_by_version_not_by_name() -> None:
    from provisioner.operations.driver import in_family
    assert in_family("libcudadebugger1", "580.95.05-1") and in_family("firmware-nvidia-gsp", "595.71.05-1")
    assert in_family("nvidia-kernel-support", "580.95.05-1") and in_family("libnvidia-nvvm4", "1:580.95.05-2")
    for name, version in (("nvidia-container-toolkit", "1.19.0-1"), ("libnvidia-container1", "1.19.0-1"),
                          ("libnvidia-egl-gbm1", "1.1.3-1"), ("libnvidia-egl-xcb1", "1:1.0.5-1"),
                          ("nvidia-driver-pinning-580.105.08", "580.105.08-1"), ("nvidia-driver-pinning-580", "580-5"),
                          ("cuda-keyring", "1.1-1")):
        assert not in_family(name, version), name


def test_same_prefix_packages_with_their_own_versions_converge() -> None:
    extra = {n: Package(n, v, True, False) for n, v in (
        ("nvidia-container-toolkit", "1.19.0-1"), ("nvidia-container-toolkit-base", "1.19.0-1"),
        ("libnvidia-container1", "1.19.0-1"), ("libnvidia-egl-xcb1", "1:1.0.5-1"))}
    extra["libcudadebugger1"] = Package("libcudadebugger1", "580.95.05-1", True, True)
    assert plan({**host_facts("580.95.05"), "ct.driver": userspace("580.95.05", extra=extra)}) == []
    changes = DriverStep().plan(ctx({**host_facts("580.105.08"), "ct.driver": userspace("580.105.08", extra=extra)}))
    assert changes[-1].diff == {"libcudadebugger1": ("580.95.05-1", "580.105.08")}  # only the driver's own


def test_nvidia_kernel_support_is_userspace_but_dkms_is_not() -> None:
    sim = ("Inst nvidia-kernel-support (580.95.05-1 x [amd64])\nInst nvidia-modprobe (580.95.05-1 x [amd64])\n"
           "Inst nvidia-kernel-open-dkms (580.95.05-1 x [amd64])\nInst proxmox-default-headers (1.1.0 x [all])\n"
           "Inst nvidia-kernel-source (580.95.05-1 x [amd64])\nInst linux-headers-amd64 (6.1 x [amd64])\n")
    assert forbidden_packages(sim) == ["nvidia-kernel-open-dkms", "proxmox-default-headers", "nvidia-kernel-source",
                                       "linux-headers-amd64"]


def test_forbidden_packages_in_apt_simulation() -> None:
    sim = ("Reading package lists...\nInst dkms (3.2.0-1sim provision-sim [all])\n"
           "Inst nvidia-kernel-open-dkms (580.95.05-1 provision-sim [amd64])\n"
           "Inst libcuda1 (580.95.05-1 provision-sim [amd64])\nConf dkms (3.2.0-1sim)\n")
    assert forbidden_packages(sim) == ["dkms", "nvidia-kernel-open-dkms"]
    assert forbidden_packages("Inst nvidia-driver-cuda (580.95.05-1 x [amd64])\n") == []


# -- cuda -----------------------------------------------------------------------------------------

def test_backend_auto() -> None:
    assert resolve_backend(ctx(host_facts())) == "cuda"
    assert resolve_backend(ctx(host_facts(gpus=[]))) == "cpu"
    assert resolve_backend(ctx(host_facts(), extra="gpu: {enabled: false}\n")) == "cpu"


def test_cuda_backend_without_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="llama_cpp.backend is cuda but no NVIDIA GPU"):
        resolve_backend(ctx(host_facts(gpus=[]), extra="llama_cpp: {backend: cuda}\n"))


def test_cuda_toolkit_install_then_converged() -> None:
    facts = {**host_facts("580.95.05"), "ct.cuda": CudaPackages({}, ["12.8", "13.0"])}
    changes = CudaStep().plan(ctx(facts))
    assert [c.summary for c in changes] == [
        "CUDA toolkit 13.0 (cuda-nvcc-13-0, cuda-cudart-dev-13-0, cuda-cccl-13-0, libcublas-dev-13-0); "
        "driver 580.95.05 ≥ 580.65.06, CUDA 13.0's own minimum"]
    facts["ct.cuda"] = CudaPackages({"cuda-nvcc-13-0": "13.0.88-1", "cuda-cudart-dev-13-0": "13.0.96-1",
                                     "cuda-cccl-13-0": "13.0.85-1", "libcublas-dev-13-0": "13.0.2.14-1"},
                                    ["12.8", "13.0"])
    assert CudaStep().plan(ctx(facts)) == []


def test_535_host_gets_a_12x_toolkit_by_minor_version_compatibility() -> None:
    """GTX 1080 on 535: the repository offers 12.3+ only (each needs 545+ by its own minimum)."""
    from provisioner.facts.nvidia import GpuInfo
    gtx1080 = GpuInfo(0, "NVIDIA GeForce GTX 1080", "6.1", 8192, "00000000:01:00.0", 0)
    offered = ["12.3", "12.4", "12.5", "12.6", "12.8", "12.9", "13.0", "13.1", "13.2"]
    c = ctx({**host_facts("535.247.01", [gtx1080]), "ct.cuda": CudaPackages({}, offered)})
    changes = CudaStep().plan(c)
    assert [ch.summary.split(";")[0] for ch in changes] == [
        "CUDA toolkit 12.9 (cuda-nvcc-12-9, cuda-cudart-dev-12-9, cuda-cccl-12-9, libcublas-dev-12-9)"]
    assert "minor-version compatibility: driver 535.247.01 ≥ 525.60.13" in changes[0].summary
    assert any(n.startswith("CUDA 12.9 by minor-version compatibility") for n in c.notes)


def test_cuda_override_on_pascal_refused_at_plan() -> None:
    pascal = RTX4090.__class__(0, "Tesla P40", "6.1", 24451, "00000000:03:00.0", 0)
    with pytest.raises(ConfigError, match="CUDA 13.0 and later cannot build for compute capability 6.1"):
        CudaStep().plan(ctx(host_facts("595.71.05", [pascal]), extra="cuda: {toolkit: '13.0'}\n"))


def test_cpu_backend_installs_no_toolkit() -> None:
    assert CudaStep().plan(ctx(host_facts(), extra="llama_cpp: {backend: cpu}\n")) == []


# -- llama ----------------------------------------------------------------------------------------

def test_llama_build_then_skip(tmp_path: Path) -> None:
    tar = tmp_path / "src.tar.gz"
    tar.write_bytes(b"not really a tarball")
    extra = f"llama_cpp: {{source: {{tarball: {tar}, subdir: a/b}}}}\n"
    c = ctx({**host_facts(), "ct.cuda": CudaPackages({}, ["13.0"])}, extra=extra)
    spec = build_spec(c)
    assert (spec.backend, spec.architectures, spec.toolkit) == ("cuda", ("89-real",), "13.0")
    assert spec.source == {"tarball_sha256": hashlib.sha256(b"not really a tarball").hexdigest(), "subdir": "a/b"}
    changes = LlamaStep().plan(c)
    assert [c.summary for c in changes] == ["build llama-server (cuda sm 89, CUDA 13.0)"]
    c.facts["ct.llama"] = LlamaBuild(spec.stamp(), spec.hash, True, [spec.hash])
    assert LlamaStep().plan(c) == []
    c.facts["ct.llama"] = LlamaBuild(spec.stamp(), spec.hash, False, [spec.hash])  # binary gone
    assert len(LlamaStep().plan(c)) == 1


def test_llama_missing_tarball(tmp_path: Path) -> None:
    c = ctx(host_facts(), extra=f"llama_cpp: {{source: {{tarball: {tmp_path}/nope.tar.gz}}}}\n")
    with pytest.raises(ConfigError, match="nope.tar.gz does not exist"):
        LlamaStep().plan(c)


def test_a_host_version_the_repository_lacks_is_refused_at_plan_time() -> None:
    """Issue 20 point 8: the plan promised 580.65.06, the pin matched nothing, the holds were released and
    verify failed misleadingly. Now the plan reads the repository's versions and says what to do."""
    from provisioner.errors import RefusedError
    from provisioner.facts.nvidia_ct import parse_driver_index

    offered = "known\n" + "".join(f"repo {p} {v}-1\n" for p in PKGS for v in ("580.95.05", "580.105.08", "595.71.05"))
    index = parse_driver_index(offered, 0)
    facts = {**host_facts("580.65.06"), "ct.driver": userspace("580.95.05"), "ct.driver_index": index}
    with pytest.raises(RefusedError) as err:
        DriverStep().plan(ctx(facts))
    text = str(err.value)
    assert "has no nvidia-driver-cuda, libcuda1, libnvidia-ml1 580.65.06, the host's loaded driver" in text
    assert "it has 580.95.05, 580.105.08, 595.71.05" in text
    assert 'host.driver.version: "580.105.08"' in text and "the container was not touched" in text
    # a version it has, or an index that could not be read: planned as before
    ok = {**facts, **host_facts("580.105.08")}
    assert [c.action for c in DriverStep().plan(ctx(ok))] == ["write", "install"]
    unknown = {**facts, "ct.driver_index": parse_driver_index("index_error 404 Not Found\n", 0)}
    assert [c.action for c in DriverStep().plan(ctx(unknown))] == ["write", "install"]


def test_doctor_does_not_offer_a_fix_that_cannot_work() -> None:
    from provisioner.doctor.checks_driver import check_userspace
    from provisioner.doctor.context import Access, DoctorContext
    from provisioner.facts.nvidia_ct import parse_driver_index

    index = parse_driver_index("known\n" + "".join(f"repo {p} 580.95.05-1\n" for p in PKGS), 0)
    plan_ctx = ctx({**host_facts("580.65.06"), "ct.driver": userspace("580.95.05"), "ct.driver_index": index})
    d = DoctorContext(cfg=plan_ctx.cfg, access=Access("token", "root@pam!x", "ssh", api_checked=True,
                                                      ssh_checked=True), plan=plan_ctx, vmid=120)
    (f,) = check_userspace(d)
    assert f.status == "fail" and not f.fixable and "re-pin" not in f.fix
    assert "provision host" in f.fix and "has no nvidia-driver-cuda" in f.detail
