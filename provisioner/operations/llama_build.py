"""What a llama.cpp build is: its spec and stamp, the exact CMake configure line, the
build script, and the dependencies per backend. Pure functions; ``llama.py`` runs them.

Layout in the container:

| path | what |
| --- | --- |
| ``/opt/provision/llama.cpp/builds/<hash>/bin/`` | ``llama-server`` and its shared libs (RPATH ``$ORIGIN``) |
| ``/opt/provision/llama.cpp/builds/<hash>/BUILD-STAMP.json`` | the spec this build came from |
| ``/opt/provision/llama.cpp/current`` | symlink to the serving build, flipped by rename |
| ``/var/cache/provision/llama.cpp/{src,build}/`` | sources and CMake build trees (kept: ccache + retries) |
| ``/var/cache/provision/ccache`` | ``CCACHE_DIR`` |
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

from ..templating import render
from .apt import prelude as apt_prelude

ROOT = "/opt/provision/llama.cpp"
BUILDS = f"{ROOT}/builds"
CURRENT = f"{ROOT}/current"
STAMP_NAME = "BUILD-STAMP.json"
CACHE = "/var/cache/provision/llama.cpp"
CCACHE_DIR = "/var/cache/provision/ccache"
STAMP_VERSION = 1

COMMON_DEPS = ["build-essential", "cmake", "ccache", "libssl-dev", "git", "ca-certificates"]
BACKEND_DEPS = {"cpu": [], "cuda": [], "vulkan": ["libvulkan-dev", "glslc", "spirv-headers"],
                "rocm": ["hipcc", "libhipblas-dev", "librocblas-dev"]}


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides the binary. Same spec → same hash → no rebuild."""

    backend: str
    #: {"git": url, "ref": ref} or {"tarball_sha256": sha, "subdir": path or None}
    source: dict[str, str | None]
    architectures: tuple[str, ...] = ()
    toolkit: str | None = None
    rocm_targets: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def stamp(self) -> dict[str, object]:
        body: dict[str, object] = {
            "stamp_version": STAMP_VERSION, "backend": self.backend, "source": dict(self.source),
            "architectures": list(self.architectures), "toolkit": self.toolkit,
            "rocm_targets": list(self.rocm_targets), "flags": list(self.flags),
        }
        body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body

    @property
    def hash(self) -> str:
        return str(self.stamp()["hash"])

    @property
    def source_key(self) -> str:
        """Directory name of the unpacked source (tarball sha or git ref)."""
        if self.source.get("tarball_sha256"):
            return f"tar-{str(self.source['tarball_sha256'])[:16]}"
        ref = str(self.source.get("ref", "")).replace("/", "_")
        url_hash = hashlib.sha256(str(self.source.get("git", "")).encode()).hexdigest()[:8]
        return f"git-{url_hash}-{ref}"


def toolkit_root(toolkit: str) -> str:
    """Where NVIDIA's ``cuda-*-X-Y`` packages put toolkit X.Y."""
    return f"/usr/local/cuda-{toolkit}"


def configure_args(spec: BuildSpec, src: str, build: str) -> list[str]:
    """The whole ``cmake`` configure command line, as argv."""
    rpath = "$ORIGIN"
    if spec.backend == "cuda" and spec.toolkit:
        # cudart and cuBLAS of *this* toolkit at run time: every toolkit's libcudart.so.12 has the same
        # soname, and ld.so.conf lists them in no order we control
        rpath += f";{toolkit_root(spec.toolkit)}/lib64"
    args = [
        "cmake", "-S", src, "-B", build,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
        # shared libs next to the binary, found through $ORIGIN: the build dir can be copied as is
        "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", f"-DCMAKE_INSTALL_RPATH={rpath}",
        # the build runs in the container that runs the server: native CPU code is right here
        "-DGGML_NATIVE=ON",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
        # an API server for agents: no web UI download from the network at configure time
        "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=ON",
    ]
    if spec.backend == "cuda":
        if not spec.toolkit or not spec.architectures:
            raise ValueError("a CUDA build needs a toolkit and at least one architecture")
        root = toolkit_root(spec.toolkit)
        # CUDAToolkit_ROOT: CMake 3.25's FindCUDAToolkit uses the CUDA compiler's directory only once
        # the CUDA language is enabled (Modules/FindCUDAToolkit.cmake at v3.25.3 5709a7e5, lines 21-44
        # and 628-641), and llama.cpp calls find_package(CUDAToolkit) before enable_language(CUDA)
        # (b11312 ggml/src/ggml-cuda/CMakeLists.txt:16 and :72). Without it the search falls through to
        # nvcc on PATH, then the /usr/local/cuda symlink, i.e. the *newest* toolkit's headers, cudart
        # and cuBLAS next to this toolkit's nvcc.
        args += ["-DGGML_CUDA=ON", f"-DCUDAToolkit_ROOT={root}", f"-DCMAKE_CUDA_COMPILER={root}/bin/nvcc",
                 # never unset: unset means "native" (fails without a visible GPU) or a long list
                 f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(spec.architectures)}",
                 "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
    elif spec.backend == "vulkan":
        args += ["-DGGML_VULKAN=ON"]
    elif spec.backend == "rocm":
        if not spec.rocm_targets:
            raise ValueError("a ROCm build needs llama_cpp.rocm_targets (e.g. gfx1100)")
        args += ["-DGGML_HIP=ON", f"-DGPU_TARGETS={';'.join(spec.rocm_targets)}"]
    elif spec.backend != "cpu":
        raise ValueError(f"unknown backend {spec.backend}")
    return args + list(spec.flags)


def configure_command(spec: BuildSpec, src: str, build: str) -> str:
    """The configure line as the build script runs it (shell-quoted)."""
    return shlex.join(configure_args(spec, src, build))


def build_command(build: str) -> str:
    """Only the server target, all cores."""
    return f"cmake --build {shlex.quote(build)} --config Release -t llama-server -j \"$(nproc)\""


def build_deps(backend: str) -> list[str]:
    return COMMON_DEPS + BACKEND_DEPS.get(backend, [])


def tarball_path(spec: BuildSpec) -> str:
    return f"{CACHE}/src/{spec.source_key}.tar.gz"


def build_number(ref: str) -> str | None:
    """llama.cpp's build number for a release tag: ``b11312`` → ``11312`` (its tags are ``b<number>``,
    the number being ``git rev-list --count HEAD``: b11312 cmake/build-info.cmake:27-41); None for
    other refs (the build script then counts the commits of a history fetched without blobs)."""
    return ref[1:] if len(ref) > 1 and ref[0] == "b" and ref[1:].isdigit() else None


def _install_vars(spec: BuildSpec, keep_builds: int) -> dict[str, object]:
    """What ``build/llama-install.sh.j2`` (verify, move into place, flip ``current``) needs."""
    return dict(builds=BUILDS, root=ROOT, hash=spec.hash, stamp_name=STAMP_NAME, keep=keep_builds,
                cuda=spec.backend == "cuda", q=shlex.quote,
                cuda_lib=f"{toolkit_root(spec.toolkit)}/" if spec.backend == "cuda" and spec.toolkit else "",
                apt_prelude=apt_prelude())


def build_script(spec: BuildSpec, *, keep_builds: int) -> str:
    """The bash script that prepares the source, builds, installs atomically and flips ``current``."""
    src = f"{CACHE}/src/{spec.source_key}"
    build = f"{CACHE}/build/{spec.hash}"
    subdir = spec.source.get("subdir") or ""
    git_ref = spec.source.get("ref") or ""
    return render(
        "build/llama-build.sh.j2",
        deps=" ".join(build_deps(spec.backend)), ccache_dir=CCACHE_DIR, src=src, build=build,
        tarball=tarball_path(spec) if spec.source.get("tarball_sha256") else "",
        subdir=subdir, strip=len(subdir.split("/")) if subdir else 0,
        git_url=spec.source.get("git") or "", git_ref=git_ref,
        build_number=build_number(git_ref) if git_ref else None,
        configure=configure_command(spec, src, build), build_cmd=build_command(build),
        stamp=json.dumps(spec.stamp(), sort_keys=True), **_install_vars(spec, keep_builds))


def from_cache_script(spec: BuildSpec, *, key: str, runtime: list[str], keep_builds: int) -> str:
    """The bash script that checks and installs a build the host unpacked into ``builds/<hash>.tmp``:
    the runtime packages it links first, then the same checks and ``current`` flip as a fresh build."""
    return render("build/llama-from-cache.sh.j2", key=key, runtime=" ".join(shlex.quote(p) for p in runtime),
                  **_install_vars(spec, keep_builds))
