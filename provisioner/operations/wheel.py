"""This project as a wheel, for the gateway's virtualenv in the container.

The gateway runs the same code as the CLI that deploys it. Its identity is the
package version plus a hash of the code the gateway runs from (``source_sha``:
``provisioner/gateway/``, the modules it imports, ``pyproject.toml``), computed
locally and cheaply at plan time, so an edit elsewhere in the package does not
restart the gateway. The wheel is built (``pip wheel``) only when the container's
copy differs, and cached by that hash.

The container gets a *wheelhouse*: the wheel plus every dependency as a binary
wheel for CPython 3.11 on manylinux x86_64 (Debian 12's Python), downloaded here
with ``pip download`` and installed there with ``--no-index``. So the container
needs no access to PyPI (nor trust in whatever proxy this machine uses), and it
gets the dependency versions resolved here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

from .. import __version__
from ..errors import ProvisionError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "provision" / "wheels"
#: what ``provision-gateway`` runs from (it imports nothing else of the package)
GATEWAY_CODE = ("gateway", "__init__.py", "errors.py", "redact.py")


def project_root() -> Path | None:
    """The checkout holding pyproject.toml, or None when running from an installed wheel."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


@lru_cache(maxsize=1)
def source_sha() -> str:
    """sha256 over the gateway's code (and pyproject.toml in a checkout), path-sorted."""
    digest = hashlib.sha256(__version__.encode())
    roots = [PACKAGE_DIR / name for name in GATEWAY_CODE]
    root = project_root()
    if root is not None:
        roots.append(root / "pyproject.toml")
    files: list[Path] = []
    for r in roots:
        if r.is_file():
            files.append(r)
        elif r.is_dir():
            files += [p for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                      and p.suffix not in (".pyc", ".pyo")]
    base = PACKAGE_DIR.parent
    for p in sorted(files):
        digest.update(str(p.relative_to(base)).encode() + b"\0")
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def build_wheel() -> Path:
    """Build (or reuse) the wheel for the current source tree."""
    out = CACHE / source_sha()[:16]
    found = sorted(out.glob("provision-*.whl")) if out.is_dir() else []
    if found:
        return found[-1]
    root = project_root()
    if root is None:
        raise ProvisionError("cannot build the gateway's wheel: provision runs from an installed package, "
                             "not from a checkout", fix="run provision from a checkout of its repository")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-q", "-w", str(out), str(root)], capture_output=True, text=True, check=False)
    found = sorted(out.glob("provision-*.whl"))
    if proc.returncode != 0 or not found:
        raise ProvisionError(f"building the wheel failed: {proc.stderr.strip()[-800:]}",
                             fix="check that `pip wheel --no-deps .` works in the checkout")
    return found[-1]


#: the container's Python: Debian 12 ships CPython 3.11 (PVE's templates are amd64)
TARGET = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--abi", "abi3", "--abi", "none", "--platform", "manylinux2014_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "--platform", "any"]


def build_wheelhouse() -> Path:
    """A tar of the wheel and all its dependencies' wheels (cached by ``source_sha``)."""
    wheel = build_wheel()
    out = wheel.parent / f"wheelhouse-{source_sha()[:16]}.tar"
    if out.exists():
        return out
    house = wheel.parent / "house"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                           "-d", str(house), *TARGET, str(wheel)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProvisionError(f"downloading the gateway's dependencies failed: {proc.stderr.strip()[-800:]}",
                             fix="check that pip can reach its index from this machine")
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for p in sorted(house.glob("*.whl")):
            tar.add(p, arcname=p.name)
    tmp.replace(out)
    return out
