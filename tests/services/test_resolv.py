"""The resolv.conf trap: detection from facts, the start-failure match, the real chattr fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

from provisioner.errors import TaskFailed
from provisioner.facts.services import ResolvFacts, parse_resolv
from provisioner.operations.resolv import ResolvStep, fix_script, is_resolv_failure

from .helpers import config, ctx

PVE_TEXT = "close (rename) atomic file '/etc/resolv.conf' failed: Operation not permitted"


def test_fact_parsing() -> None:
    out = "exists\nattrs ----i---------e-------\npve-managed\n"
    assert parse_resolv(out, 0) == ResolvFacts(exists=True, immutable=True, ignored=False, pve_managed=True)
    assert parse_resolv("exists\nattrs --------------e-------\nignored\n", 0).immutable is False
    assert parse_resolv("exists\nlsattr-failed\n", 0).lsattr_ok is False


def test_plan_fixes_only_an_immutable_file() -> None:
    cfg = config()
    step = ResolvStep()
    immutable = ResolvFacts(exists=True, immutable=True, ignored=False, pve_managed=True)
    (change,) = step.plan(ctx(cfg, {"resolv.ct": immutable}))
    assert (change.action, change.diff) == ("fix", {"/etc/resolv.conf": ("chattr +i", "-i")})
    fine = ResolvFacts(exists=True, immutable=False, ignored=False, pve_managed=True)
    assert step.plan(ctx(cfg, {"resolv.ct": fine})) == []
    assert step.plan(ctx(cfg, {}, running=False)) == []  # stopped: the start hook handles it


def test_plan_leaves_an_ignored_file_alone_and_removes_our_ignore_file_when_dns_is_configured() -> None:
    """With /etc/.pve-ignore.resolv.conf PVE does not write the file (pve-container
    src/PVE/LXC/Setup/Base.pm:739-743, 883-885@94f5585): +i is harmless, nameserver has no effect."""
    cfg = config()  # the helpers' host file configures no nameserver
    step = ResolvStep()
    theirs = ResolvFacts(exists=True, immutable=True, ignored=True, pve_managed=False)
    assert step.plan(ctx(cfg, {"resolv.ct": theirs})) == []
    with_dns = config({"container": {"nameserver": "10.0.3.1"}})
    ours = ResolvFacts(exists=True, immutable=False, ignored=True, pve_managed=False, ignored_ours=True)
    (change,) = step.plan(ctx(with_dns, {"resolv.ct": ours}))
    assert change.action == "delete" and "/etc/.pve-ignore.resolv.conf" in change.summary
    assert step.plan(ctx(cfg, {"resolv.ct": ours})) == []  # no DNS configured: ours stays
    c = ctx(with_dns, {"resolv.ct": theirs})
    assert step.plan(c) == [] and any("have no effect" in n for n in c.notes)


def test_start_failure_is_recognised_from_exitstatus_or_log() -> None:
    assert is_resolv_failure(TaskFailed("starting CT 120 failed", upid="U", exitstatus=PVE_TEXT))
    assert is_resolv_failure(TaskFailed("x", upid="U", exitstatus="startup for container '120' failed",
                                        log_tail=[PVE_TEXT]))
    assert not is_resolv_failure(TaskFailed("x", upid="U", exitstatus="Could not get mode of /dev/nvidia0"))


def _attrs(path: Path) -> str:
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def test_fix_script_removes_the_flag_for_real_and_keeps_hand_written_dns(tmp_path: Path) -> None:
    """Real chattr on a real file (root on ext4 here): +i set, the script removes it."""
    etc = tmp_path / "etc"
    etc.mkdir()
    resolv = etc / "resolv.conf"
    resolv.write_text("nameserver 9.9.9.9\n")  # hand-written, no PVE block
    subprocess.run(["chattr", "+i", str(resolv)], check=True)
    try:
        proc = subprocess.run(["bash", "-s"], input=fix_script(str(tmp_path), keep_custom_dns=True),
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[-2:] == ["removed", "ignored"]
        assert "i" not in _attrs(resolv)
        assert "created by provision" in (etc / ".pve-ignore.resolv.conf").read_text()
        # not immutable: nothing is touched, no ignore file is made
        (etc / ".pve-ignore.resolv.conf").unlink()
        proc = subprocess.run(["bash", "-s"], input=fix_script(str(tmp_path), keep_custom_dns=True),
                              capture_output=True, text=True, check=False)
        assert "removed" not in proc.stdout and not (etc / ".pve-ignore.resolv.conf").exists()
        resolv.write_text("# --- BEGIN PVE ---\nnameserver 10.0.3.1\n# --- END PVE ---\n")
        subprocess.run(["chattr", "+i", str(resolv)], check=True)
        proc = subprocess.run(["bash", "-s"], input=fix_script(str(tmp_path), keep_custom_dns=True),
                              capture_output=True, text=True, check=False)
        assert "ignored" not in proc.stdout and not (etc / ".pve-ignore.resolv.conf").exists()
    finally:
        subprocess.run(["chattr", "-i", str(resolv)], check=False)
