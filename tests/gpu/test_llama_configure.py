"""The exact CMake configure line per backend (whole command lines), the stamp, and a real
CUDA configure of the llama.cpp tree from the llama-cpp-python sdist on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner.operations.llama_build import BuildSpec, build_script, configure_args, configure_command
from provisioner.sim import assets

SRC, BUILD = "/src", "/build"
COMMON = ("cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER_LAUNCHER=ccache "
          "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "
          "'-DCMAKE_INSTALL_RPATH=$ORIGIN' -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
          "-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
          "-DLLAMA_OPENSSL=ON")
TAR = {"tarball_sha256": "ab" * 32, "subdir": "llama_cpp_python-0.3.36/vendor/llama.cpp"}


def test_cpu_line() -> None:
    spec = BuildSpec(backend="cpu", source=TAR)
    assert configure_command(spec, SRC, BUILD) == COMMON


def cuda_common(toolkit: str) -> str:
    """The common line of a CUDA build: the toolkit's lib64 joins $ORIGIN in the RPATH."""
    return COMMON.replace("'-DCMAKE_INSTALL_RPATH=$ORIGIN'",
                          f"'-DCMAKE_INSTALL_RPATH=$ORIGIN;/usr/local/cuda-{toolkit}/lib64'")


def test_cuda_line_single_arch() -> None:
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89-real",), toolkit="13.0")
    assert configure_command(spec, SRC, BUILD) == cuda_common("13.0") + (
        " -DGGML_CUDA=ON -DCUDAToolkit_ROOT=/usr/local/cuda-13.0 -DCMAKE_CUDA_COMPILER=/usr/local/cuda-13.0/bin/nvcc"
        " -DCMAKE_CUDA_ARCHITECTURES=89-real -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache")


def test_cuda_line_mixed_arches_and_user_flags() -> None:
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89-real", "120a-real"), toolkit="12.9",
                     flags=("-DGGML_CUDA_FA_ALL_QUANTS=ON",))
    assert configure_command(spec, SRC, BUILD) == cuda_common("12.9") + (
        " -DGGML_CUDA=ON -DCUDAToolkit_ROOT=/usr/local/cuda-12.9 -DCMAKE_CUDA_COMPILER=/usr/local/cuda-12.9/bin/nvcc"
        " '-DCMAKE_CUDA_ARCHITECTURES=89-real;120a-real' -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"
        " -DGGML_CUDA_FA_ALL_QUANTS=ON")


def test_vulkan_line() -> None:
    assert configure_command(BuildSpec(backend="vulkan", source=TAR), SRC, BUILD) == COMMON + " -DGGML_VULKAN=ON"


def test_rocm_line() -> None:
    spec = BuildSpec(backend="rocm", source=TAR, rocm_targets=("gfx1100", "gfx1030"))
    assert configure_command(spec, SRC, BUILD) == COMMON + " -DGGML_HIP=ON '-DGPU_TARGETS=gfx1100;gfx1030'"


def test_cuda_without_arch_is_a_bug() -> None:
    with pytest.raises(ValueError, match="needs a toolkit and at least one architecture"):
        configure_args(BuildSpec(backend="cuda", source=TAR, toolkit="13.0"), SRC, BUILD)


def test_stamp_hash_changes_with_what_matters() -> None:
    base = BuildSpec(backend="cuda", source=TAR, architectures=("89",), toolkit="13.0")
    same = BuildSpec(backend="cuda", source=dict(TAR), architectures=("89",), toolkit="13.0")
    assert base.hash == same.hash and len(base.hash) == 16
    others = [BuildSpec(backend="cuda", source=TAR, architectures=("86",), toolkit="13.0"),
              BuildSpec(backend="cuda", source=TAR, architectures=("89",), toolkit="12.9"),
              BuildSpec(backend="cpu", source=TAR),
              BuildSpec(backend="cuda", source={**TAR, "tarball_sha256": "cd" * 32}, architectures=("89",),
                        toolkit="13.0"),
              BuildSpec(backend="cuda", source=TAR, architectures=("89",), toolkit="13.0", flags=("-DX=1",))]
    assert len({base.hash, *(o.hash for o in others)}) == 6
    assert base.stamp()["architectures"] == ["89"]


def test_build_script_builds_only_the_server_and_flips_current() -> None:
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89",), toolkit="13.0")
    script = build_script(spec, keep_builds=2)
    assert "-t llama-server -j \"$(nproc)\"" in script
    assert "--strip-components=3 llama_cpp_python-0.3.36/vendor/llama.cpp" in script
    assert f"ln -sfn builds/{spec.hash} /opt/provision/llama.cpp/current.tmp" in script
    assert "mv -T /opt/provision/llama.cpp/current.tmp /opt/provision/llama.cpp/current" in script
    assert "grep -E 'libcublas\\.so[^ ]* => /usr/local/cuda-13.0/' -q" in script
    assert "grep -q '=> not found'" in script
    assert "export CCACHE_DIR=/var/cache/provision/ccache" in script
    bash = shutil.which("bash")
    assert bash and subprocess.run([bash, "-n"], input=script.encode()).returncode == 0


# -- real configure -------------------------------------------------------------------------------

def _tree(tmp: Path) -> Path:
    sdist = assets.llama_sdist()
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(assets.LLAMA_SUBDIR + "/")]
        tf.extractall(tmp, members=members, filter="data")
    return tmp / assets.LLAMA_SUBDIR


def _cublas() -> tuple[Path, Path]:
    """cuBLAS from NVIDIA's PyPI wheel (this machine's /usr/local/cuda has nvcc and cudart only)."""
    root = assets.cublas_root()
    return root / "lib", root / "include"


def _decoy_toolkit(tmp: Path) -> Path:
    """A second toolkit ahead on PATH, as /usr/local/cuda (the newest toolkit) is on real hosts: a copy of
    nvcc (it derives TOP from its own directory) with every other file linked to the real 13.0 tree."""
    real = Path("/usr/local/cuda-13.0")
    decoy = tmp / "cuda-decoy"
    (decoy / "bin").mkdir(parents=True)
    for f in (real / "bin").iterdir():
        if f.name in ("nvcc", "nvcc.profile"):
            shutil.copy2(f, decoy / "bin" / f.name)
        else:
            (decoy / "bin" / f.name).symlink_to(f)
    for f in real.iterdir():
        if f.name != "bin":
            (decoy / f.name).symlink_to(f)
    return decoy


def _configure(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    lib, inc = _cublas()
    # This machine's toolkit lacks two files the container gets from packages: cuBLAS
    # (libcublas-dev-13-0; here from NVIDIA's PyPI wheel) and the driver stub libcuda.so
    # (cuda-driver-dev-13-0, a dependency of cuda-cudart-dev-13-0; here an empty stand-in,
    # enough for a configure, which only records the path).
    stub = tmp_path / "stubs/libcuda.so"
    stub.parent.mkdir()
    subprocess.run(["cc", "-shared", "-o", str(stub), "-x", "c", "/dev/null"], check=True)
    args = args + [f"-DCUDA_cublas_LIBRARY={lib}/libcublas.so", f"-DCUDA_cublasLt_LIBRARY={lib}/libcublasLt.so",
                   f"-DCUDA_cuda_driver_LIBRARY={stub}"]
    decoy = _decoy_toolkit(tmp_path)
    env = dict(os.environ, CCACHE_DIR=str(tmp_path / "ccache"), CPATH=str(inc),
               PATH=f"{decoy}/bin:{os.environ['PATH']}")
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cache = (tmp_path / "build/CMakeCache.txt").read_text()
    values = {ln.split(":", 1)[0]: ln.split("=", 1)[1] for ln in cache.splitlines()
              if ":" in ln and "=" in ln and not ln.startswith(("#", "//"))}
    return out, values


def test_real_cuda_configure_for_sm89(tmp_path: Path) -> None:
    """Configure (no build) the real tree with our exact line and nvcc 13.0 for arch 89."""
    nvcc = Path("/usr/local/cuda-13.0/bin/nvcc")
    if not nvcc.exists():
        pytest.fail("this test needs /usr/local/cuda-13.0 (nvcc 13.0)")
    src = _tree(tmp_path)
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89-real",), toolkit="13.0")
    out, values = _configure(tmp_path, configure_args(spec, str(src), str(tmp_path / "build")))
    assert "Using CMAKE_CUDA_ARCHITECTURES=89-real " in out.stdout
    assert "Including CUDA backend" in out.stdout
    assert values["CMAKE_CUDA_ARCHITECTURES"] == "89-real"
    assert values["CMAKE_CUDA_COMPILER"] == "/usr/local/cuda-13.0/bin/nvcc"
    # FindCUDAToolkit took the toolkit from CUDAToolkit_ROOT, not from the other toolkit's nvcc on PATH:
    # headers and cudart of the toolkit we build with
    assert values["CUDAToolkit_BIN_DIR"] == "/usr/local/cuda-13.0/bin", values.get("CUDAToolkit_BIN_DIR")
    assert values["CUDA_cudart_LIBRARY"].startswith("/usr/local/cuda-13.0/"), values["CUDA_cudart_LIBRARY"]
    assert (values["GGML_NATIVE"], values["GGML_CUDA"], values["LLAMA_BUILD_TESTS"]) == ("ON", "ON", "OFF")
    # the server target exists in the generated build system
    targets = subprocess.run(["cmake", "--build", str(tmp_path / "build"), "--target", "help"],
                             capture_output=True, text=True).stdout
    assert "llama-server" in targets


def test_without_cudatoolkit_root_cmake_325_takes_another_toolkit(tmp_path: Path) -> None:
    """Why -DCUDAToolkit_ROOT is on the line: CMake 3.25 finds the toolkit before the CUDA language is
    enabled, so CMAKE_CUDA_COMPILER alone leaves headers and libraries to whatever nvcc PATH (or the
    /usr/local/cuda symlink) has: here the decoy toolkit."""
    if not Path("/usr/local/cuda-13.0/bin/nvcc").exists():
        pytest.fail("this test needs /usr/local/cuda-13.0 (nvcc 13.0)")
    src = _tree(tmp_path)
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89-real",), toolkit="13.0")
    args = [a for a in configure_args(spec, str(src), str(tmp_path / "build")) if not a.startswith("-DCUDAToolkit_ROOT=")]
    _, values = _configure(tmp_path, args)
    assert values["CMAKE_CUDA_COMPILER"] == "/usr/local/cuda-13.0/bin/nvcc"
    assert values["CUDAToolkit_BIN_DIR"] == f"{tmp_path}/cuda-decoy/bin"


def test_git_source_gets_its_build_number() -> None:
    tag = build_script(BuildSpec(backend="cpu", source={"git": "https://github.com/ggml-org/llama.cpp", "ref": "b11312"}),
                       keep_builds=2)
    assert "echo 11312 > \"$SRC.tmp/.provision-build-number\"" in tag
    assert '"-DLLAMA_BUILD_NUMBER=$BUILD_NUMBER" "-DLLAMA_BUILD_COMMIT=$BUILD_COMMIT"' in tag
    branch = build_script(BuildSpec(backend="cpu", source={"git": "https://example.invalid/l.git", "ref": "master"}),
                          keep_builds=2)
    assert "--filter=tree:0 --unshallow" in branch and "rev-list --count FETCH_HEAD" in branch
    tarball = build_script(BuildSpec(backend="cpu", source=TAR), keep_builds=2)
    assert "LLAMA_BUILD_NUMBER" not in tarball
    for script in (tag, branch, tarball):
        assert subprocess.run(["bash", "-n"], input=script.encode()).returncode == 0


def test_cuda_configure_fails_without_cublas(tmp_path: Path) -> None:
    """Why libcublas-dev is in the minimal package list: without it configure fails."""
    if not Path("/usr/local/cuda-13.0/bin/nvcc").exists():
        pytest.fail("this test needs /usr/local/cuda-13.0 (nvcc 13.0)")
    if list(Path("/usr/local/cuda-13.0").rglob("libcublas.so*")):
        pytest.fail("this machine's CUDA has cuBLAS installed; the negative check does not apply")
    src = _tree(tmp_path)
    spec = BuildSpec(backend="cuda", source=TAR, architectures=("89-real",), toolkit="13.0")
    out = subprocess.run(configure_args(spec, str(src), str(tmp_path / "build")), capture_output=True, text=True,
                         env=dict(os.environ, CCACHE_DIR=str(tmp_path / "ccache")), timeout=600)
    assert out.returncode != 0 and "CUDA::cublas" in out.stderr
