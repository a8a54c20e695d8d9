"""The apt/dpkg prelude inside a real container of the simulated node: a dpkg lock held by
another process (the sim's `hold_dpkg_lock` fault, named like unattended-upgrades), and a
dpkg run really killed in the middle of a package's configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.config import load
from provisioner.connectors.pct import CT
from provisioner.engine import run
from provisioner.operations.apt import LOCK_TIMEOUT_EXIT, prelude
from provisioner.sim.hostfile import write_host_file

pytestmark = pytest.mark.sim
VMID = 904
CLI = "import sys; from provisioner.cli.main import run; run(sys.argv[1:])"

PACKAGES = r"""
set -e
for name in provtest provtest2; do
  mkdir -p /root/pkg/$name/DEBIAN
  printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n' $name \
    > /root/pkg/$name/DEBIAN/control
  printf '#!/bin/sh\n[ ! -e /root/slow ] || sleep 120\ntouch /root/%s-configured\n' $name > /root/pkg/$name/DEBIAN/postinst
  chmod 0755 /root/pkg/$name/DEBIAN/postinst
  dpkg-deb --build /root/pkg/$name /root/$name.deb >/dev/null
done
"""


@pytest.fixture(scope="module")
def ct(sim_node, tmp_path_factory):
    path = write_host_file(tmp_path_factory.mktemp("apt") / "host.yaml", sim_node.conn, vmid=VMID, gpu=False)
    subprocess.run([sys.executable, "-c", CLI, "up", str(path), "--yes", "--only", "container"], check=True,
                   capture_output=True, timeout=600)
    conn = run.connect(load(path).config)
    target = CT(conn.ssh, VMID)
    target.run(PACKAGES).check("building test packages")
    yield target
    conn.close()
    subprocess.run([sys.executable, "-c", CLI, "down", str(path), "--yes"], capture_output=True, timeout=600)


def test_waits_for_a_held_lock_naming_the_holder(sim_node, ct):
    lock = sim_node.faults.hold_dpkg_lock(VMID, 5)
    try:
        t0 = time.monotonic()
        result = ct.run(prelude(60) + "apt_get install -y -q /root/provtest.deb\n")
        waited = time.monotonic() - t0
    finally:
        lock.release()
    assert result.ok, result.stderr + result.stdout
    assert (f"provision: waiting for the dpkg lock held by PID {lock.ct_pid} (unattended-upgr) on "
            "/var/lib/dpkg/lock-frontend") in result.stdout
    assert waited >= 3
    assert ct.run("test -e /root/provtest-configured").ok


def test_gives_up_after_the_timeout_with_the_holder_named(sim_node, ct):
    lock = sim_node.faults.hold_dpkg_lock(VMID, 120)
    try:
        t0 = time.monotonic()
        result = ct.run(prelude(3) + "apt_get install -y -q /root/provtest2.deb\n")
        waited = time.monotonic() - t0
    finally:
        lock.release()
    assert result.exit_code == LOCK_TIMEOUT_EXIT
    assert (f"the dpkg lock is still held by PID {lock.ct_pid} (unattended-upgr) on /var/lib/dpkg/lock-frontend "
            "after 3s; giving up") in result.stderr
    assert waited < 30
    assert not ct.run("dpkg -s provtest2 >/dev/null 2>&1").ok  # nothing was half-done


def test_recovers_a_dpkg_run_killed_mid_configure(sim_node, ct):
    ct.run("dpkg -P provtest >/dev/null; rm -f /root/provtest-configured; touch /root/slow").check("reset")
    # dpkg -i in the background; its postinst sleeps while /root/slow exists
    ct.run("setsid dpkg -i /root/provtest.deb >/root/dpkg.log 2>&1 < /dev/null &").check("start dpkg")
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = ct.run("dpkg-query -W -f='${Status}' provtest 2>/dev/null || true").stdout
        if "half-configured" in status:
            break
        time.sleep(0.5)
    assert "half-configured" in status, status
    # kill dpkg and its maintainer script the hard way (by pid, as a power cut would)
    ct.run("for p in $(pgrep -x dpkg) $(pgrep -f '^/bin/sh /var/lib/dpkg/info/provtest.postinst'); do "
           "kill -9 $p; done; rm -f /root/slow").check("kill dpkg")
    assert ct.run("dpkg --audit").stdout.strip(), "dpkg should report the interrupted package"
    result = ct.run(prelude(60) + "apt_get install -y -q /root/provtest2.deb\n")
    assert result.ok, result.stderr + result.stdout
    assert "provision: an earlier dpkg run was interrupted; finishing it (dpkg --configure -a)" in result.stdout
    assert ct.run("dpkg --audit").stdout.strip() == ""
    assert "install ok installed" in ct.run("dpkg-query -W -f='${Status}' provtest").stdout
    assert ct.run("test -e /root/provtest-configured && test -e /root/provtest2-configured").ok
