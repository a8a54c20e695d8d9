"""Facts read on a stopped container's mounted root (issue 20, point 9): the real shell, on a real
directory standing in for `pct mount`'s /var/lib/lxc/N/rootfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from provisioner.config import load_text
from provisioner.facts.base import INROOT, build_script
from provisioner.facts.services import RESOLV_FACT, model_facts, parse_model, parse_resolv

CFG = load_text("proxmox: {endpoint: 'https://p:8006', node: pve, auth: {token_id: 'root@pam!x', "
                "token_secret: {env: X}}}\nmodel: {repo: a/b, file: m.gguf, location: container}\n").config


def run_rooted(command: str, root: Path) -> str:
    script = f"R={root}\n{INROOT}\n{command}\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False).stdout


def test_model_and_resolv_are_read_under_the_mounted_root(tmp_path: Path) -> None:
    (tmp_path / "srv/models").mkdir(parents=True)
    (tmp_path / "srv/models/m.gguf").write_bytes(b"x" * 100)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("# --- BEGIN PVE ---\nnameserver 1.1.1.1\n# --- END PVE ---\n")
    (fact,) = model_facts(CFG)
    assert fact.offline and RESOLV_FACT.offline
    mf = parse_model(run_rooted(fact.command, tmp_path), 0)
    assert mf.files["model"].size == 100 and mf.dir_exists and not mf.outside
    r = parse_resolv(run_rooted(RESOLV_FACT.command, tmp_path), 0)
    assert r.exists and r.pve_managed and not r.immutable


def test_a_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    """A container's /srv -> /etc would make the host read its own /etc; it is reported, not read."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "srv").symlink_to("/etc")
    (root / "etc/resolv.conf").symlink_to("/etc/hostname")
    (fact,) = model_facts(CFG)
    out = run_rooted(fact.command, root)
    assert out.split() == ["outside"]
    assert parse_model(out, 0).outside
    r = parse_resolv(run_rooted(RESOLV_FACT.command, root), 0)
    assert r.exists and not r.pve_managed and r.lsattr_ok  # the link is seen, its target never read


def test_a_stopped_ct_gets_the_mount_only_with_mount_stopped() -> None:
    facts = model_facts(CFG) + [RESOLV_FACT]
    plain = build_script(facts, 120, False, "n0")
    assert "pct mount" not in plain and "pct exec" not in plain
    mounted = build_script(facts, 120, False, "n0", mount_stopped=True)
    assert "m=$(pct mount 120 2>&1)" in mounted and "trap 'pct unmount 120" in mounted
    assert mounted.count("@@n0 begin") == 2 and "offline-failed" in mounted
    running = build_script(facts, 120, True, "n0", mount_stopped=True)
    assert "pct mount" not in running and "pct exec 120" in running and "R=\n" in running
