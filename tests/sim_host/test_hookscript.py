"""Hookscripts run in PVE's phases with PVE's semantics (sim/pve/hookscript.py cites the source)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.sim

VMID = 723
HOOK = "/var/lib/vz/snippets/test-hook"
#: records each call; exits 1 in the phase named in test-hook.fail (if any)
SCRIPT = """#!/bin/sh
echo "$1 $2" >> /var/lib/vz/snippets/test-hook.calls
echo "hook says $2"
[ "$(cat /var/lib/vz/snippets/test-hook.fail 2>/dev/null)" = "$2" ] && exit 1
exit 0
"""


@pytest.fixture
def ct(sim_node):
    sim_node.create_ct(VMID)
    rc, _, err = sim_node.run(f"cat > {HOOK} && chmod 0755 {HOOK} && rm -f {HOOK}.calls {HOOK}.fail",
                              stdin=SCRIPT.encode())
    assert rc == 0, err
    yield VMID
    sim_node.run(f"pct stop {VMID}; rm -f {HOOK} {HOOK}.calls {HOOK}.fail /var/lib/vz/snippets/plain")
    sim_node.destroy_ct(VMID)


def calls(sim_node) -> list[str]:
    return sim_node.run(f"cat {HOOK}.calls 2>/dev/null")[1].split("\n")[:-1]


def test_hookscript_checked_when_set(sim_node, ct):
    sim_node.run("printf '#!/bin/sh\\n' > /var/lib/vz/snippets/plain && chmod 0644 /var/lib/vz/snippets/plain")
    for volid, msg in (("local:snippets/nothere", "script 'local:snippets/nothere' does not exist"),
                       ("local:snippets/plain", "script 'local:snippets/plain' is not executable"),
                       ("local:iso/test-hook", "'local:iso/test-hook' is not in the snippets directory"),
                       ("nosuch:snippets/test-hook", "storage 'nosuch' does not exist")):
        rc, _, err = sim_node.run(f"pct set {ct} --hookscript {volid}")
        assert rc == 255 and msg in err, (volid, err)
    rc, _, err = sim_node.run(f"pct set {ct} --hookscript local:snippets/test-hook")
    assert rc == 0, err


def test_phases_in_order(sim_node, ct):
    assert sim_node.run(f"pct set {ct} --hookscript local:snippets/test-hook")[0] == 0
    rc, out, err = sim_node.run(f"pct start {ct}")
    assert rc == 0, err
    assert "hook says post-start" in out
    assert calls(sim_node) == [f"{ct} pre-start", f"{ct} post-start"]
    assert sim_node.run(f"pct stop {ct}")[0] == 0
    assert calls(sim_node)[2:] == [f"{ct} pre-stop", f"{ct} post-stop"]


def test_failing_pre_start_aborts_the_start(sim_node, ct):
    sim_node.run(f"pct set {ct} --hookscript local:snippets/test-hook && echo pre-start > {HOOK}.fail")
    rc, _, err = sim_node.run(f"pct start {ct}")
    assert rc == 255
    # PVE::GuestHelpers::exec_hookscript's text around run_command's
    assert re.search(rf"hookscript error for {ct} on pre-start: command '\S+/snippets/test-hook {ct} pre-start' "
                     r"failed: exit code 1", err), err
    assert sim_node.backend.status(ct) == "stopped"
    assert calls(sim_node) == [f"{ct} pre-start"]


def test_failing_post_start_and_stop_phases_only_warn(sim_node, ct):
    sim_node.run(f"pct set {ct} --hookscript local:snippets/test-hook && echo post-start > {HOOK}.fail")
    rc, out, err = sim_node.run(f"pct start {ct}")
    assert rc == 0, err
    assert f"hookscript error for {ct} on post-start: command" in out  # a warning in the task log
    assert sim_node.backend.status(ct) == "running"
    sim_node.run(f"echo pre-stop > {HOOK}.fail")
    assert sim_node.run(f"pct stop {ct}")[0] == 0
    assert sim_node.backend.status(ct) == "stopped"
    assert calls(sim_node)[-2:] == [f"{ct} pre-stop", f"{ct} post-stop"]
