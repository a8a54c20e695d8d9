"""A local signed apt repository standing in for NVIDIA's CUDA repository.

Layout like NVIDIA's flat repo: ``<repo>/compute/cuda/repos/debian12/x86_64/``
with ``*.deb``, ``Packages(.gz)``, ``Release``, ``InRelease``, ``Release.gpg``,
signed with a key generated once into ``/var/cache/provision-sim/apt-key``.
Served over HTTP on the sim bridge (10.0.3.1) so containers reach it.

The packages carry NVIDIA's names, versions and dependency shape but are
placeholders: libraries are marker files named like the real ``.so`` files,
``nvidia-smi`` is the simulator's script (version-checking against the host),
CUDA toolkit packages install version markers and a ``nvcc`` that only
answers ``--version``. ``dkms`` here is a placeholder too.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import subprocess
import tempfile
import threading
from email.utils import formatdate
from pathlib import Path

from provisioner.sim.host.nvidia import smi_script
from provisioner.sim.lxc import rootfs

REPO_PATH = "compute/cuda/repos/debian12/x86_64"
KEY_DIR = rootfs.CACHE_DIR / "apt-key"
KEY_UID = "provision-sim CUDA repository <sim@provision.invalid>"
DRIVER_VERSIONS = ["580.95.05", "580.105.08", "590.44.01", "595.71.05"]
#: (package, version, cuda dir) of the toolkit placeholders
TOOLKIT = [(f"{name}-{mm}", ver, mm.replace("-", ".")) for mm, vers in {
    "12-8": {"cuda-nvcc": "12.8.93-1", "cuda-cudart-dev": "12.8.90-1", "libcublas-dev": "12.8.4.1-1"},
    "13-0": {"cuda-nvcc": "13.0.88-1", "cuda-cudart-dev": "13.0.96-1", "libcublas-dev": "13.0.2.14-1"},
}.items() for name, ver in vers.items()]


def ensure_key() -> Path:
    """Generate the repository signing key once (gpg home in the shared cache)."""
    home = KEY_DIR
    if (home / "public.gpg").exists():
        return home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", KEY_UID, "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    pub = subprocess.run(["gpg", "--homedir", str(home), "--export", KEY_UID],
                         check=True, capture_output=True).stdout
    (home / "public.gpg").write_bytes(pub)
    return home


def _deb(out: Path, name: str, version: str, files: dict[str, tuple[str | bytes, int]],
         *, depends: str = "", recommends: str = "", arch: str = "amd64",
         description: str = "") -> None:
    """Build ``name_version_arch.deb`` containing ``files`` {path: (content, mode)}."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path, (content, mode) in files.items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str) and content.startswith("->"):
                dest.symlink_to(content[2:])
                continue
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            dest.chmod(mode)
        (root / "DEBIAN").mkdir()
        control = (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
                   "Maintainer: provision-sim <sim@provision.invalid>\nSection: multiverse/devel\n"
                   "Priority: optional\n")
        if depends:
            control += f"Depends: {depends}\n"
        if recommends:
            control += f"Recommends: {recommends}\n"
        control += f"Description: {description or name} (provision-sim placeholder)\n"
        (root / "DEBIAN" / "control").write_text(control)
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root),
                        str(out / f"{name}_{version}_{arch}.deb")], check=True, capture_output=True)


def _driver_packages(out: Path, ver: str) -> None:
    v = f"{ver}-1"
    lib = "/usr/lib/x86_64-linux-gnu"
    branch = ver.split(".")[0]
    _deb(out, "libcuda1", v, {f"{lib}/libcuda.so.{ver}": (f"sim libcuda {ver}\n", 0o644),
                              f"{lib}/libcuda.so.1": (f"->libcuda.so.{ver}", 0),
                              f"{lib}/libcuda.so": ("->libcuda.so.1", 0)},
         description="NVIDIA CUDA Driver Library")
    _deb(out, "libnvidia-ml1", v, {f"{lib}/libnvidia-ml.so.{ver}": (f"sim nvml {ver}\n", 0o644),
                                   f"{lib}/libnvidia-ml.so.1": (f"->libnvidia-ml.so.{ver}", 0)},
         description="NVIDIA Management Library (NVML) runtime library")
    _deb(out, "nvidia-persistenced", v,
         {"/usr/bin/nvidia-persistenced": ("#!/bin/sh\nexit 0\n", 0o755)},
         description="daemon to maintain persistent software state in the NVIDIA driver")
    _deb(out, "nvidia-driver-cuda", v, {"/usr/bin/nvidia-smi": (smi_script(ver), 0o755)},
         depends=f"libcuda1 (= {v}), libnvidia-ml1 (= {v})",
         recommends=f"nvidia-persistenced (= {v})",
         description="NVIDIA driver CUDA integration components")
    _deb(out, "nvidia-kernel-open-dkms", v,
         {f"/usr/src/nvidia-{ver}/dkms.conf": (f'PACKAGE_VERSION="{ver}"\n', 0o644)},
         depends="dkms", description="NVIDIA binary kernel module DKMS source (open GPU kernel modules)")
    _deb(out, "nvidia-kernel-dkms", v,
         {f"/usr/src/nvidia-{ver}/dkms.conf": (f'PACKAGE_VERSION="{ver}"\n', 0o644)},
         depends="dkms", description="NVIDIA binary kernel module DKMS source (proprietary)")
    _deb(out, "nvidia-open", v, {}, arch="amd64",
         depends=f"nvidia-kernel-open-dkms (= {v}), nvidia-driver-cuda (= {v})",
         description="NVIDIA open kernel module driver metapackage")
    _deb(out, "cuda-drivers", v, {}, depends=f"nvidia-open (= {v})",
         description="CUDA Driver meta-package, branch-agnostic")
    _deb(out, f"cuda-drivers-{branch}", v, {}, depends=f"cuda-drivers (= {v})",
         description=f"CUDA Driver meta-package, branch {branch}")
    pinned = ("nvidia-driver-cuda libcuda1 libnvidia-ml1 nvidia-persistenced "
              "nvidia-kernel-open-dkms nvidia-kernel-dkms nvidia-open cuda-drivers")
    _deb(out, f"nvidia-driver-pinning-{ver}", "1.0-2",
         {f"/etc/apt/preferences.d/nvidia-driver-pinning-{ver}.pref":
          (f"Package: {pinned}\nPin: version {v}*\nPin-Priority: 1000\n", 0o644)},
         arch="all", description=f"Pins the NVIDIA driver packages to {ver}")


def build(repo_root: Path, base_url: str) -> Path:
    """Build the repository under ``repo_root`` for ``base_url`` (its served URL); returns the dir."""
    home = ensure_key()
    out = repo_root / REPO_PATH
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    key = (home / "public.gpg").read_bytes()
    url = f"{base_url.rstrip('/')}/{REPO_PATH}/"
    _deb(out, "cuda-keyring", "1.1-1", {
        "/usr/share/keyrings/cuda-archive-keyring.gpg": (key, 0o644),
        "/etc/apt/sources.list.d/cuda-debian12-x86_64.list":
            (f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {url} /\n", 0o644),
    }, arch="all", description="GPG keyring for the CUDA repository")
    _deb(out, "dkms", "3.2.0-1sim", {"/usr/sbin/dkms": ("#!/bin/sh\necho 'sim dkms: nothing built'\n", 0o755)},
         arch="all", description="Dynamic Kernel Module System placeholder")
    for ver in DRIVER_VERSIONS:
        _driver_packages(out, ver)
    for name, ver, cuda in TOOLKIT:
        files: dict[str, tuple[str | bytes, int]] = {
            f"/usr/local/cuda-{cuda}/sim/{name}.version": (ver + "\n", 0o644)}
        if name.startswith("cuda-nvcc"):
            release = ver.rsplit("-", 1)[0]
            script = ("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver (provision-sim placeholder)'\n"
                      f"echo 'Cuda compilation tools, release {cuda}, V{release}'\n")
            files[f"/usr/local/cuda-{cuda}/bin/nvcc"] = (script, 0o755)
        _deb(out, name, ver, files, description=f"CUDA {cuda} toolkit placeholder")
    _index(out, home)
    return out


def _index(out: Path, home: Path) -> None:
    packages = subprocess.run(["dpkg-scanpackages", "-m", ".", "/dev/null"], cwd=out,
                              check=True, capture_output=True).stdout
    (out / "Packages").write_bytes(packages)
    (out / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = (f"Origin: NVIDIA\nLabel: NVIDIA CUDA\nArchitecture: x86_64\n"
               f"Date: {formatdate(usegmt=True)}\nSHA256:\n")
    for name in ("Packages", "Packages.gz"):
        data = (out / name).read_bytes()
        release += f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}\n"
    (out / "Release").write_text(release)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--yes", "--local-user", KEY_UID]
    subprocess.run([*gpg, "--clearsign", "-o", str(out / "InRelease"), str(out / "Release")],
                   check=True, capture_output=True)
    subprocess.run([*gpg, "-abs", "-o", str(out / "Release.gpg"), str(out / "Release")],
                   check=True, capture_output=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(repo_root: Path, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Serve ``repo_root`` over HTTP in a daemon thread; returns the server (call shutdown())."""
    handler = functools.partial(_QuietHandler, directory=str(repo_root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="apt-repo", daemon=True).start()
    return server
