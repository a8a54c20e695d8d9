"""The apt/dpkg prelude in real bash against real fcntl locks held by real processes.

Lock files are temp files here (PROVISION_APT_LOCKS), so the machine's own dpkg is
never blocked; the same prelude against the container's dpkg is in test_apt_sim.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.operations.apt import LOCK_TIMEOUT_EXIT, prelude

# A process named like the usual culprit takes a POSIX (or OFD) write lock and sleeps.
HOLDER = r"""
use Fcntl;
$0 = "unattended-upgr";
open(my $fh, ">>", $ARGV[0]) or die "open: $!";
my $lk = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
my $cmd = $ARGV[2] eq "ofd" ? 37 : F_SETLKW;   # 37 = F_OFD_SETLKW on Linux
fcntl($fh, $cmd, $lk) or die "lock: $!";
$| = 1; print "locked\n";
sleep($ARGV[1]);
"""


def hold(path: Path, seconds: float, kind: str = "posix") -> subprocess.Popen:
    proc = subprocess.Popen(["perl", "-e", HOLDER, str(path), str(seconds), kind], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def bash(script: str, locks: list[Path], timeout: int, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROVISION_APT_LOCKS": " ".join(map(str, locks)), **(extra_env or {})}
    return subprocess.run(["bash", "-c", prelude(timeout) + script], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture
def locks(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "lock-frontend", tmp_path / "lock", tmp_path / "lists-lock"]
    for f in files:
        f.touch()
    return files


def test_free_locks_pass_at_once(locks):
    t0 = time.monotonic()
    r = bash("_provision_wait_locks && echo ok", locks, 5)
    assert r.returncode == 0 and r.stdout.strip() == "ok" and "waiting" not in r.stdout + r.stderr
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("kind", ["posix", "ofd"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_waits_for_a_holder_and_names_it(locks, which, kind):
    proc = hold(locks[which], 3, kind)
    try:
        t0 = time.monotonic()
        r = bash("_provision_wait_locks && echo ok", locks, 30)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stderr
    assert f"provision: waiting for the dpkg lock held by PID {proc.pid} (unattended-upgr) on {locks[which]}" \
        in r.stdout
    assert r.stdout.count("waiting for the dpkg lock") == 1  # said once, not every second
    assert r.stdout.strip().endswith("ok") and 1.5 < waited < 15


def test_gives_up_after_the_timeout_naming_the_holder(locks):
    proc = hold(locks[0], 60)
    try:
        t0 = time.monotonic()
        r = bash("apt_get install -y hello; echo \"exit=$?\"", locks, 2)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert f"exit={LOCK_TIMEOUT_EXIT}" in r.stdout
    assert f"still held by PID {proc.pid} (unattended-upgr) on {locks[0]} after 2s; giving up" in r.stderr
    # gave up well before the holder let go (60 s); generous for a loaded 2-core machine
    assert "fix:" in r.stderr and 1.5 < waited < 40


def test_timeout_comes_from_the_config(locks):
    from provisioner.config import load_text
    from provisioner.operations.apt import prelude_for

    text = ("proxmox:\n  endpoint: https://pve:8006\n  node: pve\n"
            "  auth: {token_id: 'root@pam!p', token_secret: {env: T}}\ncontainer:\n  apt_lock_timeout: 17\n")
    assert 'PROVISION_APT_LOCK_TIMEOUT="${PROVISION_APT_LOCK_TIMEOUT:-17}"' in prelude_for(load_text(text, "h.yaml").config)


def test_prelude_is_valid_bash_and_defines_the_functions():
    r = subprocess.run(["bash", "-n", "-c", prelude()], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "-c", prelude() + "type -t apt_get dpkg_recover"], capture_output=True, text=True)
    assert r.stdout.split() == ["function", "function"]


def test_prelude_runs_under_strict_bash(locks):
    """Callers run it under `set -euo pipefail`; dpkg_recover on a clean dpkg is a no-op."""
    r = bash("set -euo pipefail\ndpkg_recover\n_provision_wait_locks\necho done", locks, 5)
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr


def test_every_apt_call_in_the_container_scripts_goes_through_the_prelude():
    """The driver, CUDA and llama.cpp build scripts call apt_get, never apt-get directly."""
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "gpu"))
    from provisioner.operations import cuda, driver
    from provisioner.operations.llama_build import BuildSpec, build_script

    from test_llama_configure import TAR  # the GPU engineer's sample source

    script = build_script(BuildSpec(backend="cpu", source=TAR), keep_builds=2)
    assert "apt_get() {" in script and re.search(r"^\s*apt_get install", script, re.M)
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    for mod in (driver, cuda):
        src = "\n".join(ln for ln in Path(mod.__file__).read_text().splitlines() if "``" not in ln)
        assert not re.search(r"(?<![-\w\"])apt-get (update|install|-y|-s)", src), mod.__name__
        assert "apt.prelude_for(actx.cfg)" in src
    assert not re.search(r"^\s*apt-get ", script, re.M)


def test_services_and_model_scripts_use_the_prelude():
    import re

    from provisioner.config.schema import ModelFile
    from provisioner.operations.model_transfer import fetch_script
    from provisioner.operations.scripts import render

    fetch = fetch_script(ModelFile(repo="a/b", file="m.gguf"), "/srv/models/m.gguf", token=None, install_curl=True)
    gw = render("scripts/gateway-install.sh.j2", root="/opt/g", venv="/opt/g/venv", wheelhouse="/opt/g/h.tar.part",
                version="0.1.0", installed="/opt/g/installed.json", installed_json="{}", apt_prelude=prelude())
    from provisioner.operations import services
    assert "apt_prelude=apt_prelude()" in Path(services.__file__).read_text()  # the real call passes it
    for script in (fetch, gw):
        assert "apt_get() {" in script and "dpkg_recover\n" in script.replace("  dpkg_recover  #", "dpkg_recover\n")
        assert not re.search(r"^\s*(DEBIAN_FRONTEND=\S+ )?apt-get ", script, re.M)
        assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
