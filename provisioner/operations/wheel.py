"""This project as a wheel, for the gateway's virtualenv in the container.

The gateway runs the same code as the CLI that deploys it. Its identity is the
package version plus a hash of the code the gateway runs from (``source_sha``:
``provisioner/gateway/``, the modules it imports, ``pyproject.toml``), computed
locally and cheaply at plan time, so an edit elsewhere in the package does not
restart the gateway. The wheel is built (``pip wheel``) only when the container's
copy differs, and cached by that hash.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
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
