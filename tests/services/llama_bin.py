"""A static CPU llama-server for the services tests, built once on this machine and cached.

The services module tests units, health and restarts, not the llama.cpp build (the
GPU step has its own tests for that), so it installs this binary into the CT in the
layout the llama step produces (``/opt/provision/llama.cpp/builds/<id>/bin`` plus a
``current`` link) instead of compiling inside every fresh container. Static, without
OpenMP/OpenSSL, so it runs in the minimal Debian 12 container as it is.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tarfile
from pathlib import Path

from provisioner.sim import assets

CACHE = assets.CACHE.parent / "services-llama"
FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
         "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]


def llama_server() -> Path:
    """The cached binary (builds it the first time: minutes on 2 cores)."""
    out = CACHE / "llama-server"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        src = CACHE / "src"
        if not (src / "llama.cpp" / "CMakeLists.txt").exists():
            with tarfile.open(assets.llama_source()) as tar:
                tar.extractall(src, filter="data")
        top = src / "llama.cpp"
        build = CACHE / "build"
        log = CACHE / "build.log"
        with open(log, "w") as fh:
            for cmd in (["cmake", "-S", str(top), "-B", str(build), *FLAGS],
                        ["cmake", "--build", str(build), "-j2", "-t", "llama-server"]):
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"building llama-server failed; see {log}")
        built = build / "bin" / "llama-server"
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(built.read_bytes())
        tmp.chmod(0o755)
        tmp.replace(out)
    return out


def install_script(build_id: str) -> str:
    """Shell (run in the CT, the binary on stdin) laying it out like the llama step does."""
    root = "/opt/provision/llama.cpp"
    return (f"set -e; d={root}/builds/{build_id}; mkdir -p $d/bin; cat > $d/bin/llama-server; "
            f"chmod 0755 $d/bin/llama-server; echo '{{\"build\": \"{build_id}\", \"backend\": \"cpu\"}}' "
            f"> $d/BUILD-STAMP.json; ln -sfn $d {root}/current.tmp && mv -T {root}/current.tmp {root}/current")
