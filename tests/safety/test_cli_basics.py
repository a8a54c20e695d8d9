"""The CLI's first minutes, without a node: `--version`, and refusing to apply without a terminal."""

from __future__ import annotations

from provisioner import __version__
from provision_cli import provision_cli


def test_version_prints_and_exits_0() -> None:
    """Was "Missing command" with exit 2 (issue 20, point 14)."""
    proc = provision_cli("--version", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"provision {__version__}"), proc.stderr
