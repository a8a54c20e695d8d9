"""Driver and CUDA checks on recorded facts."""

from __future__ import annotations

import json

from provisioner.doctor import checks_cuda as cu
from provisioner.doctor import checks_driver as cd
from provisioner.doctor.fixes import plan_fixes

from .recorded_ctx import VMID, config, context, one, raw

HOST_UPGRADED = {"nvidia.driver": raw("nvidia.driver").replace("580.95.05", "580.105.08"),
                 "doctor.ct_smi": "Failed to initialize NVML: Driver/library version mismatch\n"
                                  "NVML library version: 580.95\nrc=18"}


def test_recorded_driver_is_healthy():
    d = context()
    for check in cd.CHECKS:
        assert [f.status for f in check(d)] == ["ok"]


def test_host_driver_upgraded_mismatch_in_plain_words():
    d = context(raw=HOST_UPGRADED)
    f = one(cd.check_userspace(d), "driver.userspace")
    assert f.status == "fail" and f.fixable
    assert f.title == ("container userspace does not match the host module 580.105.08 "
                       "(libnvidia-ml.so.580.95.05; libcuda.so.580.95.05)")
    assert "the container's NVIDIA libraries are 580.95, the host's kernel module is 580.105.08" in f.detail
    assert "Driver/library version mismatch" in f.evidence.output
    assert f.fix.startswith("doctor --fix (or `provision up`): re-pin to 580.105.08")
    fixes = plan_fixes(d, [f])
    # (the recorded repository URL differs from this config's, so the source is rewritten too)
    assert [x.summary for x in fixes][-2:] == ["driver: pin NVIDIA driver packages to 580.105.08",
                                         "driver: NVIDIA driver userspace 580.105.08 (libcuda.so, libcuda1, "
                                         "libcudadebugger1, libnvidia-ml.so, libnvidia-ml1, libnvidia-nvvm4, "
                                         "libnvidia-ptxjitcompiler1, nvidia-driver-cuda, nvidia-kernel-support, "
                                         "nvidia-modprobe)"]


def test_pin_is_stale_after_a_host_upgrade():
    f = one(cd.check_pins(context(raw=HOST_UPGRADED)), "driver.pins")
    assert f.status == "warn" and f.fixable and "not for 580.105.08" in f.title


def test_holds_released():
    text = raw("ct.driver").replace(" hi ", " ii ")
    f = one(cd.check_pins(context(raw={"ct.driver": text})), "driver.pins")
    assert f.status == "warn" and "not held: nvidia-driver-cuda, libcuda1, libnvidia-ml1" in f.title


def test_nvidia_smi_cannot_reach_the_driver():
    smi = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
           "latest NVIDIA driver is installed and running.\n\nrc=9")
    f = one(cd.check_userspace(context(raw={"doctor.ct_smi": smi})), "driver.userspace")
    assert f.status == "fail" and not f.fixable and "exit 9" in f.title and "/dev/nvidiactl" in f.detail


def test_nvidia_smi_not_installed():
    f = one(cd.check_userspace(context(raw={"doctor.ct_smi": "missing"})), "driver.userspace")
    assert f.status == "fail" and f.fixable and "not installed" in f.title


def test_dkms_in_the_container():
    pkgs = "pkg dkms 3.2.0-1sim ii \npkg nvidia-kernel-open-dkms 580.95.05-1 ii \n"
    f = one(cd.check_no_kernel_packages(context(raw={"doctor.ct_pkgs": pkgs})), "driver.no_kernel_packages")
    assert f.status == "fail" and not f.fixable
    assert f.fix.startswith(f"pct exec {VMID} -- apt-get purge -y dkms nvidia-kernel-open-dkms")
    assert "ii  dkms 3.2.0-1sim" in f.evidence.output


def test_no_ct_facts_when_stopped():
    d = context(status="stopped")
    assert all(check(d) == [] for check in cd.CHECKS + cu.CHECKS)


# -- CUDA -------------------------------------------------------------------------------------------

STAMP = {"stamp_version": 1, "backend": "cuda", "source": {"git": "x", "ref": "b11312"}, "architectures": ["89"],
         "toolkit": "13.0", "rocm_targets": [], "flags": [], "hash": "0123456789abcdef"}
LDD = ("binary 1\n"
       "ldd \tlinux-vdso.so.1 (0x00007ffd)\n"
       "ldd \tlibcudart.so.13 => /usr/local/cuda-13.0/lib64/libcudart.so.13 (0x00007f1)\n"
       "ldd \tlibcublas.so.13 => /usr/local/cuda-13.0/lib64/libcublas.so.13 (0x00007f2)\n"
       "ldd \tlibcuda.so.1 => /usr/lib/x86_64-linux-gnu/libcuda.so.1 (0x00007f3)\n")
TOOLKIT = ("pkg cuda-nvcc-13-0 13.0.88-1 ii \npkg cuda-cudart-dev-13-0 13.0.96-1 ii \n"
           "pkg cuda-cccl-13-0 13.0.85-1 ii \npkg libcublas-dev-13-0 13.0.2.14-1 ii \navail cuda-nvcc-12-8\navail cuda-nvcc-13-0\n")


def cuda_ctx(stamp=STAMP, ldd=LDD, toolkit=TOOLKIT, **raw_extra):
    raw_map = {"ct.llama": f"stamp {json.dumps(stamp)}\ncurrent {stamp.get('hash')}\nbinary 1\n",
               "doctor.ct_llama": ldd, "ct.cuda": toolkit, **raw_extra}
    return context(cfg=config(llama_cpp={"backend": "auto"}), raw=raw_map)


def test_cuda_healthy():
    d = cuda_ctx()
    assert {f.id: f.status for check in cu.CHECKS for f in check(d)} == {
        "cuda.toolkit": "ok", "cuda.links": "ok", "cuda.archs": "ok"}
    assert one(cu.check_toolkit(d), "cuda.toolkit").title == \
        "CUDA 13.0 fits driver 580.95.05 and compute capability 8.9"


def test_toolkit_not_installed():
    f = one(cu.check_toolkit(cuda_ctx(toolkit="avail cuda-nvcc-13-0\n")), "cuda.toolkit")
    assert f.status == "warn" and "CUDA 13.0" in f.title and "provision up" in f.fix


def test_build_toolkit_too_new_for_a_downgraded_driver():
    d = cuda_ctx(**{"nvidia.driver": raw("nvidia.driver").replace("580.95.05", "575.57.08")})
    f = one(cu.check_toolkit(d), "cuda.toolkit")
    assert f.status == "fail" and "built with CUDA 13.0, which needs driver ≥ 580.65.06" in f.title
    assert "rebuilds with CUDA 12.8" in f.fix


def test_toolkit_impossible_for_the_gpu():
    gpus = raw("nvidia.gpus").replace("NVIDIA GeForce RTX 4090, 8.9", "Tesla P40, 6.1")
    d = cuda_ctx(stamp={**STAMP, "architectures": ["61"]}, **{"nvidia.gpus": gpus},
                 **{"ct.cuda": "avail cuda-nvcc-13-0\n"})
    f = one(cu.check_toolkit(d), "cuda.toolkit")
    assert f.status == "fail" and "no CUDA toolkit fits driver 580.95.05" in f.title


def test_llama_server_missing_a_library():
    ldd = LDD.replace("/usr/local/cuda-13.0/lib64/libcublas.so.13 (0x00007f2)", "not found")
    f = one(cu.check_links(cuda_ctx(ldd=ldd)), "cuda.links")
    assert f.status == "fail" and "cannot load libcublas.so.13" in f.title


def test_llama_server_built_without_cuda():
    ldd = "binary 1\nldd \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"
    f = one(cu.check_links(cuda_ctx(ldd=ldd)), "cuda.links")
    assert f.status == "fail" and "does not link the CUDA libraries" in f.title and "GGML_CUDA=ON" in f.fix


def test_built_for_the_wrong_architecture():
    f = one(cu.check_archs(cuda_ctx(stamp={**STAMP, "architectures": ["86"]})), "cuda.archs")
    assert f.status == "fail" and f.title == "llama-server was not built for sm_89"
    assert "CMAKE_CUDA_ARCHITECTURES=89" in f.fix and "no kernel image" in f.detail


def test_blackwell_arch_suffix_matches():
    gpus = raw("nvidia.gpus").replace("NVIDIA GeForce RTX 4090, 8.9", "NVIDIA GeForce RTX 5090, 12.0")
    d = cuda_ctx(stamp={**STAMP, "architectures": ["120a"]}, **{"nvidia.gpus": gpus})
    assert one(cu.check_archs(d), "cuda.archs").status == "ok"


def test_cpu_build_when_a_gpu_is_there():
    f = one(cu.check_archs(cuda_ctx(stamp={**STAMP, "backend": "cpu", "architectures": []})), "cuda.archs")
    assert f.status == "fail" and "built for cpu" in f.title


def test_cpu_backend_only_checks_the_binary():
    d = context(raw={"doctor.ct_llama": "binary 1\nldd \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"})
    assert cu.check_toolkit(d) == [] and cu.check_archs(d) == []
    assert one(cu.check_links(d), "cuda.links").status == "ok"
