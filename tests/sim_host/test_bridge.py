"""The containers' network (lxcbr0 + dnsmasq) recovers when only its dnsmasq is gone.

Seen on a machine whose session processes had been ended: lxcbr0 and its NAT rules
stayed, dnsmasq did not, and every container lost DNS (`apt-get update` failed with
"Temporary failure resolving 'deb.debian.org'").
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from provisioner.sim import manage

pytestmark = pytest.mark.sim


def test_dead_dnsmasq_is_started_again_without_touching_the_bridge():
    manage.check_prerequisites()
    manage.ensure_bridge()
    pid = int((manage.LXC_RUN / "dnsmasq.pid").read_text())
    before = subprocess.run(["ip", "-o", "link", "show", "lxcbr0"], capture_output=True, text=True).stdout
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not manage._dnsmasq_alive():
            break
        time.sleep(0.1)
    assert not manage._dnsmasq_alive()
    manage.ensure_bridge()
    assert manage._dnsmasq_alive()
    assert int((manage.LXC_RUN / "dnsmasq.pid").read_text()) != pid
    after = subprocess.run(["ip", "-o", "link", "show", "lxcbr0"], capture_output=True, text=True).stdout
    assert after.split()[1] == before.split()[1]  # same interface index: the bridge was not recreated
    # and it answers DNS on the bridge address, as the containers use it
    out = subprocess.run(["python3", "-c", "import socket,struct;"
                          "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);"
                          "q=struct.pack('>HHHHHH',1,256,1,0,0,0)+b'\\x09localhost\\x00'+struct.pack('>HH',1,1);"
                          "s.sendto(q,('10.0.3.1',53));print(len(s.recv(512)))"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and int(out.stdout) > 12, out.stderr
