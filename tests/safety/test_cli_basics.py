"""The CLI's first minutes, without a node: `--version`, and refusing to apply without a terminal."""

from __future__ import annotations

from provisioner import __version__
from provision_cli import provision_cli


def test_version_prints_and_exits_0() -> None:
    """Was "Missing command" with exit 2 (issue 20, point 14)."""
    proc = provision_cli("--version", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"provision {__version__}"), proc.stderr


def test_confirm_refuses_without_a_terminal() -> None:
    """Point 2: a pipe or /dev/null is nobody's answer; only --yes skips the question."""
    import pytest

    from provisioner.cli.main import confirm
    from provisioner.cli.output import Output
    from provisioner.errors import RefusedError

    with pytest.raises(RefusedError) as info:
        confirm(Output(), "Destroy CT 9?", what="destroying the container", vmid=9)
    text = str(info.value)
    assert text.startswith("CT 9: destroying the container needs confirmation")
    assert "stdin is not a terminal" in text and "pass --yes" in text


def test_a_no_op_does_not_import_what_it_never_uses() -> None:
    """Point 15: paramiko pulled in invoke (and unittest, asyncio) at every start, ~0.1-0.2 s."""
    import subprocess
    import sys

    code = ("import sys, provisioner.connectors.ssh, provisioner.engine.run; "
            "print(sorted(m for m in ('invoke', 'unittest', 'asyncio') if m in sys.modules)); "
            "import invoke; print('invoke still importable')")  # the block is lifted after paramiko's import
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "invoke still importable"]
