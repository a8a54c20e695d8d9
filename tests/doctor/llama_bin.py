"""A real CPU llama-server for doctor's service tests, built once on this machine and cached.

Built from the pinned llama.cpp tree (``sim.assets.llama_source``) as one static binary, so it
can be pushed into a container of the same Debian release. This stands in for the llama step's
in-container build (minutes of CPU) only to give the services something real to run.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from provisioner.sim import assets

CACHE = assets.CACHE.parent / "doctor-llama"
BINARY = CACHE / "llama.cpp" / "build" / "bin" / "llama-server"


def llama_server() -> Path:
    """The cached binary; builds it (≈5–10 min on 2 cores) when missing. Fails loudly on error."""
    if BINARY.exists() and (CACHE / "llama.cpp" / "build" / "CMakeCache.txt").read_text().count(
            "GGML_NATIVE:BOOL=OFF"):
        return BINARY
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / "llama.cpp"
    if not (src / "CMakeLists.txt").exists():
        with tarfile.open(assets.llama_source()) as tar:
            tar.extractall(CACHE, filter="data")
    # Not GGML_NATIVE: this VM's CPU advertises AMX, -march=native turns on ggml's AMX kernels, and
    # they crash (SIGSEGV in ggml_backend_amx_mul_mat at the first decode). Plain AVX2 instead.
    configure = ["cmake", "-S", str(src), "-B", str(src / "build"), "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF",
                 "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
                 "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
                 "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["nice", "-n", "19", "cmake", "--build", str(src / "build"), "--config", "Release", "-j2",
                    "-t", "llama-server"], check=True, capture_output=True)
    assert BINARY.exists(), f"the build finished without {BINARY}"
    return BINARY
