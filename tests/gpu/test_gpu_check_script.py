"""bench/gpu_check.sh, the prepared check for a lent GPU machine: it parses, and its Python half
(the product's fact parsers against independent readings, the build spec, the SASS list) works on
readings in the formats NVIDIA's tools print. These readings are written here by hand after those
formats (no NVIDIA GPU on this machine); the script keeps the real machine's in $OUT/raw/."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

NVSMI_Q = """
==============NVSMI LOG==============

Timestamp                                 : Thu Dec  3 17:00:00 2026
Driver Version                            : 580.95.05
CUDA Version                              : 13.0

Attached GPUs                             : 1
GPU 00000000:19:00.0
    Product Name                          : NVIDIA H200
    Product Brand                         : NVIDIA
    PCI
        Bus                               : 0x19
        Device                            : 0x00
        Domain                            : 0x0000
        Device Id                         : 0x233510DE
        Bus Id                            : 00000000:19:00.0
    FB Memory Usage
        Total                             : 143771 MiB
        Reserved                          : 0 MiB
        Used                              : 1 MiB
        Free                              : 143769 MiB
"""
PROC = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Sep 23 09:56:28 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


def readings(d: Path, *, sys_version: str = "580.95.05", memory: str = "143771") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    files = {"driver.txt": f"sys={sys_version}\nproc={PROC.splitlines()[0]}\n",
             "gpus.txt": f"0, NVIDIA H200, 9.0, {memory}, 00000000:19:00.0\n#minor 0000:19:00.0 0\n",
             "nvidia-smi-q.txt": NVSMI_Q, "proc-version.txt": PROC, "sys-version.txt": f"{sys_version}\n",
             "pci.txt": "0000:19:00.0 0x2335\n"}
    for name, text in files.items():
        (d / name).write_text(text)
        (d / (name + ".rc")).write_text("0\n")
    return d


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)


def test_every_fact_matches_on_consistent_readings(tmp_path: Path) -> None:
    result = gpu_check.facts(readings(tmp_path))
    assert result["ok"], [c for c in result["checks"] if not c["match"]]
    assert result["compute_caps"] == ["9.0"] and result["driver"] == "580.95.05" and result["flavour"] == "open"
    assert len(result["checks"]) == 8


def test_a_wrong_parse_is_a_mismatch(tmp_path: Path) -> None:
    # the product's GPU query says 80 GB where nvidia-smi -q says 141 GB: reported, not hidden
    result = gpu_check.facts(readings(tmp_path, memory="81559"))
    assert not result["ok"]
    assert [c["fact"] for c in result["checks"] if not c["match"]] == ["GPU 0 memory MiB"]


def test_sass_list() -> None:
    out = ("ELF file    1: libggml-cuda.1.sm_90.cubin\nELF file    2: libggml-cuda.2.sm_90.cubin\n"
           "ELF file    3: libggml-cuda.3.sm_90a.cubin\n")
    assert gpu_check.sass(out) == ["sm_90", "sm_90a"]
    assert gpu_check.sass("ELF file    1: libggml-cuda.1.sm_90.cubin\n") == ["sm_90"]


def test_build_uses_the_products_spec_for_the_detected_architecture(tmp_path: Path) -> None:
    tar = tmp_path / "llama.cpp.tar.gz"
    tar.write_bytes(b"a tree")
    info = gpu_check.build(tmp_path / "b", tar, "9.0", "13.0", ["-DGGML_CUDA_FA=OFF"])
    assert info["architectures"] == ["90-real"]
    configure = (tmp_path / "b" / "configure.sh").read_text()
    assert "-DCMAKE_CUDA_ARCHITECTURES=90-real" in configure and "-DCUDAToolkit_ROOT=/usr/local/cuda-13.0" in configure
    assert configure.split("\n")[1].endswith("-DGGML_CUDA_FA=OFF")
    subprocess.run(["bash", "-n", str(tmp_path / "b" / "build.sh")], check=True)
    assert info["tarball_path"].startswith("/var/cache/provision/llama.cpp/src/tar-")
