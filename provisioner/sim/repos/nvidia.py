"""A local signed apt repository standing in for NVIDIA's CUDA repository.

Layout like NVIDIA's flat repo: ``<repo>/compute/cuda/repos/debian12/x86_64/``
with ``*.deb``, ``Packages(.gz)``, ``Release``, ``InRelease``, ``Release.gpg``,
signed with a key generated once into ``/var/cache/provision-sim/apt-key``.
Served over HTTP on the sim bridge (10.0.3.1) so containers reach it.

What it carries is data: ``nvidia_graph.graph()`` (NVIDIA's names, versions, source packages and
relations, with the source of every field). The files inside each package come from its payload
kind (``PAYLOADS``): placeholders today (libraries are marker files named like the real ``.so``
files, ``nvidia-smi`` is the simulator's script that checks its version against the host,
toolkit packages hold a version marker and an ``nvcc`` that only answers ``--version``); a kind
can be given real contents later without touching the graph.

The .debs do not depend on the node, so they are built once into a cache keyed by the graph
(``CACHE``; one builder at a time) and linked into each node's repository; only cuda-keyring
(its source line names the node's URL), the index and the signatures are made per node.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict
from email.utils import formatdate
from pathlib import Path

from provisioner.sim.host.nvidia import smi_script
from provisioner.sim.lxc import rootfs
from provisioner.sim.repos import nvidia_graph
from provisioner.sim.repos.nvidia_graph import Pkg

REPO_PATH = "compute/cuda/repos/debian12/x86_64"
KEY_DIR = rootfs.CACHE_DIR / "apt-key"
CACHE = rootfs.CACHE_DIR / "nvidia-repo"
KEY_UID = "provision-sim CUDA repository <sim@provision.invalid>"
DRIVER_VERSIONS = nvidia_graph.DRIVER_VERSIONS
#: bumped when a payload's files change (the cache key covers the graph itself)
PAYLOAD_VERSION = 2
LIB = "/usr/lib/x86_64-linux-gnu"

Files = dict[str, tuple[str | bytes, int]]


def _lib(stem: str, ver: str) -> Files:
    return {f"{LIB}/{stem}.so.{ver}": (f"sim {stem} {ver}\n", 0o644),
            f"{LIB}/{stem}.so.1": (f"->{stem}.so.{ver}", 0),
            f"{LIB}/{stem}.so": (f"->{stem}.so.1", 0)}


def _toolkit(stem: str, tk: str, ver: str) -> Files:
    files: Files = {f"/usr/local/cuda-{tk}/sim/{stem}.version": (ver + "\n", 0o644)}
    if stem == "cuda-nvcc":
        release = ver.rsplit("-", 1)[0]
        files[f"/usr/local/cuda-{tk}/bin/nvcc"] = (
            "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver (provision-sim placeholder)'\n"
            f"echo 'Cuda compilation tools, release {tk}, V{release}'\n", 0o755)
    return files


#: payload kind -> files of the package (placeholders; see the module docstring)
PAYLOADS: dict[str, Callable[..., Files]] = {
    "none": lambda: {},
    "lib": _lib,
    "smi": lambda ver: {"/usr/bin/nvidia-smi": (smi_script(ver), 0o755)},
    "firmware": lambda ver: {f"/lib/firmware/nvidia/{ver}/gsp_ga10x.bin": (f"sim gsp {ver}\n", 0o644)},
    "dkms-src": lambda ver: {f"/usr/src/nvidia-{ver}/dkms.conf": (f'PACKAGE_VERSION="{ver}"\n', 0o644)},
    "pin": lambda text: {"/etc/apt/preferences.d/nvidia-driver-pin": (text, 0o644)},
    "doc": lambda what: {f"/usr/share/doc/provision-sim/{what.split()[0]}.txt": (what + "\n", 0o644)},
    "script": lambda path: {path: ("#!/bin/sh\necho 'provision-sim placeholder'\n", 0o755)},
    "toolkit": _toolkit,
}


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


def _deb(out: Path, pkg: Pkg, files: Files) -> Path:
    """Build ``name_version_arch.deb`` from ``pkg``'s fields and ``files`` {path: (content, mode)}."""
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
        source = f"Source: {pkg.source}\n" if pkg.source and pkg.source != pkg.name else ""
        control = (f"Package: {pkg.name}\n" + source
                   + f"Version: {pkg.version}\nArchitecture: {pkg.arch}\n"
                   f"Maintainer: provision-sim <sim@provision.invalid>\nSection: {pkg.section}\nPriority: optional\n")
        for key, value in (("Depends", pkg.depends), ("Recommends", pkg.recommends), ("Provides", pkg.provides),
                           ("Conflicts", pkg.conflicts), ("Replaces", pkg.conflicts), *pkg.extra.items()):
            if value:
                control += f"{key}: {value}\n"
        control += f"Description: {pkg.description or pkg.name} (provision-sim)\n"
        (root / "DEBIAN" / "control").write_text(control)
        deb = out / f"{pkg.name}_{pkg.version.split(':')[-1]}_{pkg.arch}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb)],
                       check=True, capture_output=True)
        return deb


def _graph_key(pkgs: list[Pkg]) -> str:
    body = json.dumps({"payload_version": PAYLOAD_VERSION, "pkgs": [asdict(p) for p in pkgs],
                       "smi": smi_script("@")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def cached_debs(pkgs: list[Pkg] | None = None) -> Path:
    """The graph's .debs and their index stanzas, built once per graph (a lock: one builder at a time)."""
    pkgs = nvidia_graph.graph() if pkgs is None else pkgs
    key = _graph_key(pkgs)
    done = CACHE / key
    if (done / "Packages").exists():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (done / "Packages").exists():
            return done
        tmp = CACHE / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for pkg in pkgs:
            kind, args = pkg.payload
            _deb(tmp, pkg, PAYLOADS[kind](*args))
        (tmp / "Packages").write_bytes(_scan(tmp))
        for old in CACHE.iterdir():  # only one graph is current: drop older ones
            if old.is_dir() and old.name != f"{key}.tmp":
                shutil.rmtree(old, ignore_errors=True)
        tmp.rename(done)
    return done


def _scan(d: Path) -> bytes:
    return subprocess.run(["dpkg-scanpackages", "-m", ".", "/dev/null"], cwd=d, check=True,
                          capture_output=True).stdout


def build(repo_root: Path, base_url: str) -> Path:
    """Build the repository under ``repo_root`` for ``base_url`` (its served URL); returns the dir."""
    home = ensure_key()
    cache = cached_debs()
    out = repo_root / REPO_PATH
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for deb in cache.glob("*.deb"):
        try:
            os.link(deb, out / deb.name)
        except OSError:  # another filesystem
            shutil.copy2(deb, out / deb.name)
    key = (home / "public.gpg").read_bytes()
    url = f"{base_url.rstrip('/')}/{REPO_PATH}/"
    with tempfile.TemporaryDirectory() as tmp:
        spec = Pkg("cuda-keyring", "1.1-1", arch="all", description="GPG keyring for the CUDA repository")
        keyring = _deb(Path(tmp), spec, {
            "/usr/share/keyrings/cuda-archive-keyring.gpg": (key, 0o644),
            "/etc/apt/sources.list.d/cuda-debian12-x86_64.list":
                (f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {url} /\n", 0o644)})
        stanza = _scan(Path(tmp))
        shutil.move(str(keyring), out / keyring.name)
    _index(out, home, (cache / "Packages").read_bytes().rstrip(b"\n") + b"\n\n" + stanza)
    return out


def _index(out: Path, home: Path, packages: bytes) -> None:
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
